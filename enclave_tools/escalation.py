"""Escalation: how one run ends, and what the sandbox does when it will not end.

:func:`run_cell` sends a cell with :meth:`KernelClient.run <enclave_tools.kernel.KernelClient.run>`
(which waits, interrupts a cell past its deadline or cancelled, and lets go of the call),
then settles how it ended, as an :class:`Outcome`:

- it finished (its reply and ``idle`` came, or ``idle`` alone: the cell is over);
- it stopped at the interrupt: the kernel and its variables are kept;
- it ignored the interrupt: the kernel is restarted, or the container replaced if that
  fails; a gateway that did not even answer the interrupt is removed (the next run starts
  a new one), never asked to restart;
- the kernel died: the cause is looked up (out of memory?), and the kernel recovered;
- the connection dropped: if the container lives, it is reopened.

Every step that loses state is recorded in the sandbox's :class:`~enclave_tools.losses.LossLog`,
so callers that did not see it are told. The :class:`~enclave_tools.execution.Execution` is
built once, from the call and its :class:`Outcome` (:meth:`Outcome.execution`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from enclave_tools.backends.base import Backend, SandboxHandle
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError, GatewayError, SandboxClosed, SandboxDied
from enclave_tools.execution import Execution, ExecutionError, Status
from enclave_tools.kernel import KernelClient, Run
from enclave_tools.live import LiveFeed
from enclave_tools.losses import STATE_LOST, LossLog
from enclave_tools.protocol import ExecuteCall, loads_bounded
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP
from enclave_tools.turns import Turn

__all__ = ["Host", "Outcome", "run_cell"]

log = logging.getLogger(__name__)

Ending = Literal["finished", "interrupted", "escalated", "kernel_died", "connection_lost", "cancelled"]
"""How a run ended: ``finished``; ``interrupted`` (stopped at the interrupt, the kernel
kept); ``escalated`` (it would not stop: see :data:`Action`); ``kernel_died``;
``connection_lost`` (the kernel kept); ``cancelled`` (its code never ran)."""

Action = Literal["restarted", "replaced", "removed"]
"""What was done to a run that would not stop: the kernel ``restarted``, the container
``replaced`` (the restart failed), or the container ``removed`` (its gateway did not answer
the interrupt)."""

_ACTIONS: dict[Action, str] = {
    "restarted": "the kernel was restarted",
    "replaced": "the sandbox was replaced with a new one",
    "removed": "the sandbox, whose gateway did not answer, was removed; the next run starts a new one",
}


@dataclass(frozen=True)
class Outcome:
    """How one run ended and what was done about it; says it as an :class:`Execution`
    (:meth:`execution`) and, when state was lost, as a note for other callers
    (:attr:`loss_note`)."""

    ending: Ending
    cancelled: bool = False
    """``interrupted``, ``escalated``: the caller cancelled (else the time limit passed)."""
    timeout: float = 0.0
    """``interrupted``, ``escalated``: the run's time limit in seconds."""
    action: Action = "restarted"
    """``escalated``: what was done."""
    memory: str | None = None
    """``kernel_died``: the memory limit, when the kernel ran out of memory."""
    closed: bool = False
    """``finished``: the sandbox was closed while the code ran."""

    @property
    def state_lost(self) -> bool:
        """Whether this run lost the kernel's state."""
        return self.ending in ("escalated", "kernel_died")

    @property
    def loss_note(self) -> str | None:
        """The note that tells callers who did not see this run that state was lost."""
        if self.ending == "escalated":
            return f"In an earlier run {self._ignored}, so {_ACTIONS[self.action]}. {STATE_LOST}."
        if self.ending == "kernel_died":
            return (
                f"The Python kernel died{self._cause} during an earlier run and was restarted. {STATE_LOST}."
            )
        return None

    def execution(self, call: ExecuteCall | None = None) -> Execution:
        """The run's :class:`Execution`: what ``call`` collected (none: the code never ran),
        with this ending's status, error and note."""
        status, error, note = self._told()
        notes = [note] if note else []
        if call is None:
            return Execution(status=status or "error", error=error, notes=notes, state_lost=self.state_lost)
        return call.execution(status=status, error=error, notes=notes, state_lost=self.state_lost)

    def _told(self) -> tuple[Status | None, ExecutionError | None, str | None]:
        """The status and error in place of the call's own (None: its own), and a note."""
        if self.ending == "finished":
            return None, None, "The sandbox was closed while this code ran." if self.closed else None
        if self.ending == "cancelled":
            return (
                "error",
                ExecutionError("Cancelled", "the call was cancelled and its code never ran", ""),
                None,
            )
        if self.ending == "kernel_died":
            return (
                "kernel_died",
                ExecutionError("KernelDied", f"the kernel died while running this code{self._cause}", ""),
                f"The Python kernel died{self._cause} and was restarted. {STATE_LOST}.",
            )
        if self.ending == "connection_lost":
            return (
                "error",
                ExecutionError("ConnectionLost", "the connection to the kernel dropped during this run", ""),
                "The connection to the kernel dropped during this run, so its output may be "
                "incomplete. The kernel and its variables are kept.",
            )
        status: Status = "error" if self.cancelled else "timeout"
        name = "Cancelled" if self.cancelled else "Timeout"
        if self.ending == "interrupted":
            return (
                status,
                ExecutionError(name, f"the code was interrupted because {self._why}", ""),
                f"Stopped with an interrupt because {self._why}. Variables from earlier runs are "
                "kept; anything this run had not finished is not.",
            )
        return (
            status,
            ExecutionError(name, f"{self._why} and {self._ignored}", ""),
            f"Stopped because {self._why}: {self._ignored}, so {_ACTIONS[self.action]}. {STATE_LOST}.",
        )

    @property
    def _why(self) -> str:
        return (
            "it was cancelled"
            if self.cancelled
            else f"it ran longer than {self.timeout:g} s (the time limit)"
        )

    @property
    def _ignored(self) -> str:
        if self.action == "removed":
            return "the gateway did not answer the interrupt"
        return "the code ignored the interrupt"

    @property
    def _cause(self) -> str:
        return "" if self.memory is None else f" because it ran out of memory (the limit is {self.memory})"


class Host(Protocol):
    """What escalation needs of its sandbox (a :class:`~enclave_tools.sandbox.Sandbox`)."""

    config: SandboxConfig
    _losses: LossLog
    _closed: bool
    _backend: Backend
    _handle: SandboxHandle | None
    _http: GatewayHTTP | None
    _oom_kills: int

    def _check_open(self) -> None: ...
    def _closed_error(self, when: str) -> SandboxClosed: ...
    def _live_kernel(self) -> KernelClient: ...
    def _died(self, why: str) -> SandboxDied: ...
    def _died_or(self, exc: BaseException, turn: Turn | None = None) -> EnclaveError: ...
    def _stop_container(self) -> None: ...
    def _replace_container(self) -> None: ...


def run_cell(host: Host, turn: Turn, code: str, timeout: float, feed: LiveFeed | None = None) -> Execution:
    """Run ``code`` in ``turn`` (which holds ``host``) within ``timeout`` seconds, deal with
    how it ended (see the module), and return its result. Raises the sandbox's errors when
    it closed or died meanwhile."""
    kernel = host._live_kernel()
    if not kernel.connected:
        _reconnect(host, turn)
    if turn.cancelled:
        return Outcome("cancelled").execution()
    run = kernel.run(
        code,
        timeout,
        turn,
        interrupt_grace=host.config.interrupt_grace,
        capture_limit=host.config.capture_limit,
        output_limit=host.config.output_limit,
        rich_limit=host.config.result_limit,
        listener=None if feed is None else feed.offer,  # live output
    )
    return settle(host, turn, kernel, run, timeout).execution(run.call)


def settle(host: Host, turn: Turn, kernel: KernelClient, run: Run, timeout: float) -> Outcome:
    """What ``run`` came to, once whatever it needed was done (a restart, a reconnect)."""
    if not run.overran or (run.stopped and run.call.ended):
        return _ended(host, turn, run.call)
    if run.stopped:
        return Outcome("interrupted", cancelled=run.cancelled, timeout=timeout)
    if host._closed:
        raise host._closed_error("while this code ran")
    action = _escalate(host, kernel) if run.answered else _drop_unresponsive(host)
    return _told_lost(
        host, turn, Outcome("escalated", cancelled=run.cancelled, timeout=timeout, action=action)
    )


def _ended(host: Host, turn: Turn, call: ExecuteCall) -> Outcome:
    """The outcome of a call that ended by itself: finished, or ended by the kernel's
    death or the connection's loss."""
    if call.ended is None:
        return Outcome("finished", closed=host._closed)
    if call.ended == "kernel_died":
        outcome = _told_lost(host, turn, Outcome("kernel_died", memory=_out_of_memory(host)))
        _recover_kernel(host, turn)
        return outcome
    _connection_lost(host, turn)
    return Outcome("connection_lost")


def _told_lost(host: Host, turn: Turn, outcome: Outcome) -> Outcome:
    """Record the loss ``outcome`` tells (``turn``'s own result tells it); return it."""
    if outcome.loss_note is not None:
        host._losses.record(outcome.loss_note, witness=turn)
    return outcome


def _escalate(host: Host, kernel: KernelClient) -> Action:
    """Restart the kernel, or replace the container if that fails; say which."""
    try:
        kernel.restart(timeout=host.config.startup_timeout)
        return "restarted"
    except CONNECT_ERRORS as exc:
        if host._closed:
            raise host._closed_error("while this code ran") from exc
        log.debug("restart failed (%s); replacing the container", exc)
        host._replace_container()
        return "replaced"


def _drop_unresponsive(host: Host) -> Action:
    """Remove a sandbox whose gateway does not answer (stopped, stuck or hostile); the
    next run starts a new one."""
    host._stop_container()
    return "removed"


def _out_of_memory(host: Host) -> str | None:
    """The memory limit if the kernel was OOM-killed since the last look, else None."""
    http = host._http
    try:
        if http is None:
            raise OSError("closed")
        status, data = http.request("GET", "/api/enclave/info", timeout=5)
        kills = int(loads_bounded(data).get("oom_kills") or 0) if status == 200 else 0
    except (
        GatewayError,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        ArithmeticError,
        RecursionError,
    ):
        kills = host._oom_kills
    if kills > host._oom_kills:
        host._oom_kills = kills
        return host.config.memory
    return None


def _recover_kernel(host: Host, turn: Turn) -> None:
    """After a kernel death: wait for the gateway's automatic restart, or start a new kernel."""
    kernel = host._live_kernel()
    startup = host.config.startup_timeout
    deadline = time.monotonic() + startup
    try:
        while time.monotonic() < deadline:
            host._check_open()
            model = kernel.model()
            if model is None or model.get("execution_state") == "dead":
                kernel.replace(timeout=startup)
                return
            if model.get("execution_state") in ("idle", "busy"):
                kernel.connect(timeout=startup)
                return
            time.sleep(0.05)
        kernel.replace(timeout=startup)
    except CONNECT_ERRORS as exc:
        raise host._died_or(exc, turn) from exc


def _connection_lost(host: Host, turn: Turn) -> None:
    """Reopen a dropped connection if the container lives; raise if it does not."""
    if host._closed:
        raise host._closed_error("while this code ran")
    handle = host._handle
    state = host._backend.state(handle) if handle else None
    if state is None or not state.running:
        raise host._died(state.describe() if state else "the container was removed")
    # The container lives: the socket dropped. Reconnect; the run's output may be partial.
    _reconnect(host, turn)


def _reconnect(host: Host, turn: Turn) -> None:
    try:
        host._live_kernel().connect(timeout=host.config.startup_timeout)
    except CONNECT_ERRORS as exc:
        raise host._died_or(exc, turn) from exc
