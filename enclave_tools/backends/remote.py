"""A gateway that already runs elsewhere: Jupyter Kernel Gateway or Enterprise Gateway.

The backend manages no container. It checks the URL and the token, hands the
:class:`~enclave_tools.Sandbox` an endpoint, and reports the gateway as "stopped" when it
no longer answers. Kernels, results and failures are the same as on Docker::

    Sandbox(backend=RemoteGatewayBackend("https://gateway.example:8888", token))

Kept-alive sandboxes (``keep_alive``, ``Sandbox.connect``): the sandbox is a kernel on the
gateway, which outlives it. Its record is this host user's (``registry.py``) and holds no
token (the backend has the gateway's); one process at a time is attached (a flock), and
SandboxSessions' workers must share this host (a gateway offers no compare-and-swap to
name a kernel atomically, so two hosts racing for one session could make two kernels).
Its limits are kept by a watchdog inside the kernel (``watchdog.py``) and by ``gc``.

Limits, which belong to whoever runs the gateway: memory, CPUs, network, image and the
kernel's environment are the gateway's, so those :class:`SandboxConfig` fields are not
applied. ``write_file``/``read_file`` need the enclave endpoints of this project's image;
a stock gateway answers 404 and the sandbox raises :class:`FileTransferError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from enclave_tools import registry
from enclave_tools.backends import watchdog
from enclave_tools.backends.base import Backend, ContainerState, SandboxHandle, SandboxInfo
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError, GatewayError, SandboxGone, SandboxStartFailed
from enclave_tools.protocol import loads_bounded
from enclave_tools.transport import Endpoint, GatewayHTTP, quote_path

if TYPE_CHECKING:
    from enclave_tools.kernel import KernelClient
    from enclave_tools.registry import Record

log = logging.getLogger(__name__)

__all__ = ["GatewayState", "RemoteGatewayBackend", "TLSEndpoint", "endpoint_from_url", "kernel_info"]


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
    can_attach = True

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
        self.check_answers(min(config.startup_timeout, 30.0))
        if config.keep_alive is not None:
            self.reap_orphans_quietly()
        return SandboxHandle(f"remote-{sandbox_id}", self.url, self._endpoint)

    def check_answers(self, timeout: float = 30.0) -> None:
        """Raise SandboxStartFailed, saying why, unless the gateway answers ``GET /api``
        and accepts the token (a wrong certificate, URL or token among the reasons)."""
        client = GatewayHTTP(self._endpoint, timeout=timeout)
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

    def reap_orphans(self, on_removed: Callable[[str], None] | None = None) -> int:
        """Delete this user's kept-alive kernels on this gateway that have expired: past
        their lifetime as recorded on this host, or idle (as the gateway reports their
        last activity) for longer than their limit, which is also how long a kernel that
        its watchdog ended sits restarted and empty; forget records of kernels that are
        gone. Return how many kernels were deleted (``on_removed`` is told of each, and of
        each record forgotten). Raises SandboxStartFailed if the gateway does not answer.
        (Other kernels are the gateway's to cull: ``--MappingKernelManager.cull_idle_timeout``.)"""
        self.check_answers()
        removed = 0
        for record in self._records():
            if not record.kernel_id:
                continue
            try:
                model = self._kernel_model(record.kernel_id)
            except (OSError, GatewayError) as exc:
                raise SandboxStartFailed(f"the gateway at {self.url} does not answer: {exc}") from exc
            if model is None:
                registry.remove(record.id)
                if on_removed:
                    on_removed(f"the record of {record.id} (its kernel no longer exists)")
            elif self._expired(record, model):
                self._delete_kernel(record.kernel_id)
                registry.remove(record.id)
                removed += 1
                if on_removed:
                    on_removed(record.id)
        return removed

    def describe_sandboxes(self) -> list[SandboxInfo]:
        """This user's kept-alive sandboxes on this gateway (its records on this host), with
        what the gateway says of each kernel: its state and last activity. Raises
        SandboxStartFailed if the gateway does not answer (an empty list would say "none")."""
        self.check_answers()
        now = time.time()
        infos = []
        for record in self._records():
            try:
                model: dict[str, Any] | None | str = (
                    self._kernel_model(record.kernel_id) if record.kernel_id else None
                )
            except (OSError, GatewayError):
                model = "?"  # not answering: unknown
            infos.append(kernel_info(record, model, now))
        return infos

    def stop_sandbox(self, info: SandboxInfo) -> None:
        """Delete the sandbox's kernel on the gateway and forget its record."""
        record = self.load_record(info.sandbox_id)
        if record.kernel_id:
            self._delete_kernel(record.kernel_id, strict=True)
        self.forget_record(record.id)

    def _records(self) -> list[Record]:
        """This user's records of kept-alive sandboxes on this gateway."""
        return [r for r in registry.records() if r.backend == self.name and r.name == self.url]

    def reap_orphans_quietly(self) -> None:
        """:meth:`reap_orphans`, never failing a start because of it."""
        try:
            self.reap_orphans()
        except Exception as exc:  # noqa: BLE001 - cleanup must never break a start
            log.debug("reaping expired kernels failed: %s", exc)

    # -- kept-alive sandboxes: a kernel on the gateway -------------------------------------

    def session_sandbox_id(self, key: str) -> str:
        """Session ``key``'s sandbox id for this host user on this gateway."""
        digest = hashlib.sha256(f"{os.getuid()}\0{self.url}\0{key}".encode()).hexdigest()
        return f"r{digest[:15]}"

    def load_record(self, sandbox_id: str) -> Record:
        """This user's record of ``sandbox_id``, which must name this gateway."""
        record = super().load_record(sandbox_id)
        if record.name != self.url:
            raise SandboxGone(
                f"sandbox {sandbox_id} is a kernel on the gateway at {record.name}, not {self.url}"
            )
        return record

    def save_record(self, record: Record) -> None:
        """Write ``record`` without the token: it is the gateway's, and this backend has it."""
        registry.save(replace(record, token=""))

    def attach(self, record: Record) -> SandboxHandle:
        """The gateway's endpoint, once its kernel ``record.kernel_id`` is found there and
        has not passed its recorded lifetime; SandboxGone otherwise."""
        try:
            model = self._kernel_model(record.kernel_id) if record.kernel_id else None
        except (OSError, GatewayError) as exc:
            raise SandboxStartFailed(f"the gateway at {self.url} does not answer: {exc}") from exc
        if model is None:
            raise SandboxGone(
                f"sandbox {record.id} is gone: its kernel no longer exists on the gateway (its idle or "
                "lifetime limit passed, or it was deleted or culled). Create a new Sandbox."
            )
        if record.expires and time.time() >= record.expires:
            raise SandboxGone(f"sandbox {record.id} has ended: its lifetime was up")
        return SandboxHandle(f"remote-{record.id}", self.url, self._endpoint)

    def kept_alive_started(self, handle: SandboxHandle, kernel: KernelClient, config: SandboxConfig) -> None:
        """Start the kernel's watchdog (and again whenever the kernel is restarted)."""
        watchdog.install(kernel, config.keep_alive, config.lifetime_limit)
        kernel.on_new_kernel = self._rearm(config)

    def check_attached(self, record: Record, kernel: KernelClient) -> None:
        """The kernel must still run its watchdog: a kernel without one was restarted
        fresh by the gateway after the watchdog ended it (or after it crashed)."""
        if not watchdog.alive(kernel):
            raise SandboxGone(
                f"sandbox {record.id} has ended: its kernel was restarted with no state (its idle or "
                "lifetime limit passed while no process was attached, or it crashed)"
            )
        kernel.on_new_kernel = self._rearm(SandboxConfig.model_validate(record.config))

    def remove_expired(self, record: Record) -> None:
        """Delete ``record``'s kernel (it has ended: restarted empty, or past its lifetime)
        and forget the record."""
        if record.kernel_id:
            self._delete_kernel(record.kernel_id)
        self.forget_record(record.id)

    def apply_limits(
        self,
        handle: SandboxHandle,
        http: GatewayHTTP,
        kernel: KernelClient,
        idle: float | None,
        lifetime: float | None,
    ) -> Any:
        """Change the kernel's watchdog (a cell of enclave-tools' own: it waits for a
        running cell, up to 30 s). /api/enclave/lifetime would be the whole gateway's."""
        return watchdog.set_limits(kernel, idle, lifetime)

    def read_limits(self, handle: SandboxHandle, http: GatewayHTTP) -> Any:
        """Not readable without running a cell (which is use): unknown."""
        return {}

    def _rearm(self, config: SandboxConfig) -> Callable[[KernelClient], None]:
        def rearm(kernel: KernelClient) -> None:
            try:
                watchdog.install(kernel, config.keep_alive, config.lifetime_limit)
            except EnclaveError as exc:
                log.warning("could not restart the watchdog of kernel %s: %s", kernel.kernel_id, exc)

        return rearm

    def _kernel_model(self, kernel_id: str) -> dict[str, Any] | None:
        client = GatewayHTTP(self._endpoint, timeout=10.0)
        try:
            status, data = client.request("GET", f"/api/kernels/{quote_path(kernel_id)}")
        finally:
            client.close()
        if status == 404:
            return None
        if status != 200:
            raise GatewayError(f"the gateway answered {status} for kernel {kernel_id}", status)
        model = loads_bounded(data)
        if not isinstance(model, dict):
            raise GatewayError("the gateway's record of a kernel is not a JSON object")
        return model

    def _delete_kernel(self, kernel_id: str, *, strict: bool = False) -> None:
        """Delete a kernel (one already gone is fine); a failure is ignored, or with
        ``strict`` raised."""
        client = GatewayHTTP(self._endpoint, timeout=10.0)
        try:
            status, _ = client.request("DELETE", f"/api/kernels/{quote_path(kernel_id)}")
        except (OSError, GatewayError) as exc:
            if strict:
                raise SandboxStartFailed(f"the gateway at {self.url} does not answer: {exc}") from exc
            return
        finally:
            client.close()
        if strict and status not in (200, 204, 404):
            raise GatewayError(
                f"the gateway at {self.url} answered {status} to deleting kernel {kernel_id}", status
            )

    @staticmethod
    def _expired(record: Record, model: dict[str, Any]) -> bool:
        now = time.time()
        if record.expires and now >= record.expires:
            return True
        idle_limit = record.config.get("keep_alive")
        idle = _idle(model, now)
        if not isinstance(idle_limit, (int, float)) or idle is None:
            return False
        return idle > idle_limit


def _idle(model: dict[str, Any], now: float) -> float | None:
    """Seconds since the kernel's last activity as the gateway reports it (0 while a cell
    runs: that is use); None if it does not say."""
    if model.get("execution_state") == "busy":
        return 0.0
    last = model.get("last_activity")
    if not isinstance(last, str):
        return None
    try:
        seen = datetime.fromisoformat(last[:40].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return now - seen


def kernel_info(record: Record, model: dict[str, Any] | None | str, now: float) -> SandboxInfo:
    """What ``enclave-tools ps`` shows of ``record``'s sandbox, given the gateway's model of
    its kernel (untrusted), None if the gateway has no such kernel, or "?" if it did not
    answer."""
    lifetime_left = record.expires - now if record.expires else None
    info = SandboxInfo.of_record(record, now, container_id=record.kernel_id, where=record.name)
    if model is None:
        info.idle, info.expires_in, info.status = None, "ended", "gone"
    elif isinstance(model, dict):
        state = model.get("execution_state")
        info.status = state if isinstance(state, str) and state else "?"
        idle = _idle(model, now)
        limit = record.config.get("keep_alive")
        if idle is not None:
            info.idle = idle
            if isinstance(limit, (int, float)) and not isinstance(limit, bool):
                idle_left = limit - idle
                info.expires_in = idle_left if lifetime_left is None else min(idle_left, lifetime_left)
    if isinstance(info.expires_in, float) and info.expires_in <= 0:
        info.expires_in = "expired"
    return info
