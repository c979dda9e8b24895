"""``%pip install`` in a running sandbox: the host's side of a cell's pip lines.

:class:`~enclave_tools.packages.LiveInstaller` decides what to install and fetches it;
this module gives it the running sandbox to install into (:class:`SandboxTarget`: the
image's facts, uploads through the file API, cells run in the caller's turn), and runs a
cell whose pip lines the host handles first (:func:`execute_cell`). It sees the sandbox
only through escalation's :class:`~enclave_tools.escalation.Host` protocol.
"""

from __future__ import annotations

from pathlib import Path

from enclave_tools.backends.base import Backend
from enclave_tools.backends.docker import DockerBackend
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError, InvalidInput, SandboxDied
from enclave_tools.escalation import Host, run_cell
from enclave_tools.execution import Execution
from enclave_tools.files import upload_from
from enclave_tools.image.derived import image_facts
from enclave_tools.live import LiveFeed
from enclave_tools.packages import ImageFacts, LiveInstaller, PackageError, split_cell
from enclave_tools.turns import Turn

__all__ = ["SandboxTarget", "check_supported", "execute_cell"]


def check_supported(config: SandboxConfig, backend: Backend) -> None:
    """InvalidInput if ``config`` asks for packages a backend other than Docker cannot give."""
    wants = config.packages or config.requirements or config.install_policy != "none"
    if wants and not isinstance(backend, DockerBackend):
        raise InvalidInput(
            f"packages, requirements and install_policy need the Docker backend, not "
            f"{getattr(backend, 'name', type(backend).__name__)}: build an image with the "
            "packages (`enclave-tools image build --with PKG`) and give it as `image`."
        )


def execute_cell(
    host: Host, installer: LiveInstaller, turn: Turn, code: str, seconds: float, feed: LiveFeed | None
) -> Execution:
    """Run a cell whose ``%pip install`` lines the host does first (see
    :mod:`enclave_tools.packages`); a cell without any runs as it is."""
    cell = split_cell(code)
    if not cell.has_pip:
        return run_cell(host, turn, code, seconds, feed)
    done = installer.handle(cell, SandboxTarget(host, turn, seconds), host.config.output_limit)
    if done is not None:
        return done
    return installer.note(run_cell(host, turn, cell.rest, seconds, feed))


class SandboxTarget:
    """A running sandbox as :class:`~enclave_tools.packages.LiveInstaller` uses it, within
    the turn of the cell being run (its container is looked up at each use: a run may
    replace it)."""

    def __init__(self, host: Host, turn: Turn, seconds: float) -> None:
        self.host, self.turn, self.seconds = host, turn, seconds

    def image_facts(self) -> ImageFacts:
        """The facts of the image the sandbox's container runs."""
        client, handle = getattr(self.host._backend, "client", None), self.host._handle
        if client is None or handle is None:
            raise PackageError("installing packages needs the Docker backend")
        try:
            image = client.api.inspect_container(handle.container_id)["Image"]
            return image_facts(client, image)
        except EnclaveError:
            raise
        except Exception as exc:
            raise PackageError(f"cannot inspect the sandbox's image: {exc}") from exc

    def upload(self, local: Path, remote: str) -> None:
        """Copy a host file into the sandbox."""
        http = self.host._http
        if http is None:
            raise SandboxDied("the sandbox stopped before the packages were copied")
        with local.open("rb") as handle:
            upload_from(http, remote, handle, local.stat().st_size, self.host.config.file_timeout)

    def run(self, code: str) -> Execution:
        """Run ``code`` in the kernel, in this turn."""
        return run_cell(self.host, self.turn, code, self.seconds)
