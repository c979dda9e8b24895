"""Cancel, close and many conversations in one process, on real sandboxes (issue 18).

Each test is bounded twice: every wait that could hang has its own watchdog (a thread
join or ``asyncio.wait_for``: it bounds a hang, it claims nothing about speed), and the
whole test is killed with a traceback if it outlives ``TEST_BOUND`` seconds.

Before/after, as main behaved before this change and as it behaves now:

* cancelled arun whose cell ignores SIGINT | next caller: bare NameError, state_lost=False
  | the next caller's result says state was lost, and why
* container killed, one call running and three queued | only the first queued call was
  told | every queued call is told
* 70 calls queued on sandbox A | B's ``2+2`` waited for a free pool thread (11 s), and
  cancelling A's cell did nothing | B answers at once; cancelling interrupts A's cell
* first call cancelled while the sandbox starts | its whole cell ran after the start |
  its code is never sent
* event loop ends during a cold start | the process exit waited for the cell (20 s) |
  the process exits once the start is over and the container is removed
* close() with a cell in flight | waited for the cell (up to the run's timeout) | the cell
  is interrupted, then cut off; close returns within CLOSE_TIMEOUT
* close() while the gateway is frozen | hung until the run's timeout | bounded as above
* SandboxSessions.close() | closed one sandbox after another while others' queued calls
  started | every queued call fails at once with SandboxClosed; running ones end in parallel
* a session retired for idleness while its caller holds it | SandboxClosed "create a new
  Sandbox" | the call gets a fresh sandbox and "state was lost"
* SandboxDied text | the container's raw output (escapes, 100,000 characters) | cleaned,
  cut to output_limit
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enclave_tools import Sandbox, SandboxClosed, SandboxDied, SandboxSessions
from enclave_tools.sandbox import CLOSE_TIMEOUT

TEST_BOUND = 90  # seconds: a test still running then has hung
HANG = 30.0  # seconds: the watchdog on any single wait that must not hang
IGNORE_SIGINT = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    faulthandler.dump_traceback_later(TEST_BOUND, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def within(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run in a thread; the test fails if it has not returned in ``seconds``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} hung for {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


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


def wait_until(predicate: Callable[[], bool], seconds: float = HANG) -> None:
    """Poll ``predicate`` (an effect of another thread) until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds:g} s")
        time.sleep(0.05)


def start_all(*boxes: Sandbox) -> None:
    """Start sandboxes side by side (a start is the slow part of these tests)."""
    threads = [in_background(sb.start) for sb in boxes]
    for thread, outcome in threads:
        thread.join(HANG * 3)
        assert not thread.is_alive(), "a start hung"
        if "error" in outcome:
            raise outcome["error"]


async def wait_running(sb: Sandbox) -> None:
    """Wait until a call's code has gone to the kernel."""
    deadline = time.monotonic() + HANG
    while not (sb._turns.current and sb._turns.current.sent):
        assert time.monotonic() < deadline, "the call never started"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def pair(sandbox_config) -> Iterator[tuple[Sandbox, Sandbox]]:
    """Two started sandboxes shared by the tests that leave them usable (starts are slow);
    the last test to use them closes one."""
    a = Sandbox(sandbox_config, interrupt_grace=1)
    b = Sandbox(sandbox_config)
    try:
        start_all(a, b)
        yield a, b
    finally:
        a.close()
        b.close()


# -- state lost, told to everyone who did not see it ----------------------------------


async def test_cancelled_runaway_cell_tells_the_next_caller(pair):
    sb = pair[0]
    await sb.arun("kept = 1")
    ignoring = threading.Event()

    def seen(event: Any) -> None:
        if "ignoring" in event.text:
            ignoring.set()

    code = IGNORE_SIGINT + "print('ignoring', flush=True)\nwhile True: time.sleep(0.01)"
    task = asyncio.create_task(sb.arun(code, on_output=seen))
    # a cancel before the cell ignores SIGINT would simply interrupt it
    assert await asyncio.to_thread(ignoring.wait, HANG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await asyncio.wait_for(sb.arun("'kept' in dir()"), HANG)
    assert after.text.startswith("False")
    assert after.state_lost and "ignored the interrupt" in after.text
    again = await sb.arun("1 + 1")
    assert not again.state_lost  # told once per caller, not forever


def test_container_killed_tells_every_queued_caller_in_clean_words(pair, docker_engine):
    sandbox = pair[1]
    sandbox.run("kept = 1")
    flood = "'\\x1b[31m' + 'x' * 100_000 + '\\x1b]0;title\\x07'"
    sandbox.run(f"open('/proc/1/fd/1', 'w').write({flood} + '\\n')")  # the container's log
    running, running_out = in_background(sandbox.run, "import time; time.sleep(600)")
    wait_until(lambda: sandbox._turns.current is not None and sandbox._turns.current.sent)
    queued = [in_background(sandbox.run, "'kept' in dir()") for _ in range(3)]
    wait_until(lambda: len(sandbox._turns._waiting) == 3)
    docker_engine.containers.get(sandbox.container_id).kill()
    for thread, _ in [(running, running_out), *queued]:
        thread.join(HANG)
        assert not thread.is_alive(), "a call hung after the container was killed"
    died = running_out.get("error")
    assert isinstance(died, SandboxDied)
    assert "\x1b" not in str(died) and len(str(died)) < sandbox.config.output_limit + 1000
    for _, outcome in queued:
        execution = outcome["value"]
        assert execution.text.startswith("False")
        assert execution.state_lost and "died" in execution.text


# -- one conversation never stalls another --------------------------------------------


async def test_a_busy_sandbox_stalls_no_other_and_its_cancel_goes_through(pair):
    a, b = pair
    await a.arun("kept = 'yes'")
    running = asyncio.create_task(a.arun("import time; time.sleep(600)"))
    await wait_running(a)
    queued = [asyncio.create_task(a.arun("queued = True")) for _ in range(70)]
    await asyncio.sleep(0)
    other = await asyncio.wait_for(b.arun("2 + 2"), HANG)  # main: waited for the whole pool
    assert other.text == "4"
    for task in queued:
        task.cancel()
    running.cancel()  # main: the interrupt waited behind the 70 queued calls
    await asyncio.gather(running, *queued, return_exceptions=True)
    after = await asyncio.wait_for(a.arun("kept, 'queued' in dir()"), HANG)
    assert after.text == "('yes', False)" and not after.state_lost
    assert not a.busy and len(a._losses) == 0  # nothing kept of the cancelled calls


async def test_a_call_cancelled_while_the_sandbox_starts_never_runs(make_sandbox):
    sb = make_sandbox()
    release = threading.Event()
    start_container = sb._start_container

    def held_start() -> None:  # the start waits for the test: the cancel lands during it
        assert release.wait(HANG)
        start_container()

    sb._start_container = held_start  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(sb.arun("ran = True\nimport time; time.sleep(600)"))
        deadline = time.monotonic() + HANG
        while sb._turns.current is None:  # the start has its turn
            assert time.monotonic() < deadline, "the start never began"
            await asyncio.sleep(0.01)
        assert not sb.started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
    after = await asyncio.wait_for(sb.arun("'ran' in dir()"), HANG)  # main: after 600 s
    assert after.text == "False"


def test_process_exit_during_a_cold_start_is_prompt(sandbox_config, docker_engine):
    script = (
        "import asyncio, sys\n"
        "from enclave_tools import Sandbox, SandboxConfig\n"
        "config = SandboxConfig.model_validate_json(sys.argv[1])\n"
        "async def main():\n"
        "    asyncio.get_running_loop().create_task(Sandbox(config).arun('import time; time.sleep(600)'))\n"
        "    await asyncio.sleep(0.3)\n"
        "asyncio.run(main())\n"
    )
    label = "=".join(next(iter(sandbox_config.labels.items())))

    def ours() -> set[str]:
        return {c.id for c in docker_engine.containers.list(all=True, filters={"label": label})}

    before = ours()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script, sandbox_config.model_dump_json()],
        env=env,
        timeout=HANG + CLOSE_TIMEOUT,
        capture_output=True,
        text=True,
        check=False,
    )  # main: the exit waited for the ten-minute cell
    assert done.returncode == 0, done.stderr
    assert ours() <= before  # the exit removed the container it started


# -- close -------------------------------------------------------------------------------


def test_close_ends_a_running_cell_promptly_even_on_a_frozen_gateway(make_sandbox, docker_engine):
    """One cell ignores SIGINT; the other stops the gateway's process, which then answers
    nothing (no interrupt, no reply, no HTTP)."""
    cells = [
        IGNORE_SIGINT + "while True: time.sleep(0.01)",
        "import os, signal, time\nos.kill(os.getppid(), signal.SIGSTOP)\ntime.sleep(600)",
    ]
    boxes = [make_sandbox(), make_sandbox()]
    start_all(*boxes)
    for sb, cell in zip(boxes, cells, strict=True):
        container_id = sb.container_id
        running, outcome = in_background(sb.run, cell, 86400)
        wait_until(lambda sb=sb: sb._turns.current is not None and sb._turns.current.sent)
        queued, queued_outcome = in_background(sb.run, "1")
        wait_until(lambda sb=sb: len(sb._turns._waiting) == 1)
        within(CLOSE_TIMEOUT + HANG, sb.close)  # main: waited for the cell (up to a day)
        for thread in (running, queued):
            thread.join(HANG)
            assert not thread.is_alive()
        assert isinstance(queued_outcome.get("error"), SandboxClosed)
        error = outcome.get("error")
        assert isinstance(error, SandboxClosed) or "closed" in outcome["value"].text
        assert container_id not in {c.id for c in docker_engine.containers.list(all=True)}
        with pytest.raises(SandboxClosed):
            sb.run("1")


def test_sessions_close_refuses_work_everywhere_first(sandbox_config):
    sessions = SandboxSessions(factory=lambda: Sandbox(sandbox_config))
    try:
        a, b = sessions.get("a"), sessions.get("b")
        within(HANG * 2, lambda: [a.start(), b.start()])
        runs = [in_background(sb.run, "import time; time.sleep(600)", 86400) for sb in (a, b)]
        wait_until(lambda: all(sb._turns.current and sb._turns.current.sent for sb in (a, b)))
        queued = [in_background(sb.run, "1") for sb in (a, b) for _ in range(3)]
        wait_until(lambda: len(a._turns._waiting) == 3 and len(b._turns._waiting) == 3)
        within(CLOSE_TIMEOUT + HANG, sessions.close)
    finally:
        sessions.close()
    for thread, _ in runs + queued:
        thread.join(HANG)
        assert not thread.is_alive()
    assert all(isinstance(outcome.get("error"), SandboxClosed) for _, outcome in queued)
    assert not a.started and not b.started


def test_busy_sessions_are_kept_and_retired_ones_come_back_fresh(sandbox_config):
    sessions = SandboxSessions(idle_ttl=1.0, factory=lambda: Sandbox(sandbox_config))
    try:
        held = sessions.get("chat")
        held.run("x = 1")
        kept = within(HANG, held.run, "import time; time.sleep(2.5); x")  # busy past the ttl
        assert kept.text == "1" and not kept.state_lost
        wait_until(lambda: not held.started)  # then idle: retired by the worker
        execution = within(HANG, held.run, "'x' in dir()")  # main: SandboxClosed
        assert execution.text.startswith("False")
        assert execution.state_lost and "without use" in execution.text
        assert sessions.get("chat") is held
    finally:
        sessions.close()


async def test_aclose_ends_a_running_cell_promptly(pair):
    sb = pair[0]  # the last test of the shared pair: it closes it
    task = asyncio.create_task(sb.arun("import time; time.sleep(600)", timeout=86400))
    await wait_running(sb)
    await asyncio.wait_for(sb.aclose(), CLOSE_TIMEOUT + HANG)  # main: waited for the cell
    try:
        execution = await asyncio.wait_for(task, HANG)
        assert "closed" in execution.text
    except SandboxClosed:
        pass
    assert not sb.started
