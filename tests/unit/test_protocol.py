"""The execute state machine and frame decoding, fed recorded message streams."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_tools.protocol import ExecuteCall, decode_frame, encode_message, new_message

ID = "req-1"


def msg(kind: str, content: dict, parent: str | None = ID, channel: str = "iopub") -> dict:
    return {
        "header": {"msg_id": f"m-{kind}", "msg_type": kind},
        "parent_header": {"msg_id": parent} if parent else {},
        "metadata": {},
        "content": content,
        "channel": channel,
    }


BUSY = msg("status", {"execution_state": "busy"})
IDLE = msg("status", {"execution_state": "idle"})
INPUT = msg("execute_input", {"code": "print(1)", "execution_count": 3})
OUT = msg("stream", {"name": "stdout", "text": "1\n"})
REPLY_OK = msg("execute_reply", {"status": "ok", "execution_count": 3}, channel="shell")


def feed_all(call: ExecuteCall, messages: list[dict]) -> list[bool]:
    return [call.feed(m) for m in messages]


def new_call(limit: int = 10_000) -> ExecuteCall:
    return ExecuteCall(ID, capture_limit=limit, output_limit=8000)


def test_done_when_reply_arrives_before_idle():
    call = new_call()
    assert feed_all(call, [BUSY, INPUT, OUT, REPLY_OK, IDLE]) == [False] * 4 + [True]
    execution = call.execution()
    assert execution.status == "ok"
    assert execution.stdout == "1\n"
    assert execution.execution_count == 3


def test_done_when_idle_arrives_before_reply():
    call = new_call()
    assert feed_all(call, [BUSY, INPUT, OUT, IDLE, REPLY_OK]) == [False] * 4 + [True]
    assert call.execution().text == "1"


def test_a_request_dropped_before_its_code_began_did_not_run():
    """ipykernel drops a request, with no reply, when an interrupt lands before its code
    begins: busy, then idle, no execute_input. That run is not "ok"."""
    call = new_call()
    feed_all(call, [BUSY, IDLE])
    assert call.began.is_set()  # over: nothing left to interrupt
    execution = call.execution()
    assert execution.status == "error" and execution.error.name == "NotRun"


def test_a_reply_lost_after_the_code_began_keeps_the_output_as_ok():
    call = new_call()
    feed_all(call, [BUSY, INPUT, OUT, IDLE])
    assert call.execution().status == "ok" and call.execution().text == "1"


def test_began_is_set_by_execute_input_and_by_the_end():
    call = new_call()
    call.feed(BUSY)
    assert not call.began.is_set()
    call.feed(INPUT)
    assert call.began.is_set() and call.code_began
    ended = new_call()
    ended.end("kernel_died")
    assert ended.began.is_set() and not ended.code_began


def test_error_is_reported_once_without_ansi():
    error = {
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": ["\x1b[0;31mZeroDivisionError\x1b[0m", "\x1b[1;32m----> 1\x1b[0m 1/0"],
    }
    call = new_call()
    feed_all(
        call,
        [BUSY, msg("error", error), msg("execute_reply", {"status": "error", **error}), IDLE],
    )
    execution = call.execution()
    assert execution.status == "error"
    assert execution.error.name == "ZeroDivisionError"
    assert "\x1b" not in execution.error.traceback
    assert execution.text.count("ZeroDivisionError") == 1


def test_aborted_reply_is_an_error():
    call = new_call()
    feed_all(call, [BUSY, msg("execute_reply", {"status": "aborted"}), IDLE])
    execution = call.execution()
    assert execution.status == "error"
    assert execution.error.name == "Aborted"


def test_rich_outputs_in_order_with_images():
    png = base64.b64encode(b"\x89PNG fake").decode()
    call = new_call()
    feed_all(
        call,
        [
            BUSY,
            msg("stream", {"name": "stdout", "text": "before\n"}),
            msg("display_data", {"data": {"image/png": png, "text/plain": "<Figure>"}, "metadata": {}}),
            msg("stream", {"name": "stderr", "text": "warn\n"}),
            msg("execute_result", {"data": {"text/plain": "42"}, "execution_count": 5}),
            REPLY_OK,
            IDLE,
        ],
    )
    execution = call.execution()
    assert execution.images == [b"\x89PNG fake"]
    assert [r.is_main_result for r in execution.results] == [False, True]
    assert execution.stderr == "warn\n"
    assert execution.text == "before\n[image/png]\nwarn\n42"


def test_update_display_and_clear_output():
    call = new_call()
    shown = msg("display_data", {"data": {"text/plain": "0%"}, "transient": {"display_id": "p"}})
    update = msg("update_display_data", {"data": {"text/plain": "100%"}, "transient": {"display_id": "p"}})
    feed_all(call, [BUSY, shown, update])
    assert call.execution().text == "100%"
    feed_all(call, [msg("clear_output", {"wait": True}), msg("stream", {"name": "stdout", "text": "after"})])
    assert call.execution().text == "after"


def test_foreign_messages_are_not_mixed_in():
    call = new_call()
    other = msg("stream", {"name": "stdout", "text": "someone else"}, parent="req-2")
    # The kernel client routes by parent id; a call only ever sees its own messages.
    assert other["parent_header"]["msg_id"] != call.msg_id


def test_output_flood_keeps_head_and_tail():
    call = new_call(limit=1000)
    for i in range(1000):
        call.feed(msg("stream", {"name": "stdout", "text": f"line {i:04d}\n"}))
    feed_all(call, [REPLY_OK, IDLE])
    execution = call.execution()
    assert execution.stdout.startswith("line 0000\n")
    assert execution.stdout.rstrip().endswith("line 0999")
    assert len(execution.stdout) < 1200
    assert "characters of output dropped" in execution.stdout
    assert any("dropped" in note for note in execution.notes)


def test_ended_call_is_done():
    call = new_call()
    call.feed(BUSY)
    call.end("kernel_died")
    assert call.done and call.ended == "kernel_died"


def test_decode_text_and_binary_frames():
    message = msg("stream", {"name": "stdout", "text": "hi"})
    assert decode_frame(json.dumps(message))["content"]["text"] == "hi"
    body = json.dumps(message).encode()
    buffer = b"\x00\x01binary"
    offsets = [12, 12 + len(body)]
    frame = struct.pack("!I", 2) + struct.pack("!2I", *offsets) + body + buffer
    decoded = decode_frame(frame)
    assert decoded["content"]["text"] == "hi"
    assert decoded["buffers"] == [buffer]


def v1_frame(channel: bytes, *parts: bytes) -> bytes:
    """A frame in jupyter_server's v1 layout, spelled out: the number of offsets, the
    offsets (little-endian uint64), then the channel and the parts back to back."""
    chunks = [channel, *parts]
    offsets = [8 * (1 + len(chunks) + 1)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + b"".join(chunks)


def test_decode_v1_frames_with_buffers():
    message = msg("display_data", {"data": {"text/plain": "hi"}})
    parts = [json.dumps(message[key]).encode() for key in ("header", "parent_header", "metadata", "content")]
    decoded = decode_frame(v1_frame(b"iopub", *parts, b"\x00buf"), v1=True)
    assert decoded["channel"] == "iopub"
    assert decoded["header"]["msg_type"] == "display_data"
    assert decoded["parent_header"]["msg_id"] == ID
    assert decoded["content"]["data"] == {"text/plain": "hi"}
    assert decoded["buffers"] == [b"\x00buf"]


def test_encode_v1_matches_the_layout_and_round_trips():
    request = new_message("execute_request", {"code": "print('\u00e9\\ud800')"}, "session-1")
    frame = encode_message(request, v1=True)
    parts = [json.dumps(request[key]).encode() for key in ("header", "parent_header", "metadata", "content")]
    assert frame == v1_frame(b"shell", *parts)
    decoded = decode_frame(frame, v1=True)
    assert decoded["content"] == request["content"] and decoded["header"] == request["header"]
    assert json.loads(encode_message(request, v1=False)) == request


@pytest.mark.parametrize("frame", ["", "not json", "[]", '{"header": 3}', b"\x00\x00", b"\xff" * 12])
def test_bad_frames_are_skipped(frame):
    assert decode_frame(frame) is None
    assert decode_frame(frame, v1=True) is None


@pytest.mark.parametrize(
    "frame",
    [
        v1_frame(b"iopub", b"{}", b"{}", b"{}"),  # a part missing
        v1_frame(b"iopub", b"[]", b"{}", b"{}", b"{}"),  # the header is not an object
        v1_frame(b"iopub", b"{", b"{}", b"{}", b"{}"),  # not JSON
        (6).to_bytes(8, "little") + (10**9).to_bytes(8, "little") * 6,  # offsets past the end
        (2**60).to_bytes(8, "little") + b"\x00" * 16,  # an absurd offset count
    ],
)
def test_bad_v1_frames_are_skipped(frame):
    assert decode_frame(frame, v1=True) is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)), st.booleans())
def test_decoder_never_raises(frame, v1):
    result = decode_frame(frame, v1)
    assert result is None or isinstance(result["header"], dict)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "header": st.fixed_dictionaries(
                    {
                        "msg_type": st.sampled_from(
                            [
                                "status",
                                "stream",
                                "error",
                                "execute_reply",
                                "display_data",
                                "execute_result",
                                "clear_output",
                                "update_display_data",
                                "bogus",
                            ]
                        )
                    }
                ),
                "parent_header": st.just({"msg_id": ID}),
                "content": st.dictionaries(
                    st.sampled_from(
                        [
                            "name",
                            "text",
                            "data",
                            "execution_state",
                            "status",
                            "ename",
                            "evalue",
                            "traceback",
                            "wait",
                            "transient",
                        ]
                    ),
                    st.one_of(
                        st.none(),
                        st.text(max_size=20),
                        st.integers(),
                        st.booleans(),
                        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                    ),
                    max_size=5,
                ),
                "metadata": st.just({}),
            }
        ),
        max_size=20,
    )
)
def test_call_survives_arbitrary_messages(messages):
    call = new_call()
    for message in messages:
        try:
            call.feed(message)
        except (TypeError, AttributeError) as exc:  # pragma: no cover - reported below
            raise AssertionError(f"feed raised on {message}") from exc
    assert isinstance(call.execution().text, str)


def test_new_message_shape():
    message = new_message("execute_request", {"code": "1"}, "session-1")
    assert message["header"]["msg_type"] == "execute_request"
    assert message["header"]["session"] == "session-1"
    assert message["msg_id"] == message["header"]["msg_id"]
    assert message["channel"] == "shell"
