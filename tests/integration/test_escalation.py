"""How a run ends when it will not end by itself, on real sandboxes: an interrupt from
another thread, a frozen gateway, a dying kernel, each with a call queued behind it. The
run ends (within its bound: every wait has a watchdog, no timing is asserted) with the
right status, and the queued caller, who did not see it, is told when state was lost.
"""

from __future__ import annotations

import asyncio
import faulthandler
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enclave_tools import Sandbox
from enclave_tools.losses import STATE_LOST

TEST_BOUND = 120  # seconds: a test still running then has hung
HANG = 30.0  # seconds: the watchdog on any single wait that must not hang
FREEZE_GATEWAY = "import os, signal, time\nos.kill(os.getppid(), signal.SIGSTOP)\ntime.sleep(600)"


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    faulthandler.dump_traceback_later(TEST_BOUND, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def in_background(fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn(*args)`` on a thread; its result or error lands in the dict."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def joined(thread: threading.Thread, outcome: dict[str, Any], seconds: float = HANG) -> Any:
    """The value of a background call; the test fails if it hangs past ``seconds``."""
    thread.join(seconds)
    assert not thread.is_alive(), f"a call hung for {seconds:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def wait_until(predicate: Callable[[], bool], seconds: float = HANG, poll: float = 0.05) -> None:
    """Wait for an effect of another thread, looking every ``poll`` seconds; fail after
    ``seconds``."""
    done = threading.Event()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        done.wait(poll)
    pytest.fail(f"still not true after {seconds:g} s")


def running(sb: Sandbox) -> bool:
    return sb._turns.current is not None and sb._turns.current.sent


def queue_one(sb: Sandbox, code: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A call waiting behind the running one."""
    waiting = len(sb._turns._waiting)
    queued = in_background(sb.run, code)
    wait_until(lambda: len(sb._turns._waiting) == waiting + 1)
    return queued


def test_interrupt_from_another_thread_stops_the_cell_and_keeps_state(sandbox):
    sandbox.run("kept = 'yes'")
    cell = in_background(sandbox.run, "import time; time.sleep(600)", 86400)
    wait_until(lambda: running(sandbox))
    sandbox.interrupt()
    execution = joined(*cell)
    assert execution.status == "error" and execution.error.name == "KeyboardInterrupt"
    assert not execution.state_lost
    after = sandbox.run("kept")
    assert after.text == "'yes'" and not after.state_lost


def test_an_interrupt_sent_as_the_code_goes_out_still_stops_it(sandbox):
    """ipykernel ignores a SIGINT that lands before the code begins, or drops the request
    with no reply: an interrupt the moment the code is sent must still stop the cell."""
    sandbox.run("kept = 'yes'")
    for _ in range(5):
        cell = in_background(sandbox.run, "import time; time.sleep(600)", 86400)
        wait_until(lambda: running(sandbox), poll=0)  # no pause: the interrupt races the code
        sandbox.interrupt()
        execution = joined(*cell)
        assert execution.status == "error" and execution.error.name == "KeyboardInterrupt"
    assert sandbox.run("kept").text == "'yes'"


def test_an_interrupt_as_the_code_begins_never_reads_as_ok(sandbox):
    """The interrupt waits for the code's execute_input and goes at once; a long cell is
    still being prepared then (IPython transforms it before it runs), and ipykernel drops
    the request with no reply. The code did not run: the result must not say "ok"."""
    code = "x = 1\n" * 300_000 + "import time; time.sleep(600)"
    cell = in_background(sandbox.run, code, 86400)
    wait_until(lambda: running(sandbox) and sandbox._turns.current.call.code_began, poll=0)
    sandbox.interrupt()
    execution = joined(*cell)
    assert execution.status == "error" and execution.error.name == "KeyboardInterrupt", execution.text
    assert sandbox.run("1 + 1").text == "2"


def test_an_interrupt_while_ipython_prepares_the_cell_ends_it(sandbox):
    """IPython swallows a KeyboardInterrupt raised in the callbacks it runs before a cell's
    code; the image's kernel lets it end the cell. A slow callback holds that moment open."""
    sandbox.run(
        "import time\n"
        "def _slow(*_):\n"
        "    print('preparing', flush=True)\n"
        "    time.sleep(3)\n"
        "get_ipython().events.register('pre_run_cell', _slow)\n"
        "kept = 'yes'"
    )
    preparing = threading.Event()

    def seen(event: Any) -> None:
        if "preparing" in event.text:
            preparing.set()

    cell = in_background(lambda: sandbox.run("time.sleep(600)", 86400, on_output=seen))
    assert preparing.wait(HANG)
    sandbox.interrupt()  # lands in the callback's sleep
    execution = joined(*cell)
    assert execution.status == "error" and execution.error.name == "KeyboardInterrupt", execution.text
    sandbox.run("get_ipython().events.unregister('pre_run_cell', _slow)")
    assert sandbox.run("kept").text == "'yes'"


def test_interrupt_ignored_by_the_cell_escalates_at_the_deadline_and_tells_the_queue(make_sandbox):
    sb = make_sandbox(interrupt_grace=1).start()
    sb.run("kept = 1")
    ignoring = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\ntime.sleep(600)"
    )
    ignored = threading.Event()

    def seen(event: Any) -> None:
        if "ignoring" in event.text:
            ignored.set()

    cell = in_background(lambda: sb.run(ignoring, 10, on_output=seen))
    assert ignored.wait(HANG)  # an interrupt before the cell ignores SIGINT would end it
    queued = queue_one(sb, "'kept' in dir()")
    sb.interrupt()  # ignored: the run goes on to its time limit
    execution = joined(*cell)
    assert execution.status == "timeout" and execution.state_lost
    assert "ignored the interrupt" in execution.text
    told = joined(*queued)
    assert told.text.startswith("False") and told.state_lost
    assert any("ignored the interrupt" in note and STATE_LOST in note for note in told.notes), told.notes


def test_a_frozen_gateway_is_removed_and_the_queued_caller_is_told(make_sandbox):
    sb = make_sandbox(interrupt_grace=1).start()
    sb.run("kept = 1")
    cell = in_background(sb.run, FREEZE_GATEWAY, 10)
    wait_until(lambda: running(sb))
    queued = queue_one(sb, "'kept' in dir()")
    execution = joined(*cell)
    assert execution.status == "timeout" and execution.state_lost
    assert "did not answer" in execution.text
    told = joined(*queued, seconds=HANG * 2)  # a new sandbox starts for it
    assert told.text.startswith("False") and told.state_lost
    assert any("did not answer" in note and STATE_LOST in note for note in told.notes), told.notes
    again = sb.run("1 + 1")
    assert again.text == "2" and not again.state_lost  # told once, not forever


async def test_a_cancelled_run_on_a_frozen_gateway_tells_the_next_caller(make_sandbox):
    sb = make_sandbox(interrupt_grace=1)
    await sb.astart()
    await sb.arun("kept = 1")
    task = asyncio.create_task(sb.arun(FREEZE_GATEWAY, timeout=86400))
    while not running(sb):
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)
    after = await asyncio.wait_for(sb.arun("'kept' in dir()"), HANG * 2)
    assert after.text.startswith("False") and after.state_lost
    assert any("did not answer" in note for note in after.notes), after.notes


def test_a_kernel_that_exits_tells_the_queued_caller(sandbox):
    sandbox.run("kept = 1")
    dies_at_interrupt = (
        "import os, time\ntry:\n    print('waiting', flush=True)\n    time.sleep(600)\n"
        "except KeyboardInterrupt:\n    os._exit(1)"
    )
    waiting = threading.Event()  # inside the try: an interrupt sooner would not end the kernel
    cell = in_background(lambda: sandbox.run(dies_at_interrupt, 86400, on_output=lambda _: waiting.set()))
    assert waiting.wait(HANG)
    queued = queue_one(sandbox, "'kept' in dir()")
    sandbox.interrupt()
    execution = joined(*cell)
    assert execution.status == "kernel_died" and execution.state_lost
    told = joined(*queued)
    assert told.text.startswith("False") and told.state_lost
    assert any("died" in note and STATE_LOST in note for note in told.notes), told.notes
