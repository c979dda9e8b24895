"""The Jupyter messaging protocol as the gateway's websocket carries it.

Pure functions and one state machine, no I/O: building and encoding requests, decoding
frames, and :class:`ExecuteCall`, which turns the messages of one ``execute_request`` into
an :class:`~enclave_tools.Execution`.

Two wire formats: the legacy one (a JSON text frame per message, or a binary frame when
there are buffers), which every gateway speaks, and jupyter_server's binary
``v1.kernel.websocket.jupyter.org``, which the client offers and uses when the gateway
accepts it. In v1 the gateway forwards the kernel's message parts as they are, instead of
verifying, parsing and re-encoding each message: less of its CPU per cell.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from enclave_tools.execution import (
    RICH_LIMIT,
    Execution,
    ExecutionError,
    OutputLog,
    Result,
    Status,
    error_from_content,
)

__all__ = [
    "ExecuteCall",
    "WS_PROTOCOL_V1",
    "decode_frame",
    "encode_message",
    "loads_bounded",
    "new_message",
]

PROTOCOL_VERSION = "5.3"

WS_PROTOCOL_V1 = "v1.kernel.websocket.jupyter.org"
"""The websocket subprotocol of jupyter_server 2's binary message format."""

_V1_PARTS = ("header", "parent_header", "metadata", "content")

MAX_JSON_VALUES = 500_000
"""The most JSON values (outside strings) one message or answer may hold. Decoded, each
small value costs ~30-70 bytes of host memory per 2-3 bytes sent (``[{},{},...]``: a
32 MiB message would take ~700 MiB), so this bounds what one message costs (~35 MiB)."""
MAX_BUFFERS = 1024
"""The most binary buffers one message may carry (each is an offset the host decodes)."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def loads_bounded(data: str | bytes | bytearray) -> Any:
    """``json.loads(data)``, refusing (``ValueError``) JSON of more than
    :data:`MAX_JSON_VALUES` values: the gateway is hostile, and many small values cost the
    host far more memory than their bytes. Cheap for ordinary messages: the exact count
    (strings skipped) runs only when the separators in ``data`` could exceed the bound."""
    check_values(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data))
    return json.loads(data)


def check_values(raw: bytes) -> None:
    """Raise ``ValueError`` if the JSON text ``raw`` holds more than :data:`MAX_JSON_VALUES`
    values (see :func:`loads_bounded`)."""
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") > MAX_JSON_VALUES:
        outside = _JSON_STRING.sub(b"", raw)
        if outside.count(b",") + outside.count(b"[") + outside.count(b"{") > MAX_JSON_VALUES:
            raise ValueError(f"JSON of more than {MAX_JSON_VALUES:,} values")


def new_message(
    msg_type: str, content: dict[str, Any], session: str, channel: str = "shell"
) -> dict[str, Any]:
    """A request message in the gateway's legacy JSON form."""
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "session": session,
        "username": "enclave",
        "date": datetime.now(UTC).isoformat(),
        "version": PROTOCOL_VERSION,
    }
    return {
        "header": header,
        "msg_id": msg_id,
        "msg_type": msg_type,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "buffers": [],
        "channel": channel,
    }


def encode_message(msg: dict[str, Any], v1: bool) -> str | bytes:
    """A request as one websocket frame: JSON text (legacy), or v1 bytes.

    v1 layout, all integers little-endian uint64: the number of offsets, the offsets, then
    the channel name and the message parts (header, parent header, metadata, content), each
    running from its offset to the next.
    """
    if not v1:
        return json.dumps(msg)
    parts = [msg["channel"].encode()] + [json.dumps(msg[key]).encode() for key in _V1_PARTS]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


def decode_frame(frame: str | bytes, v1: bool = False) -> dict[str, Any] | None:
    """One websocket frame as a message dict, or ``None`` if it is not a valid message.

    Text frames are JSON. Binary frames are v1 (see :func:`encode_message`) when ``v1``,
    else the legacy layout: a big-endian uint32 count of offsets, the offsets, the JSON
    message, then the buffers.
    """
    try:
        if isinstance(frame, str):
            msg = loads_bounded(frame)
        elif v1:
            msg = _decode_v1(frame)
        else:
            msg = _decode_binary(frame)
    except (ValueError, struct.error, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        return None
    for key in ("parent_header", "content", "metadata"):
        if not isinstance(msg.get(key), dict):
            msg[key] = {}
    return msg


def _decode_binary(frame: bytes) -> Any:
    (count,) = struct.unpack_from("!I", frame, 0)
    if count < 1 or count > MAX_BUFFERS + 1 or 4 * (count + 1) > len(frame):
        raise ValueError("bad offset count")
    offsets = list(struct.unpack_from(f"!{count}I", frame, 4)) + [len(frame)]
    msg = loads_bounded(frame[offsets[0] : offsets[1]].decode("utf-8"))
    if isinstance(msg, dict):
        msg["buffers"] = [frame[a:b] for a, b in zip(offsets[1:-1], offsets[2:], strict=True)]
    return msg


def _decode_v1(frame: bytes) -> dict[str, Any]:
    (count,) = struct.unpack_from("<Q", frame, 0)
    if count < len(_V1_PARTS) + 2 or count > len(_V1_PARTS) + 2 + MAX_BUFFERS or 8 * (count + 1) > len(frame):
        raise ValueError("bad offset count")
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    if offsets[0] < 8 * (count + 1) or offsets[-1] > len(frame) or list(offsets) != sorted(offsets):
        raise ValueError("bad offsets")
    parts = [frame[a:b] for a, b in itertools.pairwise(offsets)]
    check_values(frame[offsets[1] : offsets[len(_V1_PARTS) + 1]])  # the four JSON parts at once
    msg: dict[str, Any] = {key: json.loads(part) for key, part in zip(_V1_PARTS, parts[1:], strict=False)}
    msg["channel"] = parts[0].decode("utf-8")
    msg["buffers"] = parts[len(_V1_PARTS) + 1 :]
    return msg


def msg_type(msg: dict[str, Any]) -> str:
    """The message's type."""
    return str(msg["header"].get("msg_type", ""))


def parent_id(msg: dict[str, Any]) -> str | None:
    """The ``msg_id`` of the request this message answers, if any."""
    return msg["parent_header"].get("msg_id")


def _display_id(content: dict[str, Any]) -> str | None:
    """The ``display_id`` a display message names, if it names one as a string."""
    transient = content.get("transient")
    display_id = transient.get("display_id") if isinstance(transient, dict) else None
    return display_id if isinstance(display_id, str) and display_id else None


class ExecuteCall:
    """The state of one ``execute_request``: collects its outputs and knows when it is done.

    It is done when both its ``execute_reply`` and its ``status: idle`` have arrived, in
    either order, or when it is ended from outside (:meth:`end`).

    It keeps at most ``capture_limit`` characters of stream output and ``rich_limit`` bytes
    of rich outputs (display data, results and their updates); the rest is counted and
    the execution says so in a note.
    """

    def __init__(
        self,
        msg_id: str,
        capture_limit: int,
        output_limit: int,
        rich_limit: int = RICH_LIMIT,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.listener = listener  # live output: sees every message fed (see enclave_tools.live)
        self.started = time.monotonic()
        self.log = OutputLog(capture_limit, rich_limit)
        self.output_limit = output_limit
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.idle_at: float | None = None  # time.monotonic() when idle came
        self.error_content: dict[str, Any] | None = None
        self.execution_count: int | None = None
        self.ended: str | None = None  # why it ended early: "kernel_died", "disconnected", ...
        self.released_at: float | None = None  # time.monotonic() when the client let go of it
        self.code_began = False  # the kernel said the code began (its execute_input)
        self.began = threading.Event()
        """Set when the code began (see :attr:`code_began`), or the call is over or let go of."""
        self.interrupted = False  # an interrupt was sent to the kernel while this call ran

    @property
    def done(self) -> bool:
        """True once the call needs no more messages."""
        return self.ended is not None or (self.reply is not None and self.idle)

    def feed(self, msg: dict[str, Any]) -> bool:
        """Take one message addressed to this call; return :attr:`done`."""
        kind = msg_type(msg)
        content = msg["content"]
        if kind == "status":
            if content.get("execution_state") == "idle":
                self.idle = True
                self.idle_at = self.idle_at or time.monotonic()
        elif kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            self.log.stream(name, str(content.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            if isinstance(data, dict):
                metadata = content.get("metadata")
                self.log.result(
                    Result(
                        data=data,
                        metadata=metadata if isinstance(metadata, dict) else {},
                        is_main_result=kind == "execute_result",
                        display_id=_display_id(content),
                    )
                )
            if kind == "execute_result" and isinstance(content.get("execution_count"), int):
                self.execution_count = content["execution_count"]
        elif kind == "update_display_data":
            display_id = _display_id(content)
            if display_id and isinstance(content.get("data"), dict):
                metadata = content.get("metadata")
                self.log.update_display(
                    display_id, content["data"], metadata if isinstance(metadata, dict) else {}
                )
        elif kind == "clear_output":
            self.log.clear(bool(content.get("wait")))
        elif kind == "error":
            self.error_content = content
        elif kind == "execute_input":
            self.code_began = True
            self.began.set()
            if isinstance(content.get("execution_count"), int):
                self.execution_count = content["execution_count"]
        elif kind.endswith("_reply"):
            self.reply = content
            if isinstance(content.get("execution_count"), int):
                self.execution_count = content["execution_count"]
        if self.listener is not None:
            self._tell_listener(msg)
        if self.idle or self.done:
            self.began.set()  # wakes anyone waiting to interrupt it: there is nothing to interrupt
        return self.done

    def _tell_listener(self, msg: dict[str, Any]) -> None:
        try:
            self.listener(msg)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - live output must never break the reader
            self.listener = None

    def end(self, reason: str) -> None:
        """End the call early (the kernel died, the connection dropped, ...)."""
        if not self.done:
            self.ended = reason
        self.began.set()

    def release(self) -> None:
        """The client let go of the call: nothing more is routed to it, and nobody may
        interrupt it any more (the signal would hit whatever the kernel runs next)."""
        self.released_at = time.monotonic()
        self.began.set()

    def execution(
        self,
        status: Status | None = None,
        error: ExecutionError | None = None,
        notes: Sequence[str] = (),
        state_lost: bool = False,
    ) -> Execution:
        """The :class:`Execution` for what has arrived so far. ``status`` and ``error``, when
        given, say how the run ended instead of its reply (a time limit, a dead kernel);
        ``notes`` follow the call's own. Its duration ends when the client let go of the
        call (:attr:`released_at`), or now."""
        transcript, stdout, stderr = self.log.finish()
        own_status, own_error = self._ending()
        own_notes = []
        if self.log.dropped:
            own_notes.append(f"{self.log.dropped:,} characters of output were dropped to bound memory")
        rich_note = self.log.rich_note()
        if rich_note:
            own_notes.append(rich_note)
        return Execution(
            status=own_status if status is None else status,
            stdout=stdout,
            stderr=stderr,
            results=list(self.log.results),
            error=own_error if status is None else error,
            execution_count=self.execution_count,
            duration=(self.released_at or time.monotonic()) - self.started,
            state_lost=state_lost,
            notes=[*own_notes, *notes],
            output_limit=self.output_limit,
            _transcript=transcript,
        )

    def _ending(self) -> tuple[Status, ExecutionError | None]:
        """The status and error the call's own messages say."""
        reply = self.reply or {}
        if self.error_content is not None:
            return "error", error_from_content(self.error_content)
        if reply.get("status") == "error":
            return "error", error_from_content(reply)
        if reply.get("status") == "aborted":
            return "error", error_from_content(
                {"ename": "Aborted", "evalue": "the kernel skipped this code after an earlier error"}
            )
        if self.reply is None and self.idle and not self.code_began:
            # ipykernel drops a request, with no reply, when an interrupt lands before its code
            return "error", error_from_content(
                {"ename": "NotRun", "evalue": "the kernel dropped this code before it began: it did not run"}
            )
        if self.reply is None and self.idle and self.interrupted:
            # ipykernel also drops it when the interrupt lands after execute_input but before
            # the code runs (IPython still preparing the cell), or as it ends: no reply either way
            return "error", error_from_content(
                {
                    "ename": "KeyboardInterrupt",
                    "evalue": "interrupted as the code began or ended, before the kernel replied: "
                    "it may not have run, or not in full",
                }
            )
        return "ok", None
