"""How a sandbox stops a run that timed out or was cancelled, against a kernel client whose
wire is faked (the boundary; KernelClient.run and the escalation are the real code): a cell
that has finished is never called a runaway. Then each Outcome as the Execution it makes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from enclave_tools.backends.base import Backend, ContainerState
from enclave_tools.errors import GatewayMisbehaved, GatewayUnreachable
from enclave_tools.escalation import Outcome, run_cell
from enclave_tools.execution import Execution
from enclave_tools.kernel import KernelClient
from enclave_tools.losses import STATE_LOST
from enclave_tools.protocol import ExecuteCall
from enclave_tools.sandbox import Sandbox
from enclave_tools.turns import Turn


class FakeKernel(KernelClient):
    """A kernel client whose calls end as the test says: ``idle_on`` is when idle comes
    (never a reply): "never", "start" (at once) or "interrupt". With ``refuse_interrupt``
    the gateway does not answer the interrupt."""

    def __init__(self, idle_on: str, refuse_interrupt: bool = False) -> None:
        super().__init__(http=None)  # type: ignore[arg-type]  # nothing goes on the wire
        self.connected = True
        self.idle_on = idle_on
        self.refuse_interrupt = refuse_interrupt
        self.interrupts = 0
        self.restarts = 0
        self.call: ExecuteCall | None = None
        self._event = threading.Event()

    def execute(self, code: str, **limits: Any) -> ExecuteCall:
        limits.pop("listener", None)
        limits.pop("caller", None)
        self.call = ExecuteCall("m1", **limits)
        self.call.code_began = True  # its execute_input came
        self.call.began.set()
        if self.idle_on == "start":
            self._idle()
        return self.call

    def _idle(self) -> None:
        assert self.call is not None
        self.call.idle, self.call.idle_at = True, time.monotonic()

    def wait(self, call: ExecuteCall, timeout: float | None) -> bool:
        self._event.wait(timeout)
        return call.done  # no reply ever comes: never done

    def interrupt(self, timeout: float = 10.0) -> None:
        self.interrupts += 1
        if self.refuse_interrupt:
            raise GatewayUnreachable("the gateway did not answer")
        if self.idle_on == "interrupt":
            self._idle()

    def restart(self, timeout: float = 30.0) -> None:
        self.restarts += 1


def _sandbox(kernel: FakeKernel) -> Sandbox:
    sb = Sandbox(interrupt_grace=0.3)
    sb._kernel = kernel  # type: ignore[assignment]
    return sb


def test_a_cell_that_went_idle_without_a_reply_is_finished_not_a_runaway():
    kernel = FakeKernel(idle_on="start")
    execution = run_cell(_sandbox(kernel), Turn(), "1", 0.3)
    assert kernel.interrupts == 0 and kernel.restarts == 0
    assert execution.status == "ok" and not execution.state_lost


def test_a_cell_that_stops_at_the_interrupt_without_a_reply_keeps_the_kernel():
    kernel = FakeKernel(idle_on="interrupt")
    execution = run_cell(_sandbox(kernel), Turn(), "while True: pass", 0.3)
    assert kernel.interrupts == 1 and kernel.restarts == 0
    assert execution.status == "timeout" and not execution.state_lost
    assert "ignored" not in execution.text


def test_a_cell_that_ignores_the_interrupt_is_restarted_and_says_so():
    kernel = FakeKernel(idle_on="never")
    sb = _sandbox(kernel)
    turn = Turn()
    execution = run_cell(sb, turn, "while True: pass", 0.3)
    assert kernel.restarts == 1
    assert execution.status == "timeout" and execution.state_lost
    assert "ignored the interrupt" in execution.text
    assert turn.witnessed  # the loss is told to whoever did not see this result


def test_cancelling_a_running_call_interrupts_it_at_once():
    kernel = FakeKernel(idle_on="interrupt")
    sb = _sandbox(kernel)
    turn = Turn()
    threading.Timer(0.05, sb._losses.cancel, args=(turn,)).start()
    execution = run_cell(sb, turn, "while True: pass", 30)  # ends at the cancel, not at 30 s
    assert kernel.interrupts == 1 and kernel.restarts == 0
    assert execution.status == "error" and execution.error.name == "Cancelled"


class WatchedEvent(threading.Event):
    """An event that says when someone waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_on = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited_on.set()
        return super().wait(timeout)


def _unbegun_call() -> ExecuteCall:
    call = ExecuteCall("m1", capture_limit=100, output_limit=100)
    call.began = WatchedEvent()
    return call


def _fed(call: ExecuteCall, kind: str, content: dict[str, Any]) -> None:
    call.feed({"header": {"msg_type": kind}, "parent_header": {"msg_id": "m1"}, "content": content})


def test_an_interrupt_waits_until_the_code_began():
    """ipykernel ignores a SIGINT that lands before the code begins: the interrupt waits
    for the kernel's execute_input, then goes."""
    kernel = FakeKernel(idle_on="never")
    call = _unbegun_call()
    sender = threading.Thread(target=kernel.interrupt_call, args=(call, 30.0))
    sender.start()
    assert call.began.waited_on.wait(30)  # type: ignore[attr-defined]
    assert kernel.interrupts == 0
    _fed(call, "execute_input", {"code": "x", "execution_count": 1})
    sender.join(30)
    assert not sender.is_alive() and kernel.interrupts == 2  # this code never stops: once more


def test_an_interrupt_goes_anyway_when_the_code_never_begins():
    kernel = FakeKernel(idle_on="never")
    kernel.interrupt_call(_unbegun_call(), begin_wait=0)
    assert kernel.interrupts == 2  # and once more: the code did not stop


def test_a_call_already_over_is_not_interrupted():
    """The signal would hit whatever runs next."""
    kernel = FakeKernel(idle_on="never")
    call = _unbegun_call()
    _fed(call, "execute_input", {"code": "x", "execution_count": 1})
    _fed(call, "status", {"execution_state": "idle"})
    kernel.interrupt_call(call, begin_wait=30)
    assert kernel.interrupts == 0


def test_an_interrupted_call_with_no_reply_after_its_code_began_is_not_ok():
    """An interrupt that lands after execute_input but before the code runs (IPython is
    still preparing the cell) makes ipykernel drop the request with no reply: the code may
    not have run, so the result is the interrupt, never "ok"."""
    kernel = FakeKernel(idle_on="never")
    call = _unbegun_call()
    _fed(call, "execute_input", {"code": "x", "execution_count": 1})
    kernel.interrupt_call(call, begin_wait=30)
    _fed(call, "status", {"execution_state": "idle"})
    execution = call.execution()
    assert kernel.interrupts == 2
    assert execution.status == "error" and execution.error.name == "KeyboardInterrupt"


def test_an_interrupt_that_stops_the_code_goes_once_and_a_lost_one_once_more():
    """Nothing says a SIGINT arrived, and ipykernel and IPython lose one in a few windows:
    code still running a second later is interrupted once more (a second Ctrl-C), never
    a third time; code that stopped is not interrupted again."""
    stopping = FakeKernel(idle_on="interrupt")
    call = ExecuteCall("m1", capture_limit=100, output_limit=100)
    stopping.call = call
    _fed(call, "execute_input", {"code": "x", "execution_count": 1})
    stopping.interrupt_call(call, begin_wait=30)
    assert stopping.interrupts == 1
    lost = FakeKernel(idle_on="never")
    call = _unbegun_call()
    _fed(call, "execute_input", {"code": "x", "execution_count": 1})
    lost.interrupt_call(call, begin_wait=30)
    assert lost.interrupts == 2


class UnbegunKernel(FakeKernel):
    """Its calls never say that their code began (no execute_input)."""

    def __init__(self, idle_on: str) -> None:
        super().__init__(idle_on)
        self.sent = threading.Event()

    def execute(self, code: str, **limits: Any) -> ExecuteCall:
        self.call = _unbegun_call()
        self.sent.set()
        return self.call


def test_an_interrupt_waiting_on_a_call_that_was_let_go_of_sends_nothing():
    """Sandbox.interrupt waits for the running call's code to begin. If the run lets go of
    the call first (it ignored the run's own interrupt; a restart and the next cell come
    next), the waiting interrupt must not go: it would hit the next cell."""
    kernel = UnbegunKernel(idle_on="never")
    turn = Turn()
    runner = threading.Thread(
        target=kernel.run,
        args=("x", 86400, turn),
        kwargs={"interrupt_grace": 0.1, "capture_limit": 100, "output_limit": 100},
    )
    runner.start()
    assert kernel.sent.wait(30)
    call = turn.call
    assert call is not None
    other = threading.Thread(target=kernel.interrupt_call, args=(call, 20.0))  # Sandbox.interrupt
    other.start()
    assert call.began.waited_on.wait(30)  # type: ignore[attr-defined]
    turn.cancelled = True  # the run interrupts (twice: nothing stops), then lets go of the call
    runner.join(30)
    assert not runner.is_alive()
    sent_by_the_run = kernel.interrupts
    other.join(30)
    assert not other.is_alive() and kernel.interrupts == sent_by_the_run


class SendingKernel(KernelClient):
    """A kernel client whose websocket only records what the caller knew at each send."""

    def __init__(self, caller: Turn) -> None:
        super().__init__(http=None)  # type: ignore[arg-type]
        self.connected = True
        self.known_at_send: list[ExecuteCall | None] = []
        self.interrupts = 0
        kernel = self

        class Socket:
            def send(self, data: bytes, timeout: float) -> None:
                kernel.known_at_send.append(caller.call)
                caller.cancelled = True  # end the run at once

        self._ws = Socket()  # type: ignore[assignment]

    def interrupt(self, timeout: float = 10.0) -> None:
        self.interrupts += 1


def test_the_caller_knows_its_call_before_the_code_goes_out():
    """Sandbox.interrupt finds the running call through the turn: were the call set only
    after the send, an interrupt in between would go at once, before the code began (and
    be ignored, or drop the code)."""
    turn = Turn()
    kernel = SendingKernel(turn)
    kernel.run("x", 86400, turn, interrupt_grace=0.01, capture_limit=100, output_limit=100)
    assert len(kernel.known_at_send) == 1 and kernel.known_at_send[0] is turn.call is not None


class RunningBackend(Backend):
    """A backend whose container always runs; it records removals."""

    name = "fake"

    def __init__(self) -> None:
        self.removed: list[object] = []

    def start(self, config: object, sandbox_id: str, progress: object = None) -> Any:
        raise AssertionError("not started in these tests")

    def state(self, handle: object) -> ContainerState:
        return ContainerState(running=True, exists=True)

    def wait_stopped(self, handle: object, timeout: float) -> ContainerState:
        return ContainerState(running=True, exists=True)

    def logs(self, handle: object, lines: int = 30) -> str:
        return ""

    def remove(self, handle: object) -> None:
        self.removed.append(handle)


def test_a_misbehaving_gateway_is_replaced_and_the_loss_told_on_the_next_result():
    backend = RunningBackend()
    sb = Sandbox(backend=backend)
    sb._handle = object()  # type: ignore[assignment]
    error = sb._died_or(GatewayMisbehaved("an answer of 2 GiB"), Turn())
    assert isinstance(error, GatewayMisbehaved) and "replaced" in str(error)
    assert backend.removed and not sb.started  # the next run starts a new container
    following = Turn()
    execution = Execution()
    sb._losses.tell(following, execution, None)
    assert execution.state_lost and "misbehaved" in execution.text


def test_a_gateway_that_does_not_answer_the_interrupt_is_removed_not_restarted():
    backend = RunningBackend()
    kernel = FakeKernel(idle_on="never", refuse_interrupt=True)
    sb = Sandbox(backend=backend, interrupt_grace=0.3)
    sb._handle, sb._kernel = object(), kernel  # type: ignore[assignment]
    turn = Turn()
    execution = run_cell(sb, turn, "while True: pass", 0.3)
    assert kernel.interrupts == 1 and kernel.restarts == 0
    assert backend.removed and not sb.started  # the next run starts a new container
    assert execution.status == "timeout" and execution.state_lost
    assert "the gateway did not answer the interrupt" in execution.text
    assert turn.witnessed


# -- Outcome -> Execution ---------------------------------------------------------------


def _msg(kind: str, **content: Any) -> dict[str, Any]:
    return {"header": {"msg_type": kind}, "parent_header": {"msg_id": "m1"}, "content": content}


def _call(*messages: dict[str, Any], capture_limit: int = 1000) -> ExecuteCall:
    call = ExecuteCall("m1", capture_limit, 8000)
    for msg in messages:
        call.feed(msg)
    return call


_INTERRUPTED = _msg("error", ename="KeyboardInterrupt", evalue="", traceback=["KeyboardInterrupt"])


def test_a_finished_call_keeps_its_own_status_error_and_notes():
    call = _call(
        _msg("stream", name="stdout", text="x" * 50),
        _msg("error", ename="ValueError", evalue="bad", traceback=["ValueError: bad"]),
        _msg("execute_reply", status="error", ename="ValueError", evalue="bad", traceback=[]),
        capture_limit=10,
    )
    execution = Outcome("finished", closed=True).execution(call)
    assert execution.status == "error" and execution.error and execution.error.name == "ValueError"
    assert not execution.state_lost
    assert execution.notes[0].startswith("40 characters of output were dropped")
    assert execution.notes[1] == "The sandbox was closed while this code ran."
    assert Outcome("finished").execution(_call()).notes == []


def test_an_interrupted_run_keeps_its_output_and_says_the_time_limit():
    call = _call(_msg("stream", name="stdout", text="partial\n"), _INTERRUPTED)
    outcome = Outcome("interrupted", timeout=2.5)
    execution = outcome.execution(call)
    assert execution.status == "timeout" and execution.stdout == "partial\n"
    assert execution.error and execution.error.name == "Timeout"  # not the KeyboardInterrupt
    assert (
        execution.error.value == "the code was interrupted because it ran longer than 2.5 s (the time limit)"
    )
    assert execution.notes == [
        "Stopped with an interrupt because it ran longer than 2.5 s (the time limit). Variables "
        "from earlier runs are kept; anything this run had not finished is not."
    ]
    assert not execution.state_lost and outcome.loss_note is None


@pytest.mark.parametrize(
    ("action", "ignored", "done"),
    [
        ("restarted", "the code ignored the interrupt", "the kernel was restarted"),
        ("replaced", "the code ignored the interrupt", "the sandbox was replaced with a new one"),
        (
            "removed",
            "the gateway did not answer the interrupt",
            "the sandbox, whose gateway did not answer, was removed; the next run starts a new one",
        ),
    ],
)
def test_an_escalated_run_says_what_was_done_and_that_state_is_lost(action, ignored, done):
    outcome = Outcome("escalated", cancelled=True, action=action)
    execution = outcome.execution(_call(_INTERRUPTED))
    assert execution.status == "error" and execution.state_lost
    assert execution.error and execution.error.name == "Cancelled"
    assert execution.error.value == f"it was cancelled and {ignored}"
    assert execution.notes == [f"Stopped because it was cancelled: {ignored}, so {done}. {STATE_LOST}."]
    assert outcome.loss_note == f"In an earlier run {ignored}, so {done}. {STATE_LOST}."


def test_a_kernel_death_says_its_cause():
    outcome = Outcome("kernel_died", memory="2g")
    execution = outcome.execution(_call(_msg("stream", name="stdout", text="before\n")))
    cause = " because it ran out of memory (the limit is 2g)"
    assert execution.status == "kernel_died" and execution.state_lost and execution.stdout == "before\n"
    assert execution.error and execution.error.value == f"the kernel died while running this code{cause}"
    assert execution.notes == [f"The Python kernel died{cause} and was restarted. {STATE_LOST}."]
    assert (
        outcome.loss_note
        == f"The Python kernel died{cause} during an earlier run and was restarted. {STATE_LOST}."
    )
    assert "out of memory" not in str(Outcome("kernel_died").loss_note)


def test_a_lost_connection_keeps_the_state():
    execution = Outcome("connection_lost").execution(_call())
    assert execution.status == "error" and not execution.state_lost
    assert execution.error and execution.error.name == "ConnectionLost"
    assert "The kernel and its variables are kept." in execution.notes[0]


def test_a_call_cancelled_before_it_was_sent_never_ran():
    execution = Outcome("cancelled").execution()
    assert execution.status == "error" and execution.notes == [] and not execution.state_lost
    assert execution.error and execution.error.value == "the call was cancelled and its code never ran"


def test_the_duration_ends_when_the_client_let_go_of_the_call():
    call = _call()
    call.released_at = call.started + 1.5
    assert Outcome("finished").execution(call).duration == 1.5
