"""Sandbox: one stateful Python kernel in one hardened container.

A sandbox starts lazily (on :meth:`Sandbox.start` or the first run), serializes calls
from any number of threads and tasks, enforces a deadline on every run, and escalates a
run that will not stop: interrupt, then restart the kernel, then replace the container.
Whenever state is lost the result says so.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import posixpath
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from enclave_tools.backends.base import Backend, SandboxHandle
from enclave_tools.backends.docker import DockerBackend
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import (
    EnclaveError,
    FileTransferError,
    GatewayError,
    InvalidInput,
    SandboxClosed,
    SandboxDied,
    SandboxStartFailed,
)
from enclave_tools.execution import Execution, ExecutionError
from enclave_tools.kernel import KernelClient
from enclave_tools.protocol import ExecuteCall
from enclave_tools.transport import GatewayHTTP, quote_path

__all__ = ["Sandbox"]

log = logging.getLogger(__name__)

_executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="enclave-run")
_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()
_CONNECT_ERRORS = (ConnectionError, FileNotFoundError, OSError, GatewayError)

STATE_LOST = (
    "All variables, imports and loaded data from earlier runs are gone; "
    "re-run any setup code before continuing"
)


class Sandbox:
    """A stateful Python kernel in a hardened container.

    Constructing a sandbox starts nothing; :meth:`start` or the first :meth:`run` does::

        with Sandbox() as sb:
            sb.run("x = 21")
            print(sb.run("x * 2").text)   # 42

    Keyword overrides are :class:`SandboxConfig` fields: ``Sandbox(memory="4g")``.
    ``progress`` receives one line at a time while an image is built.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        backend: Backend | None = None,
        progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        base = config or SandboxConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        if overrides:
            self.config = SandboxConfig.model_validate(self.config.model_dump())
        self.id = uuid.uuid4().hex[:12]
        self._backend = backend or DockerBackend()
        self._progress = progress
        self._run_lock = threading.RLock()
        self._handle: SandboxHandle | None = None
        self._http: GatewayHTTP | None = None
        self._kernel: KernelClient | None = None
        self._closed = False
        self._pending_notes: list[str] = []
        self._oom_kills = 0
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._running: object | None = None  # the ticket of the call running now
        self._cancelled: set[object] = set()  # tickets of async calls cancelled by their caller
        self.last_active = time.monotonic()
        """``time.monotonic()`` when a run last started or ended."""

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether a container is running for this sandbox."""
        return self._handle is not None

    @property
    def container_id(self) -> str | None:
        """The backend's id for the running gateway (container id, pod name), once started."""
        return self._handle.container_id if self._handle else None

    @property
    def handle(self) -> SandboxHandle | None:
        """The backend's handle on the running container (for tools and tests)."""
        return self._handle

    @property
    def busy(self) -> bool:
        """Whether a run is in progress or waiting for its turn."""
        return self._in_flight > 0

    def mark_state_lost(self, reason: str) -> None:
        """Make the next result say that earlier state is gone, and why."""
        self._pending_notes.append(f"{reason}. {STATE_LOST}.")

    def start(self) -> Sandbox:
        """Start the container and the kernel (builds the image first if needed)."""
        if self._handle is not None and not self._closed:
            return self  # running: no need to wait for the run lock
        with self._run_lock:
            self._check_open()
            if self._handle is None:
                self._start_container()
        return self

    async def astart(self) -> Sandbox:
        """Async :meth:`start`."""
        return await _in_thread(self.start)

    def close(self) -> None:
        """Remove the container and everything the sandbox created. Safe to call twice."""
        self._closed = True
        with self._run_lock:
            self._stop_container()
        _live.discard(self)

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await _in_thread(self.close)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Sandbox:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._handle else "not started")
        return f"<Sandbox {self.id} {state}>"

    # -- running code ----------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> Execution:
        """Run ``code`` in the kernel and return what it produced.

        Errors in the code come back as ``status == "error"``; a run past ``timeout``
        seconds is interrupted (``status == "timeout"``). Raises :class:`EnclaveError`
        subclasses only when the sandbox itself fails.
        """
        return self._run(code, timeout, object())

    async def arun(self, code: str, timeout: float | None = None) -> Execution:
        """Async :meth:`run`; it never blocks the event loop. Cancelling it interrupts the
        run (only this one: a call still waiting for its turn is simply dropped)."""
        ticket = object()
        try:
            return await _in_thread(self._run, code, timeout, ticket)
        except asyncio.CancelledError:
            self._cancelled.add(ticket)
            _executor.submit(self._interrupt_if_running, ticket)
            raise

    def _run(self, code: str, timeout: float | None, ticket: object) -> Execution:
        code = check_code(code)
        seconds = check_timeout(timeout, self.config.timeout)
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            with self._run_lock:
                self._check_open()
                self.last_active = time.monotonic()
                if ticket in self._cancelled:  # cancelled while waiting for its turn
                    self._cancelled.discard(ticket)
                    return Execution(status="error", notes=["cancelled before it ran"])
                if self._handle is None:
                    self._start_container()
                self._running = ticket
                try:
                    return self._execute(code, seconds)
                finally:
                    self._running = None
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
            self.last_active = time.monotonic()

    def interrupt(self) -> None:
        """Interrupt the code running now (as Ctrl-C would); variables are kept."""
        kernel = self._kernel
        if kernel is None:
            return
        try:
            kernel.interrupt()
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc) from exc

    def restart(self) -> None:
        """Restart the kernel: a clean slate, all variables lost. Waits for a running call."""
        with self._run_lock:
            self._check_open()
            if self._handle is None:
                self._start_container()
                return
            try:
                self._kernel.restart(timeout=self.config.startup_timeout)
            except (GatewayError, *_CONNECT_ERRORS) as exc:
                raise self._died_or(exc) from exc

    # -- files -----------------------------------------------------------------------

    def write_file(self, path: str, data: bytes | str) -> str:
        """Write ``data`` to ``path`` in the sandbox (relative to the working directory);
        return the absolute path."""
        body = data.encode() if isinstance(data, str) else bytes(data)
        return self._put(path, body, len(body))

    def read_file(self, path: str) -> bytes:
        """The contents of ``path`` in the sandbox."""
        status, data = self._files("GET", path)
        if status != 200:
            raise FileTransferError(f"cannot read {path!r} in the sandbox: {_reason(data)}")
        return data

    def upload(self, local_path: str | os.PathLike[str], remote_path: str | None = None) -> str:
        """Copy a local file into the sandbox (default: its name in the working directory);
        return the path in the sandbox."""
        local = Path(local_path)
        if not local.is_file():
            raise FileTransferError(f"{local} is not a file on this machine")
        with local.open("rb") as handle:
            return self._put(remote_path or local.name, handle, local.stat().st_size)

    def download(self, remote_path: str, local_path: str | os.PathLike[str] | None = None) -> Path:
        """Copy a file out of the sandbox (default: its name in the current directory)."""
        target = Path(local_path) if local_path is not None else Path(posixpath.basename(remote_path))
        data = self.read_file(remote_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def _put(self, path: str, body: Any, size: int) -> str:
        status, data = self._files("PUT", path, body, {"Content-Length": str(size)})
        if status != 201:
            raise FileTransferError(f"cannot write {path!r} in the sandbox: {_reason(data)}")
        return self._remote(path)

    def _files(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, bytes]:
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidInput("a sandbox path must be a non-empty string without NUL bytes")
        self.start()
        try:
            status, data = self._http.request(
                method, f"/api/enclave/files?path={quote_path(self._remote(path))}", body,
                headers=headers, timeout=max(self.config.timeout, 60.0),
            )
        except _CONNECT_ERRORS as exc:
            raise self._died_or(exc) from exc
        if status == 404 and not data.lstrip().startswith(b"{"):  # the route, not the file
            raise FileTransferError(
                "this gateway has no file API (/api/enclave/files): it is a stock Jupyter "
                "Kernel or Enterprise Gateway. Use the enclave-tools kernel image, or move "
                "data with code."
            )
        return status, data

    def _remote(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.config.workdir, path))

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("this sandbox was closed; create a new Sandbox to run code")

    def _start_container(self) -> None:
        handle = self._backend.start(self.config, self.id, progress=self._progress)
        _live.add(self)
        try:
            http = GatewayHTTP(handle.endpoint)
            self._wait_ready(handle, http)
            kernel = KernelClient(http)
            kernel.start(timeout=self.config.startup_timeout)
            ready = getattr(self._backend, "ready", None)
            if ready is not None:
                ready(handle, self.config)
        except BaseException:
            self._backend.remove(handle)
            raise
        self._handle, self._http, self._kernel = handle, http, kernel
        self._oom_kills = 0

    def _wait_ready(self, handle: SandboxHandle, http: GatewayHTTP) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        next_check = time.monotonic() + 0.5
        pause = 0.005
        while True:
            try:
                status, _ = http.request("GET", "/api", timeout=5)
                if status == 200:
                    return
                raise SandboxStartFailed(f"the gateway answered {status} to the readiness check")
            except _CONNECT_ERRORS:
                pass
            now = time.monotonic()
            if now >= next_check:
                state = self._backend.state(handle)
                if not state.running:
                    raise SandboxStartFailed(
                        f"the sandbox's gateway did not start: {state.describe()}.\n"
                        f"Its last output:\n{self._backend.logs(handle)}"
                    )
                next_check = now + 0.5
            if now >= deadline:
                raise SandboxStartFailed(
                    f"the gateway did not answer within {self.config.startup_timeout:.0f} s.\n"
                    f"Its last output:\n{self._backend.logs(handle)}"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)

    def _stop_container(self) -> None:
        handle, kernel, http = self._handle, self._kernel, self._http
        self._handle = self._kernel = self._http = None
        if kernel is not None:
            if getattr(self._backend, "owns_gateway", True):
                kernel.disconnect()  # the gateway goes with its container
            else:
                kernel.shutdown(timeout=5)  # the gateway outlives us: delete our kernel
        if http is not None:
            http.close()
        if handle is not None:
            self._backend.remove(handle)

    def _replace_container(self) -> None:
        self._stop_container()
        self._start_container()

    def _execute(self, code: str, timeout: float) -> Execution:
        kernel = self._kernel
        if not kernel.connected:
            self._reconnect()
            kernel = self._kernel
        call = kernel.execute(
            code, capture_limit=self.config.capture_limit, output_limit=self.config.output_limit
        )
        try:
            if kernel.wait(call, timeout):
                execution = self._finished(call)
            else:
                execution = self._timed_out(call, timeout)
        finally:
            kernel.forget(call)
        if self._pending_notes:
            execution.notes[:0] = self._pending_notes
            execution.state_lost = True
            self._pending_notes = []
        return execution

    def _finished(self, call: ExecuteCall) -> Execution:
        if call.ended is None:
            return call.execution()
        if call.ended == "kernel_died":
            return self._kernel_died(call)
        return self._connection_lost(call)

    def _kernel_died(self, call: ExecuteCall) -> Execution:
        execution = call.execution()
        execution.status = "kernel_died"
        execution.state_lost = True
        cause = self._death_cause()
        execution.error = ExecutionError(
            "KernelDied", f"the kernel died while running this code{cause}", ""
        )
        execution.notes.append(
            f"The Python kernel died{cause} and was restarted. {STATE_LOST}."
        )
        self._recover_kernel()
        return execution

    def _death_cause(self) -> str:
        try:
            status, data = self._http.request("GET", "/api/enclave/info", timeout=5)
            kills = int(__import__("json").loads(data).get("oom_kills") or 0) if status == 200 else 0
        except (OSError, ValueError):
            kills = self._oom_kills
        if kills > self._oom_kills:
            self._oom_kills = kills
            return f" because it ran out of memory (the limit is {self.config.memory})"
        return ""

    def _recover_kernel(self) -> None:
        """After a kernel death: wait for the gateway's automatic restart, or start a new kernel."""
        kernel = self._kernel
        deadline = time.monotonic() + self.config.startup_timeout
        try:
            while time.monotonic() < deadline:
                model = kernel.model()
                if model is None or model.get("execution_state") == "dead":
                    kernel.replace(timeout=self.config.startup_timeout)
                    return
                if model.get("execution_state") in ("idle", "busy"):
                    kernel.connect(timeout=self.config.startup_timeout)
                    return
                time.sleep(0.05)
            kernel.replace(timeout=self.config.startup_timeout)
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc) from exc

    def _connection_lost(self, call: ExecuteCall) -> Execution:
        state = self._backend.state(self._handle)
        if not state.running:
            raise self._died(state.describe())
        # The container lives: the socket dropped. Reconnect; the run's output may be partial.
        self._reconnect()
        execution = call.execution()
        execution.status = "error"
        execution.error = ExecutionError(
            "ConnectionLost", "the connection to the kernel dropped during this run", ""
        )
        execution.notes.append(
            "The connection to the kernel dropped during this run, so its output may be "
            "incomplete. The kernel and its variables are kept."
        )
        return execution

    def _reconnect(self) -> None:
        try:
            self._kernel.connect(timeout=self.config.startup_timeout)
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc) from exc

    def _timed_out(self, call: ExecuteCall, timeout: float) -> Execution:
        kernel = self._kernel
        grace = self.config.interrupt_grace
        try:
            kernel.interrupt()
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            log.debug("interrupt failed: %s", exc)
        if kernel.wait(call, grace):
            if call.ended == "kernel_died":
                return self._kernel_died(call)
            execution = call.execution()
            execution.status = "timeout"
            execution.error = ExecutionError(
                "Timeout", f"the code ran longer than {timeout:g} s and was interrupted", ""
            )
            execution.notes.append(
                f"Stopped after {timeout:g} s (the time limit) with an interrupt. Variables "
                "from earlier runs are kept; anything this run had not finished is not."
            )
            return execution
        kernel.forget(call)
        execution = call.execution()
        execution.status = "timeout"
        execution.state_lost = True
        execution.error = ExecutionError(
            "Timeout", f"the code ran longer than {timeout:g} s and ignored the interrupt", ""
        )
        try:
            kernel.restart(timeout=self.config.startup_timeout)
            how = "the kernel was restarted"
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            log.debug("restart failed (%s); replacing the container", exc)
            self._replace_container()
            how = "the sandbox was replaced with a new one"
        execution.notes.append(
            f"Stopped after {timeout:g} s (the time limit): the code ignored the interrupt, "
            f"so {how}. {STATE_LOST}."
        )
        return execution

    def _died(self, why: str) -> SandboxDied:
        """Forget the dead container and say so; the next run starts a fresh one."""
        logs = self._backend.logs(self._handle, 10) if self._handle else ""
        self._stop_container()
        self.mark_state_lost(f"The previous sandbox died ({why}); this is a new one")
        detail = f"\nIts last output:\n{logs}" if logs.strip() else ""
        return SandboxDied(
            f"The sandbox died: {why}. Everything in it is lost. The next run starts a new "
            f"sandbox automatically.{detail}"
        )

    def _died_or(self, exc: BaseException) -> EnclaveError:
        if self._handle is None:
            return SandboxDied("the sandbox is not running")
        # The gateway is unreachable: either the container is stopping, or the gateway
        # inside it is stuck. Docker may take a moment to notice the former.
        state = self._backend.wait_stopped(self._handle, timeout=3.0)
        if not state.running:
            return self._died(state.describe())
        if isinstance(exc, EnclaveError):
            return exc
        return GatewayError(f"cannot reach the sandbox's gateway: {exc}")

    def _interrupt_if_running(self, ticket: object) -> None:
        if self._running is not ticket:
            return  # that call has not started (it never will) or is over: nothing to stop
        try:
            self.interrupt()
        except EnclaveError:
            pass


def check_code(code: Any) -> str:
    """``code`` if it is runnable text; raises :class:`InvalidInput` otherwise."""
    if not isinstance(code, str):
        raise InvalidInput(f"code must be a string of Python, not {type(code).__name__}")
    if "\0" in code:
        raise InvalidInput("code contains a NUL byte; remove it")
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"code is not valid text (a lone surrogate at position {exc.start})") from exc
    return code.removeprefix("\ufeff").replace("\r\n", "\n")


def check_timeout(timeout: Any, default: float) -> float:
    """A usable timeout in seconds; raises :class:`InvalidInput` for a bad one."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidInput(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (0 < timeout <= 24 * 3600) or timeout != timeout:
        raise InvalidInput(f"timeout must be between 0 and 86400 seconds, not {timeout}")
    return float(timeout)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_executor, lambda: fn(*args))


def _reason(data: bytes) -> str:
    import json

    try:
        return str(json.loads(data).get("reason"))
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace")


@atexit.register
def _close_all() -> None:
    for sandbox in list(_live):
        try:
            sandbox.close()
        except Exception:  # noqa: BLE001 - interpreter is exiting
            pass
