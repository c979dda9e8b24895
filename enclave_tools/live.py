"""Live output: a run's outputs delivered as they arrive, on the caller's side.

The websocket reader thread only *offers* each output message to a :class:`LiveFeed`, a
queue bounded in bytes (:data:`LIVE_QUEUE_LIMIT`): past the bound a message is dropped
and counted, so a slow consumer never stalls the reader or the run. The consumer side
turns messages into :class:`OutputEvent` objects, cleaned for a model or a terminal, and
hands them to a callback (on a delivery thread of the run's own for :meth:`Sandbox.run`,
as a task on the caller's event loop for :meth:`Sandbox.arun`) or yields them from an
iterator (:class:`LiveStream`, :class:`AsyncLiveStream`). A callback that raises is logged
and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from enclave_tools.execution import (
    Execution,
    Result,
    bundle_size,
    clean_text,
    error_from_content,
    for_model,
)

__all__ = [
    "EVENT_TEXT_LIMIT",
    "LIVE_QUEUE_LIMIT",
    "AsyncLiveStream",
    "LiveFeed",
    "LiveStream",
    "OutputCallback",
    "OutputEvent",
    "arun_delivered",
    "deliver_async",
    "events_from_execution",
    "events_from_message",
    "run_delivered",
]

log = logging.getLogger(__name__)

LIVE_QUEUE_LIMIT = 16 * 2**20
"""Bytes of output messages waiting for the consumer; past it, messages are dropped."""

EVENT_TEXT_LIMIT = 100_000
"""The most characters of text one event carries (head and tail kept, the cut noted)."""

EventKind = Literal["stdout", "stderr", "result", "image", "error"]
_OUTPUT_MESSAGES = frozenset({"stream", "execute_result", "display_data", "update_display_data", "error"})
_IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


@dataclass(frozen=True)
class OutputEvent:
    """One output of a running cell, as it arrived.

    ``kind`` is ``stdout`` / ``stderr`` (``text`` is the new text), ``result`` (a value or
    display: ``text`` is its text form, ``data`` its mime bundle), ``image`` (a plot:
    ``text`` is a one-line summary, ``data`` the bundle, :attr:`png` the bytes) or
    ``error`` (``text`` is the traceback). ``text`` is cleaned (:func:`clean_text`) and
    at most :data:`EVENT_TEXT_LIMIT` characters.
    """

    kind: EventKind
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def png(self) -> bytes | None:
        """The PNG bytes of an ``image`` event, if it carries a PNG."""
        return Result(data=self.data).png if self.data else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for a UI or a framework's stream)."""
        return {"kind": self.kind, "text": self.text, "data": self.data}


OutputCallback = Callable[[OutputEvent], "None | Awaitable[None]"]
"""What ``on_output`` takes: a function of one :class:`OutputEvent` (for ``arun``, it may be
a coroutine function)."""


def events_from_message(msg: dict[str, Any]) -> list[OutputEvent]:
    """The events one Jupyter output message makes (none for other messages)."""
    kind = str(msg.get("header", {}).get("msg_type", ""))
    content = msg.get("content")
    if not isinstance(content, dict):
        return []
    if kind == "stream":
        name: EventKind = "stderr" if content.get("name") == "stderr" else "stdout"
        text = _text(content.get("text"))
        return [OutputEvent(name, text)] if text else []
    if kind in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data")
        if not isinstance(data, dict):
            return []
        result = Result(data=data, metadata=_dict(content.get("metadata")))
        if any(result.has(mime) for mime in _IMAGE_MIMES):
            return [OutputEvent("image", clean_text(result.summary()), data)]
        text = result.text if result.text is not None else result.summary()
        return [OutputEvent("result", _text(text), data)]
    if kind == "error":
        return [OutputEvent("error", _text(str(error_from_content(content))))]
    return []


def events_from_execution(execution: Execution) -> list[OutputEvent]:
    """The events a finished :class:`Execution` would have streamed, in order (for fakes,
    and for showing a recorded run as if live)."""
    events: list[OutputEvent] = []
    for kind, item in execution._transcript:
        if kind == "result" and isinstance(item, Result):
            message = {"header": {"msg_type": "display_data"}, "content": {"data": item.data}}
            events += events_from_message(message)
        elif kind in ("stdout", "stderr") and item:
            events.append(OutputEvent("stdout" if kind == "stdout" else "stderr", _text(item)))
    if execution.error is not None:
        events.append(OutputEvent("error", _text(str(execution.error))))
    return events


def _text(value: Any) -> str:
    return for_model(value if isinstance(value, str) else str(value or ""), EVENT_TEXT_LIMIT)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _message_size(msg: dict[str, Any]) -> int:
    content = msg.get("content")
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return len(content["text"]) + 64
    return bundle_size(content)


class LiveFeed:
    """The bounded queue between the websocket reader (:meth:`offer`) and a consumer
    (:meth:`take`): at most ``limit`` bytes wait; what would go past it is dropped and
    counted (:attr:`dropped`, :attr:`dropped_bytes`)."""

    def __init__(self, limit: int = LIVE_QUEUE_LIMIT) -> None:
        self.limit = limit
        self.dropped = 0
        self.dropped_bytes = 0
        self._items: deque[tuple[dict[str, Any], int]] = deque()
        self._pending = 0
        self._closed = False
        self._told_drops = False
        self._cond = threading.Condition()
        self._wakeup: Callable[[], object] | None = None

    def offer(self, msg: dict[str, Any]) -> None:
        """Queue an output message (called on the reader thread; never waits)."""
        if str(msg.get("header", {}).get("msg_type", "")) not in _OUTPUT_MESSAGES:
            return
        size = _message_size(msg)
        with self._cond:
            if self._closed:
                return
            if self._pending + size > self.limit:
                self.dropped += 1
                self.dropped_bytes += size
                return
            self._items.append((msg, size))
            self._pending += size
            self._cond.notify_all()
        self._wake()

    def close(self) -> None:
        """No more messages: the consumer ends once it has taken what is queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._wake()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def set_wakeup(self, wakeup: Callable[[], object] | None) -> None:
        """Call ``wakeup()`` (from any thread) whenever a message or the close arrives."""
        self._wakeup = wakeup
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            try:
                wakeup()
            except RuntimeError:  # the consumer's event loop is closed
                self._wakeup = None

    def take(self, timeout: float | None = None) -> tuple[list[OutputEvent], bool]:
        """The events queued now (waiting up to ``timeout`` s for one) and whether the feed
        is finished (closed and empty: nothing more will come)."""
        with self._cond:
            if not self._items and not self._closed and timeout != 0:
                self._cond.wait(timeout)
            batch = list(self._items)
            self._items.clear()
            self._pending = 0
            finished = self._closed
        events = [event for msg, _size in batch for event in events_from_message(msg)]
        if finished and self.dropped and not self._told_drops:
            self._told_drops = True
            events.append(OutputEvent("stderr", self.drop_note()))
        return events, finished

    def drop_note(self) -> str:
        """What was dropped, as the consumer is told at the end."""
        return (
            f"[{self.dropped:,} live outputs ({self.dropped_bytes / 2**20:,.1f} MB) were not "
            "delivered: the output came faster than it was consumed. The run's result "
            "keeps its own record.]\n"
        )


def _call(callback: OutputCallback, event: OutputEvent, errors: list[int]) -> Any:
    """``callback(event)``; an exception is logged (once at warning level), never raised."""
    try:
        return callback(event)
    except Exception:  # the caller's code must not break the run
        errors[0] += 1
        level = logging.WARNING if errors[0] == 1 else logging.DEBUG
        log.log(level, "the on_output callback raised; the run goes on", exc_info=True)
        return None


class ThreadDelivery:
    """Calls ``callback`` for each event of ``feed`` on a thread of its own (with the
    caller's context variables), so a slow callback never holds up the run."""

    def __init__(self, feed: LiveFeed, callback: OutputCallback, name: str = "enclave-live") -> None:
        self.feed = feed
        self.callback = callback
        self.errors = [0]
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            events, finished = self.feed.take(timeout=1.0)
            for event in events:
                _call(self.callback, event, self.errors)
            if finished:
                return

    def finish(self) -> None:
        """Close the feed and wait until every queued event was delivered."""
        self.feed.close()
        self._thread.join()


async def deliver_async(feed: LiveFeed, callback: OutputCallback) -> None:
    """Deliver ``feed``'s events to ``callback`` on the running event loop until the feed
    is finished; a coroutine callback is awaited, one event at a time, in order."""
    errors = [0]
    async for event in _events(feed):
        result = _call(callback, event, errors)
        if inspect.isawaitable(result):
            try:
                await result
            except Exception:  # as _call
                errors[0] += 1
                log.warning("the on_output callback raised; the run goes on", exc_info=True)


def run_delivered(
    run: Callable[[LiveFeed], Execution], callback: OutputCallback, name: str = "enclave-live"
) -> Execution:
    """``run(feed)``, each of its events given to ``callback`` on a delivery thread
    (:class:`ThreadDelivery`); every event is delivered before this returns."""
    delivery = ThreadDelivery(LiveFeed(), callback, name=name)
    try:
        return run(delivery.feed)
    finally:
        delivery.finish()


async def arun_delivered(
    run: Callable[[LiveFeed], Awaitable[Execution]], callback: OutputCallback
) -> Execution:
    """Async :func:`run_delivered`: the events go to ``callback`` on this event loop
    (:func:`deliver_async`). Cancelled, it stops delivering at once; otherwise every event
    that came (before the result or the failure) is delivered first."""
    feed = LiveFeed()
    delivery = asyncio.ensure_future(deliver_async(feed, callback))
    try:
        execution = await run(feed)
    except asyncio.CancelledError:
        feed.close()
        delivery.cancel()
        raise
    except BaseException:
        feed.close()
        await delivery  # the events that came before the failure
        raise
    feed.close()
    await delivery  # every event is delivered before the result
    return execution


async def _events(feed: LiveFeed) -> Any:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    feed.set_wakeup(lambda: loop.call_soon_threadsafe(wake.set))
    try:
        while True:
            wake.clear()
            events, finished = feed.take(timeout=0)
            for event in events:
                yield event
            if finished:
                return
            if not events:
                await wake.wait()
    finally:
        feed.set_wakeup(None)


class LiveStream:
    """Iterate over a run's :class:`OutputEvent` objects as they arrive; afterwards
    :attr:`execution` is the run's :class:`Execution`. An :class:`EnclaveError` of the run
    is raised at the end of the iteration. Leaving the loop early does not stop the run."""

    def __init__(self, run: Callable[[LiveFeed], Execution], feed: LiveFeed | None = None) -> None:
        self.feed = feed or LiveFeed()
        self.execution: Execution | None = None
        self._error: BaseException | None = None
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, run), name="enclave-stream", daemon=True
        )
        self._thread.start()

    def _run(self, run: Callable[[LiveFeed], Execution]) -> None:
        try:
            self.execution = run(self.feed)
        except BaseException as exc:  # noqa: BLE001 - raised to the iterating caller
            self._error = exc
        finally:
            self.feed.close()

    def __iter__(self) -> Any:
        while True:
            events, finished = self.feed.take(timeout=1.0)
            yield from events
            if finished:
                break
        self._thread.join()
        if self._error is not None:
            raise self._error


class AsyncLiveStream:
    """Async :class:`LiveStream`: ``async for event in sb.astream(code)``; afterwards
    :attr:`execution` is the run's :class:`Execution`."""

    def __init__(self, run: Callable[[LiveFeed], Awaitable[Execution]]) -> None:
        self.feed = LiveFeed()
        self.execution: Execution | None = None
        self._run = run
        self._task: asyncio.Task[Execution] | None = None

    async def __aiter__(self) -> Any:
        self._task = asyncio.ensure_future(self._fed())
        try:
            async for event in _events(self.feed):
                yield event
            self.execution = await self._task
        finally:
            if not self._task.done():
                self._task.cancel()

    async def _fed(self) -> Execution:
        try:
            return await self._run(self.feed)
        finally:
            self.feed.close()
