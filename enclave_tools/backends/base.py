"""What a backend is: where a sandbox's gateway comes from.

A backend starts a gateway (a container, a pod, or nothing at all for a gateway that
already runs), says how to reach it, reports whether it still runs, and removes it. It
never parses kernel messages; :class:`~enclave_tools.Sandbox` does that, the same way
whatever the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enclave_tools.config import SandboxConfig
from enclave_tools.errors import SandboxStartFailed
from enclave_tools.transport import Endpoint

if TYPE_CHECKING:
    from enclave_tools.registry import Record

__all__ = [
    "GATEWAY_PORT",
    "SANDBOX_UID",
    "SHARED_DIR",
    "SOCKET_NAME",
    "TOKEN_NAME",
    "Backend",
    "ContainerState",
    "SandboxHandle",
]

GATEWAY_PORT = 8888
"""The port the gateway listens on inside a container or pod (TCP transports)."""
SANDBOX_UID = 10001
"""The uid (and gid) the gateway and the kernel run as (the image's ``sandbox`` user)."""
SHARED_DIR = "/run/enclave"
"""Where the container sees its shared directory: the gateway's unix socket and the token."""
SOCKET_NAME = "gateway.sock"
"""The gateway's unix socket, in SHARED_DIR."""
TOKEN_NAME = "token"
"""The file in SHARED_DIR the gateway reads its token from (then deletes)."""


@dataclass
class SandboxHandle:
    """A started gateway: the backend's id for it and how to reach it."""

    container_id: str
    name: str
    endpoint: Endpoint
    run_dir: str | None = None
    host_port: int | None = None


@dataclass
class ContainerState:
    """Whether the gateway's container (or pod) runs, and why it stopped."""

    running: bool
    exists: bool
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""

    def describe(self) -> str:
        """A sentence on how the container ended."""
        if not self.exists:
            return "the container was removed"
        if self.running:
            return "the container is running"
        why = " (out of memory)" if self.oom_killed else ""
        if self.exit_code == 137 and not self.oom_killed:
            why = " (killed)"
        return f"the container stopped with exit code {self.exit_code}{why}"


class Backend(ABC):
    """Where gateways come from. :class:`~enclave_tools.backends.docker.DockerBackend` is
    the default. A backend subclasses this: the abstract methods are the contract, the
    others have defaults that a backend overrides when it has more to do."""

    name: str = "backend"
    """A short name for messages and the keep-alive registry ("docker", "kubernetes")."""

    owns_gateway: bool = True
    """Whether the gateway goes with its sandbox (a container or pod the backend made).
    False for a gateway that outlives it: then the sandbox deletes its kernel on close."""

    can_attach: bool = False
    """Whether :meth:`attach` works: a kept-alive sandbox can be reached again from
    another process (``keep_alive``, ``Sandbox.connect``)."""

    @abstractmethod
    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Start a gateway for ``config`` (building or fetching what it needs, with
        progress) and return how to reach it; raise an EnclaveError if it cannot."""

    def ready(self, handle: SandboxHandle, config: SandboxConfig) -> None:  # noqa: B027 (optional hook)
        """Called once the kernel answers and before any user code runs: apply what would
        have slowed the start (the Docker backend's CPU quota). Default: nothing."""

    @abstractmethod
    def state(self, handle: SandboxHandle) -> ContainerState:
        """Whether the gateway still runs."""

    @abstractmethod
    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> ContainerState:
        """Wait up to ``timeout`` seconds for the gateway to stop; return its state."""

    @abstractmethod
    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """The last lines the gateway printed (for error messages); may be empty."""

    @abstractmethod
    def remove(self, handle: SandboxHandle) -> None:
        """Remove the gateway and everything the backend made for it."""

    def reap_orphans(self) -> int:
        """Remove gateways whose owner is gone; return how many. Default: none to reap."""
        return 0

    def attach(self, record: Record) -> SandboxHandle:
        """The handle of the kept-alive sandbox ``record`` describes (see :attr:`can_attach`)."""
        raise SandboxStartFailed(
            f"keep_alive and Sandbox.connect are not available for the {self.name} backend yet "
            "(Docker only); create a new Sandbox there instead"
        )
