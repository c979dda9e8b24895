"""A gateway that already runs elsewhere: Jupyter Kernel Gateway or Enterprise Gateway.

The backend manages no container. It checks the URL and the token, hands the
:class:`~enclave_tools.Sandbox` an endpoint, and reports the gateway as "stopped" when it
no longer answers. Kernels, results and failures are the same as on Docker::

    Sandbox(backend=RemoteGatewayBackend("https://gateway.example:8888", token))

Limits, which belong to whoever runs the gateway: memory, CPUs, network, image and the
kernel's environment are the gateway's, so those :class:`SandboxConfig` fields are not
applied. ``write_file``/``read_file`` need the enclave endpoints of this project's image;
a stock gateway answers 404 and the sandbox raises :class:`FileTransferError`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from enclave_tools.backends.base import Backend, ContainerState, SandboxHandle
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import GatewayError, SandboxStartFailed
from enclave_tools.transport import Endpoint, GatewayHTTP

__all__ = ["GatewayState", "RemoteGatewayBackend", "TLSEndpoint", "endpoint_from_url"]


@dataclass(frozen=True)
class TLSEndpoint(Endpoint):
    """An endpoint reached over TLS (``https://``); ``context`` verifies the server."""

    context: ssl.SSLContext = field(default_factory=ssl.create_default_context, compare=False, repr=False)

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new TLS connection to the gateway."""
        sock = socket.create_connection((self.host, self.port or 443), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    """A client context: the system CAs (``True``), a CA bundle (a path), or none (``False``)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def endpoint_from_url(url: str, token: str, verify: bool | str = True) -> Endpoint:
    """The endpoint for a gateway URL such as ``http://10.0.0.7:8888`` or ``https://gw.example``.

    A path prefix (``https://host/gateway/``) is not supported yet: the gateway must serve
    ``/api`` at the root of its URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SandboxStartFailed(f"{url!r} is not a gateway URL such as http://host:8888")
    if parts.path.strip("/") or parts.query:
        raise SandboxStartFailed(
            f"the gateway URL {url!r} has a path; enclave-tools needs the gateway's API at the "
            "root of the URL (http://host:port), so route a host name, not a path, to it"
        )
    if parts.scheme == "https":
        return TLSEndpoint(
            token=token,
            host=parts.hostname,
            port=parts.port or 443,
            scheme="https",
            context=ssl_context(verify),
        )
    return Endpoint(token=token, host=parts.hostname, port=parts.port or 80)


@dataclass
class GatewayState(ContainerState):
    """The state of a gateway this backend does not run: up, or not answering."""

    where: str = ""

    def describe(self) -> str:
        """A sentence on why the gateway is considered stopped."""
        if self.running:
            return f"the gateway at {self.where} answers"
        return f"the gateway at {self.where} stopped answering ({self.error})"


class RemoteGatewayBackend(Backend):
    """Runs sandboxes on an existing Kernel Gateway or Enterprise Gateway.

    ``url`` is the gateway's base URL, ``token`` its auth token (sent as
    ``Authorization: token …``), ``verify`` as in ``requests``: True, False, or a CA bundle.
    """

    name = "remote"
    owns_gateway = False
    """The gateway outlives the sandbox: the Sandbox should delete its kernel on close."""

    def __init__(self, url: str, token: str, *, verify: bool | str = True) -> None:
        self.url = url
        self._endpoint = endpoint_from_url(url, token, verify)

    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Check that the gateway answers and accepts the token; return its endpoint."""
        if config.env:
            raise SandboxStartFailed(
                "SandboxConfig.env cannot be applied to a remote gateway: its kernels get the "
                "environment the gateway's operator configured"
            )
        client = GatewayHTTP(self._endpoint, timeout=min(config.startup_timeout, 30.0))
        try:
            status, data = client.request("GET", "/api")
        except (OSError, GatewayError) as exc:
            raise SandboxStartFailed(f"the gateway at {self.url} does not answer: {exc}") from exc
        finally:
            client.close()
        if status in (401, 403):
            raise SandboxStartFailed(f"the gateway at {self.url} refused the token ({status})")
        if status != 200:
            raise SandboxStartFailed(
                f"{self.url} answered {status} to GET /api: is it a Jupyter Kernel Gateway? "
                f"{data[:200].decode('utf-8', 'replace')}"
            )
        return SandboxHandle(f"remote-{sandbox_id}", self.url, self._endpoint)

    def state(self, handle: SandboxHandle) -> GatewayState:
        """Running while the gateway answers ``GET /api``."""
        client = GatewayHTTP(handle.endpoint, timeout=5.0)
        try:
            status, _ = client.request("GET", "/api")
            error = "" if status == 200 else f"GET /api answered {status}"
        except (OSError, GatewayError) as exc:
            error = str(exc) or type(exc).__name__
        finally:
            client.close()
        return GatewayState(running=not error, exists=True, error=error, where=self.url)

    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> GatewayState:
        """The state now: a remote gateway either answers or it does not."""
        return self.state(handle)

    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """Nothing: a remote gateway's output is not ours to read."""
        return ""

    def remove(self, handle: SandboxHandle) -> None:
        """Nothing to remove: the gateway is not ours (the Sandbox deletes its kernel)."""

    def reap_orphans(self) -> int:
        """Nothing to reap; a gateway culls idle kernels itself
        (``--MappingKernelManager.cull_idle_timeout``)."""
        return 0
