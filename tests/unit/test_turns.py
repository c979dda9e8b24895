"""The turn queue, the workers and the loss log, without Docker."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from enclave_tools.errors import SandboxClosed
from enclave_tools.execution import Execution
from enclave_tools.losses import LossLog
from enclave_tools.turns import Turn, TurnQueue, Workers, run_job

WATCHDOG = 10.0  # seconds: a hang fails the test instead of stalling the run


def _join(thread: threading.Thread) -> None:
    thread.join(WATCHDOG)
    assert not thread.is_alive(), "the thread hung"


# -- the queue ------------------------------------------------------------------------


def test_sync_waiters_take_their_turns_in_order():
    turns = TurnQueue()
    first = Turn()
    turns.enter(first)
    assert first.current
    order: list[int] = []
    queued = [Turn() for _ in range(5)]

    def call(i: int, turn: Turn) -> None:
        turns.wait(turn)
        order.append(i)
        turns.leave(turn)

    threads = []
    for i, turn in enumerate(queued):
        turns.enter(turn)  # queued in this order, whatever order the threads wake in
        threads.append(threading.Thread(target=call, args=(i, turn)))
    for thread in reversed(threads):
        thread.start()
    turns.leave(first)
    for thread in threads:
        _join(thread)
    assert order == [0, 1, 2, 3, 4]
    assert not turns.busy


def test_a_sync_wait_times_out_without_losing_its_place():
    turns = TurnQueue()
    first, second = Turn(), Turn()
    turns.enter(first)
    turns.enter(second)
    assert turns.wait(second, timeout=0.01) is False
    turns.leave(first)
    assert turns.wait(second, timeout=WATCHDOG) is True and second.current


async def test_two_hundred_async_waiters_hold_no_thread():
    """With a 4-thread executor, 200 calls queued on a busy sandbox would deadlock if each
    held a thread while waiting; another sandbox's call must also go through at once."""
    executor = ThreadPoolExecutor(max_workers=4)
    busy, other = TurnQueue(), TurnQueue()
    release = threading.Event()
    done: list[int] = []

    async def call(turns: TurnQueue, i: int, work) -> None:
        turn = Turn()
        turns.enter(turn)
        await turns.wait_async(turn)

        def job() -> None:
            try:
                work()
                done.append(i)
            finally:
                turns.leave(turn)

        await run_job(executor.submit, job)

    blocker = asyncio.create_task(call(busy, -1, lambda: release.wait(WATCHDOG)))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(call(busy, i, lambda: None)) for i in range(200)]
    await asyncio.wait_for(call(other, 1000, lambda: None), WATCHDOG)  # not stalled
    assert done == [1000]
    release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *waiters), WATCHDOG)
    assert done[1:] == [-1, *range(200)]  # first come, first served
    executor.shutdown()


async def test_cancelling_an_async_waiter_removes_it():
    turns = TurnQueue()
    first, dropped, last = Turn(), Turn(), Turn()
    turns.enter(first)
    turns.enter(dropped)
    turns.enter(last)
    waiting = asyncio.create_task(turns.wait_async(dropped))
    after = asyncio.create_task(turns.wait_async(last))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    turns.leave(first)
    await asyncio.wait_for(after, WATCHDOG)
    assert last.current and not dropped.current


async def test_a_waiter_cancelled_just_as_its_turn_came_hands_it_on():
    turns = TurnQueue()
    first, unlucky, last = Turn(), Turn(), Turn()
    turns.enter(first)
    turns.enter(unlucky)
    turns.enter(last)
    waiting = asyncio.create_task(turns.wait_async(unlucky))
    after = asyncio.create_task(turns.wait_async(last))
    await asyncio.sleep(0)
    turns.leave(first)  # the turn is unlucky's, but its task has not resumed yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(after, WATCHDOG)
    assert last.current


async def test_closing_fails_every_waiter_at_once_and_refuses_new_turns():
    turns = TurnQueue()
    running, sync_waiter, async_waiter = Turn(), Turn(), Turn()
    turns.enter(running)
    turns.enter(sync_waiter)
    turns.enter(async_waiter)
    errors: list[BaseException] = []

    def wait_sync() -> None:
        try:
            turns.wait(sync_waiter)
        except SandboxClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait_sync)
    thread.start()
    task = asyncio.create_task(turns.wait_async(async_waiter))
    await asyncio.sleep(0)
    turns.close(SandboxClosed("closed"))
    with pytest.raises(SandboxClosed):
        await asyncio.wait_for(task, WATCHDOG)
    _join(thread)
    assert len(errors) == 1
    with pytest.raises(SandboxClosed):
        turns.enter(Turn())
    assert running.current  # the running turn ends on its own
    assert not turns.wait_idle(0.01)
    turns.leave(running)
    assert turns.wait_idle(0.01)


def test_a_waiter_whose_event_loop_closed_is_skipped():
    turns = TurnQueue()
    first, orphan, last = Turn(), Turn(), Turn()
    turns.enter(first)
    turns.enter(orphan)
    turns.enter(last)
    loop = asyncio.new_event_loop()
    task = loop.create_task(turns.wait_async(orphan))
    loop.run_until_complete(asyncio.sleep(0))  # the task now awaits its turn
    loop.close()  # as asyncio.run does at the end, leaving the task pending
    del task
    turns.leave(first)
    assert last.current


def test_try_enter_only_takes_a_free_queue():
    turns = TurnQueue()
    first = Turn()
    turns.enter(first)
    assert not turns.try_enter(Turn())
    turns.leave(first)
    probe = Turn()
    assert turns.try_enter(probe) and probe.current


# -- workers and jobs -----------------------------------------------------------------


def test_workers_run_jobs_on_daemon_threads_and_reuse_idle_ones():
    workers = Workers("test-workers", idle_exit=WATCHDOG)
    seen: list[threading.Thread] = []
    for _ in range(5):
        done = threading.Event()

        def job(done: threading.Event = done) -> None:
            seen.append(threading.current_thread())
            done.set()

        workers.submit(job)
        assert done.wait(WATCHDOG)
    assert all(thread.daemon for thread in seen)
    assert len({id(thread) for thread in seen}) < 5


def test_workers_run_blocked_jobs_side_by_side():
    workers = Workers("test-workers", idle_exit=WATCHDOG)
    gate = threading.Barrier(20, timeout=WATCHDOG)
    passed = threading.Semaphore(0)

    def job() -> None:
        gate.wait()
        passed.release()

    for _ in range(20):
        workers.submit(job)
    for _ in range(20):
        assert passed.acquire(timeout=WATCHDOG)


async def test_cancelling_run_job_does_not_stop_the_job():
    executor = ThreadPoolExecutor(max_workers=1)
    started, finish, finished = threading.Event(), threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        finish.wait(WATCHDOG)
        finished.set()

    task = asyncio.create_task(run_job(executor.submit, job))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, WATCHDOG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    finish.set()
    assert await asyncio.get_running_loop().run_in_executor(None, finished.wait, WATCHDOG)
    executor.shutdown()


async def test_run_job_returns_and_raises_what_the_job_does():
    executor = ThreadPoolExecutor(max_workers=1)
    assert await run_job(executor.submit, lambda x: x * 2, 21) == 42
    with pytest.raises(ZeroDivisionError):
        await run_job(executor.submit, lambda: 1 / 0)
    executor.shutdown()


# -- the loss log ---------------------------------------------------------------------


def _told(log: LossLog, turn: Turn, oldest_waiting: int | None = None) -> Execution:
    execution = Execution()
    log.tell(turn, execution, oldest_waiting)
    return execution


def test_every_waiting_caller_is_told_of_a_loss_it_did_not_see():
    log = LossLog()
    running, *queued = (Turn(log.generation) for _ in range(4))
    log.record("the kernel died", witness=running)
    assert not _told(log, running, oldest_waiting=0).state_lost  # its own result says so
    for turn in queued:
        execution = _told(log, turn, oldest_waiting=0)
        assert execution.state_lost and execution.notes == ["the kernel died"]
    later = Turn(log.generation)
    assert not _told(log, later).state_lost  # arrived after it was told
    assert len(log) == 0


def test_a_loss_told_only_to_a_cancelled_caller_is_told_to_the_next():
    log = LossLog()
    cancelled = Turn(log.generation)
    log.record("the kernel was restarted", witness=cancelled)
    log.cancel(cancelled)
    _told(log, cancelled)  # its result is discarded
    following = Turn(log.generation)  # arrives after the loss
    execution = _told(log, following)
    assert execution.state_lost and execution.notes == ["the kernel was restarted"]
    assert not _told(log, Turn(log.generation)).state_lost


def test_a_result_discarded_after_it_was_made_is_told_again():
    log = LossLog()
    log.record("the sandbox was retired")
    unlucky = Turn(log.generation)
    assert _told(log, unlucky).state_lost
    log.cancel(unlucky)  # its caller was cancelled before reading the result
    assert _told(log, Turn(log.generation)).state_lost


def test_the_log_forgets_what_nobody_can_still_need():
    log = LossLog()
    for i in range(100):
        turn = Turn(log.generation)
        log.record(f"loss {i}", witness=turn)
        _told(log, turn)
    assert len(log) == 0
