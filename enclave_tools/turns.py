"""Turns: one sandbox's calls, first come first served, waiting without holding a thread.

Each call (a run, a start, a restart) takes a :class:`Turn` in its sandbox's
:class:`TurnQueue` and waits until the turn is its own: a sync caller waits on an event in
its own thread, an async caller awaits a future that the queue resolves from whichever
thread hands the turn on. Only the call whose turn it is does any work, so a thousand calls
queued on one sandbox hold no thread and stall no other sandbox.

:data:`WORKERS`, the one pool of daemon threads (the interpreter's exit never waits for a
cell), runs the async calls' blocking work, and :func:`run_job` bridges one such job back
to the event loop without ever cancelling it: a job that owns a turn always runs, and
always hands the turn on. :func:`off_loop` and :func:`async_twin` are how every async
method of the library is made from its sync one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from enclave_tools.protocol import ExecuteCall

__all__ = ["WORKERS", "Turn", "TurnQueue", "Workers", "async_twin", "off_loop", "run_job"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")

log = logging.getLogger(__name__)

_WAITING, _CURRENT, _OVER = "waiting", "current", "over"


class Turn:
    """One call's place in a sandbox's queue, and what the sandbox knows of that call."""

    def __init__(self, seen: int = 0) -> None:
        self.seen = seen
        """The sandbox's loss generation when the call arrived (see ``LossLog``)."""
        self.cancelled = False
        """Set when the caller gave up: code not yet sent is never sent."""
        self.call: ExecuteCall | None = None
        """The kernel call, once the code has gone to the kernel."""
        self.witnessed: list[Any] = []
        """State losses that happened during this call and that its own result tells."""
        self.carried: list[Any] = []
        """State losses this call's result told (to tell again if that result is discarded)."""
        self._state = _WAITING
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        self._future: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sent(self) -> bool:
        """Whether the call's code has gone to the kernel."""
        return self.call is not None

    @property
    def current(self) -> bool:
        """Whether this turn holds its sandbox now."""
        return self._state == _CURRENT


class TurnQueue:
    """A FIFO of turns for one sandbox: at most one is current at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting: deque[Turn] = deque()
        self._current: Turn | None = None
        self._closed: BaseException | None = None

    @property
    def current(self) -> Turn | None:
        """The turn that holds the sandbox now, if any."""
        return self._current

    @property
    def busy(self) -> bool:
        """Whether a turn is current or waiting."""
        return self._current is not None or bool(self._waiting)

    def oldest_seen(self) -> int | None:
        """The smallest ``seen`` among the turns current or waiting (None if there are none)."""
        with self._lock:
            turns = [*self._waiting, *([self._current] if self._current else [])]
            return min((turn.seen for turn in turns), default=None)

    def enter(self, turn: Turn) -> None:
        """Queue ``turn`` (current at once if the sandbox is free); raises the queue's
        closing error once it is closed."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
            if self._current is None:
                self._current, turn._state = turn, _CURRENT
            else:
                self._waiting.append(turn)

    def try_enter(self, turn: Turn) -> bool:
        """Make ``turn`` current only if nothing is current or waiting; return whether it is."""
        with self._lock:
            if self._closed is not None or self.busy:
                return False
            self._current, turn._state = turn, _CURRENT
            return True

    def wait(self, turn: Turn, timeout: float | None = None) -> bool:
        """Block the calling thread until ``turn`` is current (True) or ``timeout`` passes
        (False, the turn stays queued). Raises the closing error if the queue closed first;
        an exception in the wait (KeyboardInterrupt) gives the turn up."""
        with self._lock:
            if turn._state == _WAITING and turn._error is None:
                turn._event = turn._event or threading.Event()
            event = turn._event
        try:
            if event is not None and not event.wait(timeout):
                return False
        except BaseException:
            self.abandon(turn)
            raise
        if turn._error is not None:
            raise turn._error
        return True

    async def wait_async(self, turn: Turn) -> None:
        """Await until ``turn`` is current, holding no thread. Cancelling the await gives
        the turn up (a turn already current is handed on)."""
        with self._lock:
            if turn._state == _WAITING and turn._error is None:
                turn._loop = asyncio.get_running_loop()
                turn._future = turn._loop.create_future()
            future = turn._future
        try:
            if future is not None:
                await future
        except BaseException:
            self.abandon(turn)
            raise
        if turn._error is not None:
            raise turn._error

    def abandon(self, turn: Turn) -> None:
        """Give ``turn`` up: drop it if it waits, hand the sandbox on if it is current."""
        with self._lock:
            if turn._state == _WAITING:
                try:
                    self._waiting.remove(turn)
                except ValueError:
                    pass
                turn._state = _OVER
                return
        if turn._state == _CURRENT:
            self.leave(turn)

    def leave(self, turn: Turn) -> None:
        """End the current ``turn`` and make the next waiting one current."""
        with self._lock:
            if self._current is not turn:
                return
            turn._state = _OVER
            self._current = None
            while self._waiting and self._current is None:
                following = self._waiting.popleft()
                self._current, following._state = following, _CURRENT
                if not _wake(following):  # its event loop is gone: nobody waits for it
                    following._state = _OVER
                    self._current = None
            if self._current is None:
                self._idle.notify_all()

    def close(self, error: BaseException) -> None:
        """Refuse new turns with ``error`` and fail every waiting one with it at once;
        the current turn runs on until it leaves."""
        with self._lock:
            self._closed = error
            waiting, self._waiting = list(self._waiting), deque()
            for turn in waiting:
                turn._state, turn._error = _OVER, error
                _wake(turn)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no turn to be current; return whether none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self._current is None, timeout)


def _wake(turn: Turn) -> bool:
    """Tell ``turn``'s waiter that its wait is over; False if its event loop is closed."""
    if turn._event is not None:
        turn._event.set()
    if turn._future is not None and turn._loop is not None:
        future = turn._future
        try:
            turn._loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:
            return False
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Workers:
    """Runs jobs on daemon threads: an idle one if there is one, else a new one. Threads
    idle for ``idle_exit`` seconds end. The number of threads is the number of jobs
    running at once, which for sandbox calls is at most one per sandbox."""

    def __init__(self, name: str = "enclave-run", idle_exit: float = 30.0) -> None:
        self._name = name
        self._idle_exit = idle_exit
        self._jobs: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, minus jobs not yet taken

    def submit(self, job: Callable[[], Any]) -> None:
        """Run ``job()`` on a worker thread; its exceptions are the job's own business."""
        with self._lock:
            self._jobs.put(job)
            if self._idle > 0:
                self._idle -= 1
                return
        threading.Thread(target=self._serve, name=self._name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_exit)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # more threads wait than there are jobs: leave
                        self._idle -= 1
                        return
                continue
            try:
                job()
            except BaseException:
                log.debug("a job raised", exc_info=True)
            with self._lock:
                self._idle += 1


async def run_job(submit: Callable[[Callable[[], Any]], Any], fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` through ``submit`` and await its outcome. Cancelling the await
    does not stop the job, which runs to its end (it owns a turn it must hand on)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def job() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the event loop is closed: nobody awaits this any more
            pass

    submit(job)
    return await future


WORKERS = Workers("enclave-run")
"""The library's one pool of worker threads. A job never waits behind another (a new
thread starts when none is idle), so a close or an interrupt is never held up by a run."""


async def off_loop(fn: Callable[..., _R], *args: Any) -> _R:
    """Run ``fn(*args)`` on a :data:`WORKERS` thread and await its outcome, without blocking
    the event loop. Cancelling the await does not stop ``fn`` (see :func:`run_job`)."""
    result: _R = await run_job(WORKERS.submit, fn, *args)
    return result


def async_twin(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], Awaitable[_R]]:
    """The async twin of a blocking method: the same call, run by :func:`off_loop`.

    In a class body: ``aread_file = async_twin(read_file)``. For a method that waits for a
    sandbox's turn, wait with :meth:`TurnQueue.wait_async` instead (it holds no thread).
    """

    @functools.wraps(method)
    async def twin(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = getattr(self, method.__name__)  # a subclass's override, if it has one
        return await off_loop(functools.partial(bound, *args, **kwargs))

    twin.__name__ = f"a{method.__name__}"
    twin.__qualname__ = f"{method.__qualname__.rpartition('.')[0]}.a{method.__name__}".lstrip(".")
    twin.__doc__ = (
        f"Async :meth:`{method.__name__}`: the same call on a worker thread, so the event loop never blocks."
    )
    return twin
