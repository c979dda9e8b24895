"""Live output against recorded message streams: a fake kernel client (the boundary) feeds
the messages a real kernel sent, on a thread of its own as the websocket reader would."""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import pytest

from enclave_tools.kernel import KernelClient
from enclave_tools.live import LiveFeed, OutputEvent, events_from_message
from enclave_tools.protocol import ExecuteCall
from enclave_tools.sandbox import Sandbox

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()


def msg(kind: str, **content: Any) -> dict[str, Any]:
    return {
        "header": {"msg_type": kind},
        "parent_header": {"msg_id": "m1"},
        "metadata": {},
        "content": content,
    }


RECORDED = [
    msg("status", execution_state="busy"),
    msg("execute_input", code="...", execution_count=3),
    msg("stream", name="stdout", text="step 1\n"),
    msg("stream", name="stderr", text="\x1b[31mwarn\x1b[0m\u202e\n"),
    msg("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}, metadata={}),
    msg("stream", name="stdout", text="step 2\n"),
    msg("execute_result", data={"text/plain": "42"}, metadata={}, execution_count=3),
    msg("status", execution_state="idle"),
    msg("execute_reply", status="ok", execution_count=3),
]
ERRORED = [
    msg("stream", name="stdout", text="before\n"),
    msg(
        "error",
        ename="ZeroDivisionError",
        evalue="division by zero",
        traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"],
    ),
    msg("status", execution_state="idle"),
    msg("execute_reply", status="error", ename="ZeroDivisionError", evalue="division by zero"),
]


class ReplayKernel(KernelClient):
    """Feeds recorded messages to each call on a thread of its own, as the reader does.
    ``hold`` (if set) is waited for before the final messages (idle and reply)."""

    def __init__(self, messages: list[dict[str, Any]], hold: threading.Event | None = None) -> None:
        super().__init__(http=None)  # type: ignore[arg-type]  # nothing goes on the wire
        self.connected = True
        self.messages = messages
        self.hold = hold
        self.fed = threading.Event()  # every output message has been fed

    def execute(
        self,
        code: str,
        *,
        capture_limit: int,
        output_limit: int,
        rich_limit: int,
        listener: Any = None,
        caller: Any = None,
    ) -> ExecuteCall:
        call = ExecuteCall("m1", capture_limit, output_limit, rich_limit=rich_limit, listener=listener)
        self._done = threading.Event()

        def feed() -> None:
            *outputs, idle, reply = self.messages
            for message in outputs:
                call.feed(message)
            self.fed.set()
            if self.hold is not None:
                self.hold.wait(10)
            call.feed(idle)
            call.feed(reply)
            self._done.set()

        threading.Thread(target=feed, daemon=True).start()
        return call

    def wait(self, call: ExecuteCall, timeout: float | None) -> bool:
        self._done.wait(timeout)
        return call.done


def sandbox(kernel: ReplayKernel) -> Sandbox:
    sb = Sandbox()
    sb._kernel = kernel  # type: ignore[assignment]
    sb._handle = object()  # type: ignore[assignment]
    return sb


def comparable(execution: Any) -> dict[str, Any]:
    record = execution.to_dict()
    record.pop("duration")
    return record


def in_thread(fn: Any, seconds: float = 20) -> Any:
    """Run ``fn`` with a watchdog: fail if it has not returned in ``seconds``."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call hung"
    return box.get("value")


def test_events_are_made_from_output_messages_and_cleaned():
    events = [e for m in RECORDED for e in events_from_message(m)]
    assert [e.kind for e in events] == ["stdout", "stderr", "image", "stdout", "result"]
    assert events[1].text == "warn\n"  # no ANSI escapes, no bidi override
    assert events[2].png == base64.b64decode(PNG) and events[2].text == "[image/png]"
    assert events[4].text == "42" and events[4].data == {"text/plain": "42"}
    error = [e for m in ERRORED for e in events_from_message(m)][-1]
    assert error.kind == "error" and error.text == "ZeroDivisionError: division by zero"


def test_a_hostile_message_makes_no_event_and_no_exception():
    for bad in (
        msg("display_data", data="nope"),
        msg("stream", text=None),
        {"header": {"msg_type": "stream"}, "content": ["x"]},
        msg("error"),
    ):
        for event in events_from_message(bad):
            assert isinstance(event, OutputEvent)


def test_on_output_gets_every_event_in_order_and_the_same_execution():
    plain = sandbox(ReplayKernel(RECORDED)).run("x")
    seen: list[OutputEvent] = []
    live = in_thread(lambda: sandbox(ReplayKernel(RECORDED)).run("x", on_output=seen.append))
    assert [e.kind for e in seen] == ["stdout", "stderr", "image", "stdout", "result"]
    assert comparable(live) == comparable(plain)
    assert live.text == "step 1\nwarn\n[image/png]\nstep 2\n42"


def test_the_error_event_comes_before_the_result():
    seen: list[OutputEvent] = []
    execution = in_thread(lambda: sandbox(ReplayKernel(ERRORED)).run("1/0", on_output=seen.append))
    assert [e.kind for e in seen] == ["stdout", "error"]
    assert execution.status == "error"


def test_a_slow_callback_does_not_hold_up_the_reader():
    release, hold = threading.Event(), threading.Event()
    kernel = ReplayKernel(RECORDED, hold=hold)
    seen: list[OutputEvent] = []

    def slow(event: OutputEvent) -> None:
        release.wait(10)  # blocks until the reader has fed everything
        seen.append(event)

    sb = sandbox(kernel)
    thread = threading.Thread(target=lambda: sb.run("x", on_output=slow), daemon=True)
    thread.start()
    assert kernel.fed.wait(10), "the reader was held up by the callback"
    hold.set()
    release.set()
    thread.join(20)
    assert not thread.is_alive() and len(seen) == 5


def test_a_raising_callback_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture):
    calls: list[str] = []

    def broken(event: OutputEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("the UI fell over")

    execution = in_thread(lambda: sandbox(ReplayKernel(RECORDED)).run("x", on_output=broken))
    assert execution.status == "ok" and len(calls) == 5  # every event was still offered
    assert "on_output callback raised" in caplog.text


def test_the_feed_drops_past_its_bound_and_says_so():
    feed = LiveFeed(limit=200)
    for _ in range(10):
        feed.offer(msg("stream", name="stdout", text="x" * 100))
    assert feed.dropped == 9
    feed.close()
    events, finished = feed.take(0)
    assert finished and events[0].text == "x" * 100
    assert events[-1].kind == "stderr" and "9 live outputs" in events[-1].text


def test_arun_calls_back_on_the_callers_event_loop():
    async def main() -> tuple[list[str], set[int], int, Any]:
        seen: list[str] = []
        threads: set[int] = set()

        async def callback(event: OutputEvent) -> None:
            threads.add(threading.get_ident())
            await asyncio.sleep(0)
            seen.append(event.kind)

        execution = await sandbox(ReplayKernel(RECORDED)).arun("x", on_output=callback)
        return seen, threads, threading.get_ident(), execution

    seen, threads, loop_thread, execution = in_thread(lambda: asyncio.run(main()))
    assert seen == ["stdout", "stderr", "image", "stdout", "result"]
    assert threads == {loop_thread}
    assert execution.text.endswith("42")


def test_stream_and_astream_yield_events_then_hold_the_execution():
    run = sandbox(ReplayKernel(RECORDED)).stream("x")
    kinds = in_thread(lambda: [e.kind for e in run])
    assert kinds == ["stdout", "stderr", "image", "stdout", "result"]
    assert run.execution is not None and run.execution.ok

    async def main() -> tuple[list[str], Any]:
        stream = sandbox(ReplayKernel(ERRORED)).astream("1/0")
        kinds = [e.kind async for e in stream]
        return kinds, stream.execution

    kinds, execution = in_thread(lambda: asyncio.run(main()))
    assert kinds == ["stdout", "error"] and execution.status == "error"
