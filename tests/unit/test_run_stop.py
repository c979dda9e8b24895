"""How a sandbox stops a run that timed out or was cancelled, against a fake kernel client
(the boundary): a cell that has finished is never called a runaway."""

from __future__ import annotations

import threading
import time
from typing import Any

from enclave_tools.backends.base import Backend, ContainerState
from enclave_tools.errors import GatewayMisbehaved
from enclave_tools.execution import Execution
from enclave_tools.protocol import ExecuteCall
from enclave_tools.sandbox import Sandbox
from enclave_tools.turns import Turn


class FakeKernel:
    """A kernel client whose calls end as the test says: ``idle_on`` is when idle comes
    (never a reply): "never", "start" (at once) or "interrupt"."""

    connected = True

    def __init__(self, idle_on: str) -> None:
        self.idle_on = idle_on
        self.interrupts = 0
        self.restarts = 0
        self.call: ExecuteCall | None = None
        self._event = threading.Event()

    def execute(self, code: str, *, capture_limit: int, output_limit: int, rich_limit: int) -> ExecuteCall:
        self.call = ExecuteCall("m1", capture_limit, output_limit, rich_limit=rich_limit)
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
        if self.idle_on == "interrupt":
            self._idle()

    def restart(self, timeout: float = 30.0) -> None:
        self.restarts += 1

    def forget(self, call: ExecuteCall) -> None:
        pass


def _sandbox(kernel: FakeKernel) -> Sandbox:
    sb = Sandbox(interrupt_grace=0.3)
    sb._kernel = kernel  # type: ignore[assignment]
    return sb


def test_a_cell_that_went_idle_without_a_reply_is_finished_not_a_runaway():
    kernel = FakeKernel(idle_on="start")
    execution = _sandbox(kernel)._execute(Turn(), "1", 0.3)
    assert kernel.interrupts == 0 and kernel.restarts == 0
    assert execution.status == "ok" and not execution.state_lost


def test_a_cell_that_stops_at_the_interrupt_without_a_reply_keeps_the_kernel():
    kernel = FakeKernel(idle_on="interrupt")
    execution = _sandbox(kernel)._execute(Turn(), "while True: pass", 0.3)
    assert kernel.interrupts == 1 and kernel.restarts == 0
    assert execution.status == "timeout" and not execution.state_lost
    assert "ignored" not in execution.text


def test_a_cell_that_ignores_the_interrupt_is_restarted_and_says_so():
    kernel = FakeKernel(idle_on="never")
    sb = _sandbox(kernel)
    turn = Turn()
    execution = sb._execute(turn, "while True: pass", 0.3)
    assert kernel.restarts == 1
    assert execution.status == "timeout" and execution.state_lost
    assert "ignored the interrupt" in execution.text
    assert turn.witnessed  # the loss is told to whoever did not see this result


def test_cancelling_a_running_call_interrupts_it_at_once():
    kernel = FakeKernel(idle_on="interrupt")
    sb = _sandbox(kernel)
    turn = Turn()
    threading.Timer(0.05, sb._losses.cancel, args=(turn,)).start()
    execution = sb._execute(turn, "while True: pass", 30)  # ends at the cancel, not at 30 s
    assert kernel.interrupts == 1 and kernel.restarts == 0
    assert execution.status == "error" and execution.error.name == "Cancelled"


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
