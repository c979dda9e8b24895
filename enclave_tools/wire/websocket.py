"""A bounded websocket client (RFC 6455) over one connected socket.

The handshake is an HTTP request read with the bounds of :mod:`enclave_tools.wire.http`;
``Sec-WebSocket-Accept`` is checked and the subprotocol negotiated (an answer without one
means the server declined every offer). Frames from the server must be unmasked, use no
extension bits, and keep the limits below:

* a message is kept up to ``message_limit`` bytes (32 MiB); a larger one is read and
  thrown away up to ``discard_limit`` (256 MiB), and :meth:`WebSocket.recv` reports its
  size in :attr:`Message.discarded`; past that the connection is misbehaving and closed
  (so a frame header announcing 1 TiB fails at once, without reading anything);
* at most :data:`MAX_FRAGMENTS` frames per message; control frames at most 125 bytes;
* once a message (or a control frame) has begun, the rest must arrive within
  ``message_time`` seconds (30). Waiting for a message to begin has no limit.

Pings are answered as soon as they are read, also between the fragments of a message.
Text is decoded as UTF-8 with replacement, not validated. Sending takes a lock, with a
deadline on both the lock and the write.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from dataclasses import dataclass

from enclave_tools.errors import GatewayError, GatewayMisbehaved
from enclave_tools.wire import RECV_CHUNK, Deadline, SocketIO
from enclave_tools.wire.http import describe_size, read_head

__all__ = [
    "DISCARD_LIMIT",
    "MAX_FRAGMENTS",
    "MESSAGE_LIMIT",
    "MESSAGE_TIME",
    "Message",
    "WebSocket",
    "connect",
]

MESSAGE_LIMIT = 32 * 2**20
"""The largest message kept, in bytes."""
DISCARD_LIMIT = 256 * 2**20
"""The largest message read (and discarded) before the connection counts as misbehaving."""
MAX_FRAGMENTS = 65536
"""The most frames one message may be split into."""
MESSAGE_TIME = 30.0
"""Seconds within which the rest of a begun message must arrive."""
SEND_TIMEOUT = 10.0
"""The default deadline of one send, lock included."""

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Message:
    """One whole message: ``data`` is ``str`` for text, ``bytes`` for binary. When the
    message was too large to keep, ``data`` is empty and ``discarded`` is its size."""

    data: str | bytes
    discarded: int = 0


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def connect(
    sock: socket.socket,
    host: str,
    path: str,
    headers: dict[str, str],
    subprotocols: list[str],
    deadline: Deadline,
    **limits: float,
) -> WebSocket:
    """Upgrade the connected ``sock`` to a websocket. Raises :class:`GatewayError` (with
    the status) if the server refuses, :class:`GatewayMisbehaved` for a broken handshake.
    ``limits`` are :class:`WebSocket`'s keyword arguments."""
    io = SocketIO(sock)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if any(c in line for line in lines for c in "\r\n"):
            raise ValueError("a websocket request header contains a line break")
        io.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), deadline)
        head = read_head(io, deadline)
        if head.status != 101:
            raise GatewayError(
                f"the gateway refused the websocket: {head.status} {head.reason}".rstrip(),
                head.status,
            )
        if head.tokens("upgrade") != ["websocket"] or "upgrade" not in head.tokens("connection"):
            raise GatewayMisbehaved("the gateway's websocket handshake lacks its Upgrade headers")
        if head.headers.get("sec-websocket-accept", "").strip() != accept_key(key):
            raise GatewayMisbehaved("the gateway's websocket handshake has a wrong Sec-WebSocket-Accept")
        if head.headers.get("sec-websocket-extensions"):
            raise GatewayMisbehaved("the gateway chose a websocket extension that was not offered")
        chosen = head.headers.get("sec-websocket-protocol", "").strip() or None
        if chosen is not None and chosen not in subprotocols:
            raise GatewayMisbehaved(f"the gateway chose a subprotocol that was not offered: {chosen[:80]!r}")
        return WebSocket(io, chosen, **limits)
    except BaseException:
        io.close()
        raise


class WebSocket:
    """An open websocket: one thread reads (:meth:`recv`), any thread sends (:meth:`send`)."""

    def __init__(
        self,
        io: SocketIO,
        subprotocol: str | None,
        *,
        message_limit: float = MESSAGE_LIMIT,
        discard_limit: float = DISCARD_LIMIT,
        message_time: float = MESSAGE_TIME,
    ) -> None:
        self.io = io
        self.subprotocol = subprotocol
        """The subprotocol the server chose, or None."""
        self.message_limit = int(message_limit)
        self.discard_limit = int(discard_limit)
        self.message_time = message_time
        self._send_lock = threading.Lock()

    # -- receiving ---------------------------------------------------------------------

    def recv(self) -> Message | None:
        """The next message, waiting as long as it takes for one to begin; None once the
        server closed the websocket with a close frame."""
        opcode: int | None = None
        parts: list[bytes] = []
        size = fragments = 0
        discarding = False
        deadline: Deadline | None = None  # set when a message begins
        while True:
            frame_deadline = deadline
            if frame_deadline is None:
                self.io.fill(1, Deadline(None))  # idle: wait for the next frame to begin
                frame_deadline = Deadline(self.message_time)
            fin, op, length = self._read_header(frame_deadline)
            if op >= OP_CLOSE:
                if self._control(op, self.io.read_exact(length, frame_deadline)):
                    return None
                continue
            if (op == OP_CONTINUATION) != (opcode is not None):
                raise GatewayMisbehaved("the gateway interleaved or misnumbered websocket fragments")
            if opcode is None:
                opcode, deadline = op, frame_deadline
            fragments += 1
            if fragments > MAX_FRAGMENTS:
                raise GatewayMisbehaved(
                    f"the gateway split a message into more than {MAX_FRAGMENTS:,} frames"
                )
            if size + length > self.discard_limit:
                raise GatewayMisbehaved(
                    "the gateway sent a websocket message larger than " + describe_size(self.discard_limit)
                )
            if size + length > self.message_limit:
                discarding, parts = True, []
            if discarding:
                self._drain(length, frame_deadline)
            else:
                parts.append(self.io.read_exact(length, frame_deadline))
            size += length
            if fin:
                if discarding:
                    return Message(b"" if opcode == OP_BINARY else "", discarded=size)
                data = b"".join(parts)
                return Message(data.decode("utf-8", "replace") if opcode == OP_TEXT else data)

    def _read_header(self, deadline: Deadline) -> tuple[bool, int, int]:
        first, second = self.io.read_exact(2, deadline)
        fin, op = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise GatewayMisbehaved("the gateway set reserved bits in a websocket frame")
        if op not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise GatewayMisbehaved(f"the gateway sent a websocket frame of unknown type {op}")
        if second & 0x80:
            raise GatewayMisbehaved("the gateway sent a masked websocket frame")
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.io.read_exact(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.io.read_exact(8, deadline))
            if length >> 63:
                raise GatewayMisbehaved("the gateway sent a websocket frame of negative length")
        if op >= OP_CLOSE and (length > 125 or not fin):
            raise GatewayMisbehaved("the gateway sent an oversized or fragmented control frame")
        return fin, op, length

    def _drain(self, length: int, deadline: Deadline) -> None:
        while length:
            length -= len(self.io.read_some(min(length, RECV_CHUNK), deadline))

    def _control(self, op: int, payload: bytes) -> bool:
        """Handle a control frame; return True for a close."""
        if op == OP_PING:
            self._send_frame(OP_PONG, payload, Deadline(SEND_TIMEOUT))
            return False
        if op == OP_CLOSE:
            code = payload[:2] if len(payload) >= 2 else b""
            self.send_close(code, timeout=1.0)
            return True
        return False  # a pong

    # -- sending -----------------------------------------------------------------------

    def send(self, data: str | bytes, timeout: float = SEND_TIMEOUT) -> None:
        """Send one message: text for ``str``, binary for ``bytes``. If the send fails
        half way the connection is shut down (a partial frame cannot be taken back)."""
        if isinstance(data, str):
            self._send_frame(OP_TEXT, data.encode("utf-8", "surrogatepass"), Deadline(timeout))
        else:
            self._send_frame(OP_BINARY, bytes(data), Deadline(timeout))

    def send_close(self, payload: bytes = b"\x03\xe8", timeout: float = 1.0) -> None:
        """Send a close frame, best effort (no error if it cannot be sent in time)."""
        try:
            self._send_frame(OP_CLOSE, payload, Deadline(timeout))
        except (OSError, GatewayError):
            pass

    def _send_frame(self, op: int, payload: bytes, deadline: Deadline) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | op, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | op, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | op, 0x80 | 127, n)
        key = os.urandom(4)
        frame = head + key + mask(key, payload)
        left = deadline.left()
        if not self._send_lock.acquire(timeout=-1 if left is None else left):
            raise deadline.error()
        try:
            self.io.send_all(frame, deadline)
        except BaseException:
            self.shutdown()
            raise
        finally:
            self._send_lock.release()

    # -- closing -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Shut the socket down: a thread in :meth:`recv` or :meth:`send` wakes at once."""
        self.io.wake()

    def close(self) -> None:
        """Close the socket (after :meth:`shutdown` and the reader is done with it)."""
        self.io.close()


def mask(key: bytes, data: bytes) -> bytes:
    """``data`` XOR-ed with the 4-byte ``key`` repeated (RFC 6455 masking)."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")
