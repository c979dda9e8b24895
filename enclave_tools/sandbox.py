"""Sandbox: one stateful Python kernel in one hardened container.

A sandbox starts lazily (on :meth:`Sandbox.start` or the first run) and runs its calls one
at a time, first come first served (see :mod:`enclave_tools.turns`): a call waiting for its
turn holds no thread, so one busy conversation never stalls another. Every run has a
deadline; a run that will not stop is escalated: interrupt, then restart the kernel, then
replace the container. Whenever state is lost, every caller that did not see it happen is
told so on its next result. :meth:`Sandbox.close` ends a running cell and returns within
:data:`CLOSE_TIMEOUT` seconds, however the gateway behaves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from enclave_tools import attach, closing, installs, lifecycle
from enclave_tools.backends.base import AttachHold, Backend, SandboxHandle
from enclave_tools.backends.docker import DockerBackend
from enclave_tools.checks import check_code, check_timeout
from enclave_tools.closing import CLOSE_GRACE, CLOSE_TIMEOUT, close_sandboxes
from enclave_tools.config import SandboxConfig, size_in_bytes
from enclave_tools.errors import (
    EnclaveError,
    FileTransferError,
    GatewayError,
    GatewayMisbehaved,
    GatewayUnreachable,
    InvalidInput,
    SandboxClosed,
    SandboxDied,
)
from enclave_tools.escalation import Outcome
from enclave_tools.execution import Execution
from enclave_tools.files import download_to, read_bytes, upload_from
from enclave_tools.history import RunHistory
from enclave_tools.kernel import INTERRUPT_TIMEOUT, KernelClient
from enclave_tools.live import (
    AsyncLiveStream,
    LiveFeed,
    LiveStream,
    OutputCallback,
    arun_delivered,
    run_delivered,
)
from enclave_tools.losses import STATE_LOST, LossLog
from enclave_tools.packages import LiveInstaller
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP
from enclave_tools.turns import WORKERS, Turn, TurnQueue, async_twin, off_loop

__all__ = ["CLOSE_TIMEOUT", "Sandbox", "close_sandboxes"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_CONNECT_ERRORS = CONNECT_ERRORS


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
        self.config = SandboxConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self.id = uuid.uuid4().hex[:12]
        self._backend = backend or DockerBackend()
        installs.check_supported(self.config, self._backend)
        self._installer = LiveInstaller(
            self.config.install_policy, posixpath.join(self.config.workdir, ".packages")
        )
        self._progress = progress
        self._lock = threading.Lock()  # guards the handle, kernel and client, and _closed
        self._turns = TurnQueue()
        self._losses = LossLog()
        self._handle: SandboxHandle | None = None
        self._http: GatewayHTTP | None = None
        self._kernel: KernelClient | None = None
        self._closed = False  # no new work
        self._ending = False  # a close() is ending what runs
        self._close_done = threading.Event()
        self._oom_kills = 0
        self.last_active = time.monotonic()
        """``time.monotonic()`` when a run last started or ended."""
        self.history = RunHistory()
        """Every run (code, outputs, status, timings), the latest ones within a bound;
        :meth:`export_notebook` writes it as a Jupyter notebook."""

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether a container is running for this sandbox."""
        return self._handle is not None

    @property
    def container_id(self) -> str | None:
        """The backend's id for the running gateway (container id, pod name), once started."""
        handle = self._handle
        return handle.container_id if handle else None

    @property
    def handle(self) -> SandboxHandle | None:
        """The backend's handle on the running container (for tools and tests)."""
        return self._handle

    @property
    def busy(self) -> bool:
        """Whether a call is running or waiting for its turn."""
        return self._turns.busy

    def mark_state_lost(self, reason: str) -> None:
        """Make the next result say that earlier state is gone, and why."""
        self._losses.record(f"{reason}. {STATE_LOST}.")

    def start(self) -> Sandbox:
        """Start the container and the kernel (builds the image first if needed)."""
        if self._handle is not None and not self._closed:
            return self  # running: no need to wait for a turn
        return self._in_turn(self._start_in_turn)

    async def astart(self) -> Sandbox:
        """Async :meth:`start`; waiting for its turn holds no thread."""
        if self._handle is not None and not self._closed:
            return self
        return await self._ain_turn(self._start_in_turn)

    def _start_in_turn(self, turn: Turn) -> Sandbox:
        self._check_open()
        if self._handle is None:
            self._start_container()
        return self

    def _in_turn(self, work: Callable[[Turn], _T]) -> _T:
        """Wait (blocking) for a turn, do ``work(turn)`` in it, then hand the sandbox on."""
        turn = self._enter()
        self._turns.wait(turn)
        return self._work_and_leave(turn, work)

    async def _ain_turn(self, work: Callable[[Turn], _T]) -> _T:
        """Async :meth:`_in_turn`: the wait holds no thread; the work runs on a worker."""
        turn = self._enter()
        await self._turns.wait_async(turn)
        return await off_loop(self._work_and_leave, turn, work)

    def _work_and_leave(self, turn: Turn, work: Callable[[Turn], _T]) -> _T:
        try:
            return work(turn)
        finally:
            self._turns.leave(turn)

    def retire(self, reason: str) -> bool:
        """If no call runs or waits, remove the container but keep the sandbox usable: the
        next run starts a fresh one, and its result says that state was lost because of
        ``reason``. Returns whether it was retired (False: busy or closed)."""
        turn = Turn(self._losses.generation)
        if not self._turns.try_enter(turn):
            return False
        try:
            if self._closed:
                return False
            self._stop_container()
            self.mark_state_lost(reason)
            return True
        finally:
            self._turns.leave(turn)

    def close(self) -> None:
        """Remove the container and everything the sandbox created. Safe to call twice.

        New calls are refused at once and calls waiting for their turn fail with
        :class:`SandboxClosed`; a running cell is interrupted, and cut off if it has not
        stopped within :data:`CLOSE_GRACE` s. Returns within :data:`CLOSE_TIMEOUT` s (plus
        the time the engine takes to remove the container)."""
        self._refuse_new_work()
        with self._lock:
            ending, self._ending = not self._ending, True
        if not ending:
            self._close_done.wait(CLOSE_TIMEOUT)  # another thread is closing it
            return
        try:
            self._end_running(time.monotonic() + CLOSE_TIMEOUT)
        finally:
            closing.untrack(self)
            self._close_done.set()

    aclose = async_twin(close)

    def _refuse_new_work(self) -> None:
        """Refuse new calls and fail the waiting ones at once (no I/O, never blocks)."""
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self._turns.close(self._closed_error("before this call's turn came"))

    def _end_running(self, deadline: float) -> None:
        """End what runs (interrupt, then cut the connection) and remove the container."""
        running = self._turns.current
        if running is not None and running.sent:
            self._interrupt_on_worker()
            self._turns.wait_idle(min(CLOSE_GRACE, deadline - time.monotonic()))
        self._stop_container()  # wakes a call stuck on the gateway: its connection is gone
        self._turns.wait_idle(max(deadline - time.monotonic(), 0.0))

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

    def run(
        self, code: str, timeout: float | None = None, *, on_output: OutputCallback | None = None
    ) -> Execution:
        """Run ``code`` in the kernel and return what it produced.

        Errors in the code come back as ``status == "error"``; a run past ``timeout``
        seconds is interrupted (``status == "timeout"``). Raises :class:`EnclaveError`
        subclasses only when the sandbox itself fails.

        ``on_output`` receives each :class:`~enclave_tools.live.OutputEvent` (stdout,
        stderr, result, image, error) as it arrives, on a thread of the run's own; every
        event is delivered before this returns. A slow callback never holds up the run
        (past 16 MiB waiting, outputs are dropped for it and counted), one that raises is
        logged. The returned :class:`Execution` is the same either way.
        """
        code = check_code(code)
        seconds = check_timeout(timeout, self.config.timeout)
        if on_output is None:
            return self._run_fed(code, seconds, None)
        return run_delivered(
            lambda feed: self._run_fed(code, seconds, feed), on_output, name=f"enclave-live-{self.id}"
        )

    async def arun(
        self, code: str, timeout: float | None = None, *, on_output: OutputCallback | None = None
    ) -> Execution:
        """Async :meth:`run`; it never blocks the event loop, and waiting for its turn holds
        no thread. Cancelling it drops a call still waiting for its turn, never sends code
        not yet sent, and interrupts code already running (escalating as a timeout would
        if the code ignores the interrupt; the next result then says that state was lost).

        ``on_output`` (a function or a coroutine function) is called on this event loop,
        in order, as outputs arrive (see :meth:`run`)."""
        code = check_code(code)
        seconds = check_timeout(timeout, self.config.timeout)
        if on_output is None:
            return await self._arun_fed(code, seconds, None)
        return await arun_delivered(lambda feed: self._arun_fed(code, seconds, feed), on_output)

    def _run_fed(self, code: str, seconds: float, feed: LiveFeed | None) -> Execution:
        """Wait for a turn and run ``code``; its outputs go to ``feed`` too, if given."""
        try:
            turn = self._enter()
            self._turns.wait(turn)
            return self._run_turn(turn, code, seconds, feed)
        finally:
            if feed is not None:
                feed.close()

    async def _arun_fed(self, code: str, seconds: float, feed: LiveFeed | None) -> Execution:
        """Async :meth:`_run_fed`."""
        try:
            turn = self._enter()
            await self._turns.wait_async(turn)
        except BaseException:
            if feed is not None:
                feed.close()
            raise
        try:
            return await off_loop(self._run_turn_fed, turn, code, seconds, feed)
        except asyncio.CancelledError:
            self._losses.cancel(turn)  # the running call sees this within CANCEL_POLL s
            raise

    def _run_turn_fed(self, turn: Turn, code: str, seconds: float, feed: LiveFeed | None) -> Execution:
        try:
            return self._run_turn(turn, code, seconds, feed)
        finally:
            if feed is not None:
                feed.close()

    def _enter(self) -> Turn:
        turn = Turn(self._losses.generation)
        self._turns.enter(turn)
        return turn

    def _run_turn(self, turn: Turn, code: str, seconds: float, feed: LiveFeed | None = None) -> Execution:
        """Run ``code`` in ``turn`` (which is current), then hand the sandbox on."""
        self.last_active = time.monotonic()
        started, clock = time.time(), time.monotonic()
        try:
            self._check_open()
            if turn.cancelled:
                return Outcome("cancelled").execution()
            if self._handle is None:
                self._start_container()
            execution = installs.execute_cell(self, self._installer, turn, code, seconds, feed)
            self._losses.tell(turn, execution, self._turns.oldest_seen())
            self.history.record(code, execution, started, time.monotonic() - clock)
            return execution
        except EnclaveError as exc:
            self.history.record(code, None, started, time.monotonic() - clock, failure=str(exc))
            raise
        except Exception as exc:  # the caller only ever sees EnclaveErrors
            if self._closed:
                raise self._closed_error("while this code ran") from exc
            log.warning("a sandbox call failed unexpectedly", exc_info=True)
            raise GatewayError(f"the sandbox call failed unexpectedly: {exc!r}") from exc
        finally:
            self.last_active = time.monotonic()
            self._turns.leave(turn)

    def interrupt(self) -> None:
        """Interrupt the code running now (as Ctrl-C would); variables are kept. It goes
        straight to the gateway: it never waits for a turn. Code just sent is interrupted
        once the kernel has begun it (at most 5 s later): a signal before that is lost."""
        kernel = self._kernel
        if kernel is None:
            return
        running = self._turns.current
        call = None if running is None else running.call
        try:
            if call is None:
                kernel.interrupt(timeout=INTERRUPT_TIMEOUT)
            else:
                kernel.interrupt_call(call)
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc) from exc

    ainterrupt = async_twin(interrupt)

    def restart(self) -> None:
        """Restart the kernel: a clean slate, all variables lost. Waits for a running call."""
        self._in_turn(self._restart_in_turn)

    async def arestart(self) -> None:
        """Async :meth:`restart`; waiting for the running call holds no thread."""
        await self._ain_turn(self._restart_in_turn)

    def _restart_in_turn(self, turn: Turn) -> None:
        self._check_open()
        if self._handle is None:
            self._start_container()
            return
        kernel = self._live_kernel()
        try:
            kernel.restart(timeout=self.config.startup_timeout)
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc, turn) from exc
        self._losses.record(f"The kernel was restarted on request. {STATE_LOST}.", witness=turn)
        self._losses.tell(turn, None, self._turns.oldest_seen())

    # -- live output and the session as a notebook --------------------------------------

    def stream(self, code: str, timeout: float | None = None) -> LiveStream:
        """Run ``code`` and iterate over its outputs as they arrive::

            run = sb.stream("for i in range(3): print(i); time.sleep(1)")
            for event in run:
                print(event.kind, event.text)
            run.execution   # the Execution, as run() returns it

        The run goes on on a thread of its own; a sandbox failure is raised at the end of
        the iteration."""
        code = check_code(code)
        seconds = check_timeout(timeout, self.config.timeout)
        return LiveStream(lambda feed: self._run_fed(code, seconds, feed))

    def astream(self, code: str, timeout: float | None = None) -> AsyncLiveStream:
        """Async :meth:`stream`: ``async for event in sb.astream(code)``."""
        code = check_code(code)
        seconds = check_timeout(timeout, self.config.timeout)
        return AsyncLiveStream(lambda feed: self._arun_fed(code, seconds, feed))

    def export_notebook(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`history` as a Jupyter notebook (``.ipynb``, nbformat 4.5): one code
        cell per run with its outputs, plots included. Returns the path."""
        from enclave_tools.notebook import notebook_json, write_notebook

        return write_notebook(path, notebook_json(self.history.runs(), self.history.dropped))

    @classmethod
    def from_notebook(
        cls,
        path: str | os.PathLike[str],
        *,
        stop_on_error: bool = True,
        timeout: float | None = None,
        **overrides: Any,
    ) -> Sandbox:
        """A new sandbox with the code cells of the notebook at ``path`` run in it, in
        order (to rebuild a lost state or reproduce an agent's work). With
        ``stop_on_error`` it stops at the first cell that does not succeed. The runs are in
        :attr:`history`; the sandbox is yours to close. ``overrides`` are as for
        :class:`Sandbox`; ``timeout`` is per cell."""
        from enclave_tools.notebook import read_code_cells

        cells = read_code_cells(path)
        sandbox = cls(**overrides)
        try:
            sandbox.start()
            for code in cells:
                if not sandbox.run(code, timeout=timeout).ok and stop_on_error:
                    break
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    # -- files -----------------------------------------------------------------------

    def write_file(self, path: str, data: bytes | str) -> str:
        """Write ``data`` to ``path`` in the sandbox (relative to the working directory);
        return the absolute path."""
        body = data.encode() if isinstance(data, str) else bytes(data)
        return self._put(path, body, len(body))

    def read_file(self, path: str) -> bytes:
        """The contents of ``path`` in the sandbox (at most ``config.file_limit`` bytes)."""
        remote = self._remote(path)
        return self._files(lambda http: read_bytes(http, remote, self._file_limit, self._file_timeout))

    def upload(self, local_path: str | os.PathLike[str], remote_path: str | None = None) -> str:
        """Copy a local file into the sandbox (default: its name in the working directory);
        return the path in the sandbox."""
        local = Path(local_path)
        if not local.is_file():
            raise FileTransferError(f"{local} is not a file on this machine")
        with local.open("rb") as handle:
            return self._put(remote_path or local.name, handle, local.stat().st_size)

    def download(self, remote_path: str, local_path: str | os.PathLike[str] | None = None) -> Path:
        """Copy a file out of the sandbox (default: its name in the current directory),
        streamed to disk; at most ``config.file_limit`` bytes."""
        remote = self._remote(remote_path)
        target = Path(local_path) if local_path is not None else Path(posixpath.basename(remote))
        return self._files(
            lambda http: download_to(http, remote, target, self._file_limit, self._file_timeout)
        )

    awrite_file = async_twin(write_file)
    aread_file = async_twin(read_file)
    aupload = async_twin(upload)
    adownload = async_twin(download)

    def _put(self, path: str, body: Any, size: int) -> str:
        remote = self._remote(path)
        self._files(lambda http: upload_from(http, remote, body, size, self._file_timeout))
        return remote

    @property
    def _file_limit(self) -> int:
        return size_in_bytes(self.config.file_limit)

    @property
    def _file_timeout(self) -> float:
        return self.config.file_timeout

    def _files(self, transfer: Callable[[GatewayHTTP], _T]) -> _T:
        self.start()
        http = self._http
        if http is None:
            raise (
                self._closed_error("before the file was copied")
                if self._closed
                else SandboxDied("the sandbox stopped before the file was copied; try again")
            )
        try:
            return transfer(http)
        except (GatewayError, *_CONNECT_ERRORS) as exc:
            raise self._died_or(exc) from exc

    def _remote(self, path: str) -> str:
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidInput("a sandbox path must be a non-empty string without NUL bytes")
        return posixpath.normpath(posixpath.join(self.config.workdir, path))

    # -- the container -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("this sandbox was closed; create a new Sandbox to run code")

    def _closed_error(self, when: str) -> SandboxClosed:
        return SandboxClosed(
            f"this sandbox was closed {when}, so the code did not run or its output is lost. "
            "Create a new Sandbox to run code."
        )

    def _start_container(self) -> None:
        self._check_open()
        closing.track(self)  # from now on, the interpreter's exit closes it
        try:
            lifecycle.launch(
                self._backend, self.config, self.id, self._progress, self._check_open, self._keep
            )
        except BaseException as exc:
            if self._closed and not isinstance(exc, SandboxClosed):
                raise self._closed_error("while it started") from exc
            raise
        self._oom_kills = 0

    def _keep(self, handle: SandboxHandle, http: GatewayHTTP, kernel: KernelClient) -> None:
        """Keep what :func:`lifecycle.launch` brought up (a kept-alive one is recorded)."""
        self._attached = attach.started(self.id, self.config, self._backend, handle, kernel, self._attached)
        with self._lock:
            if self._closed:
                raise self._closed_error("while it started")
            self._handle, self._http, self._kernel = handle, http, kernel

    def _stop_container(self) -> None:
        """Forget the container and remove it; safe from any thread, at any time."""
        with self._lock:
            handle, kernel, http = self._handle, self._kernel, self._http
            self._handle = self._kernel = self._http = None
        lifecycle.take_down(self._backend, handle, http, kernel)
        if handle is not None:
            attach.forget(self.id, self.config, self._backend)
            if self._closed:
                self._release_hold()

    def _replace_container(self) -> None:
        self._stop_container()
        self._start_container()

    def _live_kernel(self) -> KernelClient:
        kernel = self._kernel
        if kernel is None:
            if self._closed:
                raise self._closed_error("while this code ran")
            raise SandboxDied("the sandbox stopped; the next run starts a new one")
        return kernel

    def _interrupt_on_worker(self) -> None:
        """Send an interrupt on a worker thread (it never waits behind anything)."""

        def send() -> None:
            try:
                self.interrupt()
            except EnclaveError as exc:
                log.debug("interrupt failed: %s", exc)

        WORKERS.submit(send)

    # -- what a failure means for the container ---------------------------------------

    def _died(self, why: str) -> SandboxDied:
        """Forget the dead container and say so; the next run starts a fresh one."""
        handle = self._handle
        logs = lifecycle.last_output(self._backend, handle, self.config, 10) if handle else ""
        self._stop_container()
        # Told on the next result too, whoever's it is: the error may not reach a model as is.
        self._losses.record(f"The previous sandbox died ({why}); this is a new one. {STATE_LOST}.")
        detail = f"\nIts last output:\n{logs}" if logs.strip() else ""
        return SandboxDied(
            f"The sandbox died: {why}. Everything in it is lost. The next run starts a new "
            f"sandbox automatically.{detail}"
        )

    def _died_or(self, exc: BaseException, turn: Turn | None = None) -> EnclaveError:
        """The error to raise for a failed gateway request: closed, died, misbehaved, or
        unreachable."""
        if self._closed:
            return self._closed_error("while this call ran")
        handle = self._handle
        if handle is None:
            return SandboxDied("the sandbox stopped; the next run starts a new one")
        # The gateway is unreachable: either the container is stopping, or the gateway
        # inside it is stuck. Docker may take a moment to notice the former.
        state = self._backend.wait_stopped(handle, timeout=3.0)
        if not state.running:
            return self._died(state.describe())
        if isinstance(exc, GatewayMisbehaved):
            return self._misbehaved(exc)
        if isinstance(exc, EnclaveError):
            return exc
        return GatewayUnreachable(f"cannot reach the sandbox's gateway: {exc}")

    def _misbehaved(self, exc: GatewayMisbehaved) -> GatewayMisbehaved:
        """A gateway that broke the protocol may be under the code's control: replace it."""
        self._stop_container()
        note = f"The sandbox's gateway misbehaved ({exc}), so it was replaced with a new one"
        self.mark_state_lost(note)
        return GatewayMisbehaved(
            f"{note}. Everything in it is lost; the next run starts a new sandbox "
            f"automatically. {STATE_LOST}."
        )

    # -- kept alive: detach, connect, lifetimes ------------------------------------------
    # A sandbox made with ``keep_alive`` has no owner process: it ends itself when it has
    # not been used for ``keep_alive`` seconds or its ``lifetime`` is up. Its record lets
    # another process reach it; one process at a time is attached. The work is in
    # enclave_tools.attach; where records live and what "attached" means is the backend's.

    _attached: AttachHold | None = None

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        wait: float = 0.0,
        backend: Backend | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Sandbox:
        """Attach this process to the kept-alive sandbox ``sandbox_id`` (made with
        ``keep_alive``, then detached): the same kernel, the same variables. Docker and the
        remote gateway: any process of this user on this host; Kubernetes (pass the
        ``backend``): any process, on any host, that may read the pod's Secret.

        One process at a time may be attached: if another is, this waits up to ``wait``
        seconds for it to let go, then raises :class:`~enclave_tools.errors.SandboxInUse`.
        Raises :class:`~enclave_tools.errors.SandboxGone` if the sandbox has ended (its
        idle limit or lifetime passed, or it was stopped) and
        :class:`~enclave_tools.errors.SandboxAccessDenied` if it is another user's."""
        found = attach.connect(sandbox_id, wait, backend or DockerBackend())
        try:
            sandbox = cls(found.config, backend=found.backend, progress=progress)
        except BaseException:
            found.let_go()
            raise
        sandbox._adopt(found)
        return sandbox

    @classmethod
    async def aconnect(
        cls,
        sandbox_id: str,
        *,
        wait: float = 0.0,
        backend: Backend | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Sandbox:
        """Async :meth:`connect` (on a worker thread)."""
        return await off_loop(lambda: cls.connect(sandbox_id, wait=wait, backend=backend, progress=progress))

    def detach(self, timeout: float | None = None) -> None:
        """Let go of a kept-alive sandbox without ending it: this object can no longer run
        code, and another process may :meth:`connect` to ``self.id`` (until its idle limit
        or lifetime passes). Starts it first if it never started. Waits up to ``timeout``
        seconds (default: no limit) for a running call."""
        attach.detach(self, timeout)

    adetach = async_twin(detach)

    def set_timeout(
        self, keep_alive: str | float | None = None, lifetime: str | float | None = None
    ) -> dict[str, Any]:
        """Change a kept-alive sandbox's limits: ``keep_alive`` replaces its idle limit,
        ``lifetime`` lets it live that long from now at most (durations such as ``"30m"``;
        on Kubernetes no longer than its pod's deadline allows, see docs/architecture.md).
        Returns its limits as the sandbox now has them (seconds, None where unknown:
        ``idle_limit``, ``lifetime``, ``age``, ``idle``, ``expires_in``)."""
        return attach.set_timeout(self, keep_alive, lifetime)

    aset_timeout = async_twin(set_timeout)

    def _adopt(self, found: attach.Attached) -> None:
        """Become the kept-alive sandbox this process has attached to (:meth:`connect`)."""
        self.id = found.id
        with self._lock:
            self._handle, self._http, self._kernel = found.handle, found.http, found.kernel
        self._attached = found.hold
        if found.lost:
            self.mark_state_lost(found.lost)
        closing.track(self)  # at this process's exit it is detached again

    def _let_go(self, timeout: float | None, why: SandboxClosed) -> None:
        """Detach (:meth:`detach`): once no call runs (waiting up to ``timeout`` s), refuse
        new work with ``why`` and let go of the container and the hold, leaving it running."""
        if self._handle is None and not self._closed:
            self.start()
        turn = self._enter()
        try:
            if not self._turns.wait(turn, timeout):
                self._turns.abandon(turn)
                raise SandboxClosed(
                    f"a call was still running after {timeout:g} s; the sandbox was not detached"
                )
            with self._lock:
                kernel, http = self._kernel, self._http
                self._handle = self._kernel = self._http = None
                self._closed = True
        finally:
            self._turns.leave(turn)
        self._turns.close(why)
        if kernel is not None:
            kernel.disconnect()
        if http is not None:
            http.close()
        self._release_hold()
        closing.untrack(self)

    def _release_hold(self) -> None:
        attached, self._attached = self._attached, None
        if attached is not None:
            attached.release()

    def _running(self, when: str) -> tuple[SandboxHandle, GatewayHTTP, KernelClient]:
        """The running container's handle, connection and kernel; SandboxClosed or
        SandboxDied, saying ``when``, if it is not running."""
        with self._lock:
            handle, http, kernel = self._handle, self._http, self._kernel
        if handle is None or http is None or kernel is None:
            raise (
                self._closed_error(when)
                if self._closed
                else SandboxDied("the sandbox stopped; the next run starts a new one")
            )
        return handle, http, kernel
