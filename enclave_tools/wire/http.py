"""A bounded HTTP/1.1 client over one connected socket.

Bounds: the status line and each header line at most :data:`MAX_LINE` bytes, at most
:data:`MAX_HEADERS` header lines, chunk-size lines at most :data:`MAX_CHUNK_LINE` bytes,
and a body of at most ``limit`` bytes per call, kept in memory or written to a sink. A
call as a whole ends by its :class:`~enclave_tools.wire.Deadline`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

from enclave_tools.errors import GatewayMisbehaved
from enclave_tools.wire import RECV_CHUNK, Deadline, SocketIO

__all__ = [
    "BODY_LIMIT",
    "MAX_HEADERS",
    "MAX_LINE",
    "HTTPConnection",
    "Response",
    "ResponseHead",
    "read_head",
]

MAX_LINE = 65536
"""The longest status or header line accepted, in bytes."""
MAX_HEADERS = 100
"""The most header (or trailer) lines accepted in one answer."""
MAX_CHUNK_LINE = 4096
"""The longest chunk-size line accepted, in bytes."""
BODY_LIMIT = 32 * 2**20
"""The default limit on an answer's body: plenty for any JSON the gateway sends."""
ERROR_BODY_LIMIT = 2**20
"""The limit on an error answer's body when the success body would go to a sink."""
_MAX_INTERIM = 10  # 100 Continue and the like, skipped


class Sink(Protocol):
    """Where a streamed body goes: anything with ``write(bytes)``."""

    def write(self, data: bytes, /) -> object: ...


@dataclass
class ResponseHead:
    """The status line and headers of an answer (header names in lower case; repeated
    headers joined with ``", "``)."""

    version: str
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)

    def tokens(self, name: str) -> list[str]:
        """The comma-separated values of header ``name``, in lower case."""
        return [t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()]


@dataclass
class Response(ResponseHead):
    """A whole answer; ``body`` is empty when it was streamed to a sink."""

    body: bytes = b""
    size: int = 0
    """How many body bytes arrived (kept or streamed)."""


def describe_size(n: int) -> str:
    """``n`` bytes for a message: "32 MiB", "1,000 bytes"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale:,} {unit}"
    return f"{n:,} bytes"


def read_head(io: SocketIO, deadline: Deadline) -> ResponseHead:
    """Read a status line and its headers, within the line and count bounds."""
    line = io.read_line(MAX_LINE, deadline, "a status line")
    try:
        version, status, *rest = line.decode("latin-1").split(" ", 2)
        code = int(status)
    except ValueError:
        raise GatewayMisbehaved(f"the gateway sent a malformed status line: {line[:80]!r}") from None
    if not version.startswith("HTTP/1.") or not 100 <= code <= 999 or len(status) != 3:
        raise GatewayMisbehaved(f"the gateway sent a malformed status line: {line[:80]!r}")
    head = ResponseHead(version, code, rest[0] if rest else "")
    head.headers = read_fields(io, deadline, "header")
    return head


def read_fields(io: SocketIO, deadline: Deadline, what: str) -> dict[str, str]:
    """Header (or trailer) lines up to the empty line."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = io.read_line(MAX_LINE, deadline, f"a {what} line")
        if not line:
            return fields
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise GatewayMisbehaved(f"the gateway sent a malformed {what} line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    raise GatewayMisbehaved(f"the gateway sent more than {MAX_HEADERS} {what} lines")


class HTTPConnection:
    """One keep-alive connection; a request at a time. After any error it is closed and
    :attr:`usable` is False."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.io = SocketIO(sock)
        self.host = host
        self.requests = 0
        """How many requests were sent on this connection."""
        self.usable = True

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | bytearray | memoryview | BinaryIO | None = None,
        *,
        deadline: Deadline,
        limit: int = BODY_LIMIT,
        sink: Sink | None = None,
    ) -> Response:
        """Send one request and read its answer. ``body`` is bytes or a binary file (sent
        with the ``Content-Length`` given in ``headers``, else chunked). The answer's body
        is kept (at most ``limit`` bytes) or, given ``sink``, a 2xx answer's body is written
        to it (same limit; other answers' bodies are kept, at most :data:`ERROR_BODY_LIMIT`)."""
        if not self.usable:
            raise GatewayMisbehaved("this connection to the gateway was closed after an error")
        self.requests += 1
        try:
            self._send(method, path, headers or {}, body, deadline)
            head = self._read_final_head(deadline)
            response = Response(head.version, head.status, head.reason, head.headers)
            keep_alive = self._read_body(method, response, deadline, limit, sink)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return response

    def close(self) -> None:
        """Close the connection."""
        self.usable = False
        self.io.close()

    # -- sending -----------------------------------------------------------------------

    def _send(
        self, method: str, path: str, headers: dict[str, str], body: object, deadline: Deadline
    ) -> None:
        if any(c in path for c in " \r\n") or any(c in f"{k}{v}" for k, v in headers.items() for c in "\r\n"):
            raise ValueError("a request line or header contains a space or a line break")
        declared = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        data = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else None
        stream = None if data is not None or body is None else cast(BinaryIO, body)
        if stream is not None and declared is None:
            lines.append("Transfer-Encoding: chunked")
        elif declared is None and (data is not None or method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(data or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if data is not None and len(data) <= RECV_CHUNK:
            self.io.send_all(head + data, deadline)  # one write for a small request
            return
        self.io.send_all(head, deadline)
        if data is not None:
            self.io.send_all(data, deadline)
        elif stream is not None:
            self._send_file(stream, None if declared is None else int(declared), deadline)

    def _send_file(self, body: BinaryIO, length: int | None, deadline: Deadline) -> None:
        sent = 0
        while length is None or sent < length:
            want = RECV_CHUNK * 4 if length is None else min(RECV_CHUNK * 4, length - sent)
            data = body.read(want)
            if not data:
                break
            sent += len(data)
            if length is None:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            self.io.send_all(data, deadline)
        if length is None:
            self.io.send_all(b"0\r\n\r\n", deadline)
        elif sent != length:
            raise ValueError(f"the file ended after {sent:,} of the {length:,} bytes announced")

    # -- receiving ---------------------------------------------------------------------

    def _read_final_head(self, deadline: Deadline) -> ResponseHead:
        for _ in range(_MAX_INTERIM):
            head = read_head(self.io, deadline)
            if head.status >= 200:
                return head
            if head.status == 101:
                raise GatewayMisbehaved("the gateway switched protocols on a plain request")
        raise GatewayMisbehaved("the gateway sent too many interim (1xx) answers")

    def _read_body(
        self, method: str, response: Response, deadline: Deadline, limit: int, sink: Sink | None
    ) -> bool:
        """Read the body into ``response`` (or ``sink``); return whether the connection can
        carry another request."""
        keep_alive = response.version == "HTTP/1.1" and "close" not in response.tokens("connection")
        if method == "HEAD" or response.status in (204, 304):
            return keep_alive
        if sink is not None and not 200 <= response.status < 300:
            sink, limit = None, min(limit, ERROR_BODY_LIMIT)
        body = _Body(response, limit, sink)
        codings = response.tokens("transfer-encoding")
        if codings:
            if codings != ["chunked"]:
                raise GatewayMisbehaved(f"the gateway used an unknown transfer coding: {codings}")
            self._read_chunked(body, deadline)
        elif "content-length" in response.headers:
            length = _content_length(response.headers["content-length"])
            body.announce(length)
            while body.size < length:
                body.add(self.io.read_some(min(length - body.size, RECV_CHUNK), deadline))
        else:
            keep_alive = False
            while data := self.io.read_until_close(RECV_CHUNK, deadline):
                body.add(data)
        body.finish()
        return keep_alive

    def _read_chunked(self, body: _Body, deadline: Deadline) -> None:
        while True:
            line = self.io.read_line(MAX_CHUNK_LINE, deadline, "a chunk-size line")
            size_text = line.split(b";", 1)[0].strip()
            try:
                if not size_text or len(size_text) > 16:
                    raise ValueError
                size = int(size_text, 16)
            except ValueError:
                raise GatewayMisbehaved(f"the gateway sent a bad chunk size: {line[:40]!r}") from None
            if size == 0:
                read_fields(self.io, deadline, "trailer")
                return
            body.announce(body.size + size)
            left = size
            while left:
                data = self.io.read_some(min(left, RECV_CHUNK), deadline)
                left -= len(data)
                body.add(data)
            if self.io.read_exact(2, deadline) != b"\r\n":
                raise GatewayMisbehaved("the gateway sent a chunk without its CRLF")


class _Body:
    """A body as it arrives: kept in memory or written to a sink, never past ``limit``."""

    def __init__(self, response: Response, limit: int, sink: Sink | None) -> None:
        self.response = response
        self.limit = limit
        self.sink = sink
        self.parts: list[bytes] = []
        self.size = 0

    def announce(self, total: int) -> None:
        """Refuse, before reading it, a body that will be larger than the limit."""
        if total > self.limit:
            raise GatewayMisbehaved(
                f"the gateway's answer is larger than the limit of {describe_size(self.limit)}"
                f" ({describe_size(total)} or more)"
            )

    def add(self, data: bytes) -> None:
        """Take ``data``."""
        self.announce(self.size + len(data))
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        else:
            self.parts.append(data)

    def finish(self) -> None:
        """Put the body on the response."""
        self.response.size = self.size
        self.response.body = b"".join(self.parts)
        self.parts = []


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    digits = values.pop() if len(values) == 1 else ""
    if not digits or len(digits) > 18 or digits.strip("0123456789"):
        raise GatewayMisbehaved(f"the gateway sent a bad Content-Length: {value[:40]!r}")
    return int(digits)
