"""How the host reaches a gateway: an endpoint (unix socket or loopback TCP) and a small,
bounded HTTP client (:mod:`enclave_tools.wire.http`) that puts the token on every request.

No proxies are consulted: the gateway is always on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote

from enclave_tools.errors import GatewayError, GatewayMisbehaved, GatewayUnreachable
from enclave_tools.protocol import loads_bounded
from enclave_tools.wire import Deadline
from enclave_tools.wire.http import BODY_LIMIT, HTTPConnection, Response, Sink

__all__ = ["CONNECT_ERRORS", "Endpoint", "GatewayHTTP"]

CONNECT_ERRORS = (ConnectionError, FileNotFoundError, OSError, GatewayError)
"""What a request to a gateway raises when it cannot be made or is refused (every
:class:`GatewayError`, :class:`GatewayUnreachable` and :class:`GatewayMisbehaved` included)."""

ERROR_TEXT_LIMIT = 65536
"""The most bytes of an error answer read for its reason."""


@dataclass(frozen=True)
class Endpoint:
    """Where a gateway listens: ``unix_path`` or ``host``/``port``, and its token."""

    token: str
    unix_path: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    scheme: str = "http"
    identity: tuple[int, int] | None = field(default=None, compare=False)
    """``(st_dev, st_ino)`` of the unix socket once :meth:`pin` recorded it."""

    def pin(self) -> None:
        """Record which socket file ``unix_path`` is now; every later :meth:`connect`
        refuses any other file there (a replaced socket, a symlink, a plain file)."""
        if self.unix_path:
            info = os.lstat(self.unix_path)
            if not stat.S_ISSOCK(info.st_mode):
                raise GatewayError(f"{self.unix_path} is not a socket")
            object.__setattr__(self, "identity", (info.st_dev, info.st_ino))

    def check_pinned(self) -> None:
        """Raise :class:`GatewayError` unless ``unix_path`` is still the pinned socket."""
        if not self.unix_path or self.identity is None:
            return
        try:
            info = os.lstat(self.unix_path)
        except OSError as exc:
            raise GatewayError(f"the gateway's socket is gone: {exc.strerror}") from exc
        if not stat.S_ISSOCK(info.st_mode) or (info.st_dev, info.st_ino) != self.identity:
            raise GatewayError("the gateway's socket was replaced; refusing to connect to it")

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new connected socket to the gateway."""
        if self.unix_path:
            self.check_pinned()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_path)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port or 80), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @property
    def netloc(self) -> str:
        """The ``Host`` header value."""
        return "localhost" if self.unix_path else f"{self.host}:{self.port}"

    @property
    def auth_header(self) -> str:
        """The ``Authorization`` header value."""
        return f"token {self.token}"

    def describe(self) -> str:
        """Where it is, for messages."""
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"


class GatewayHTTP:
    """A keep-alive HTTP client for one gateway, safe to share between threads.

    Every call ends by its deadline (``timeout`` seconds for the whole call, connecting
    included) and keeps at most ``limit`` bytes of the answer. Failures are
    :class:`GatewayUnreachable` (refused, reset, closed: the cause is chained) or
    :class:`GatewayMisbehaved` (too large, too slow, malformed).
    """

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._idle: list[HTTPConnection] = []
        self._busy: set[HTTPConnection] = set()
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        limit: int = BODY_LIMIT,
    ) -> tuple[int, bytes]:
        """Send one request; return ``(status, body)``. ``body`` may be a binary file (sent
        with the ``Content-Length`` in ``headers``, else chunked). Retries once, on a new
        connection, when a reused one turns out closed before any answer arrived."""
        response = self._call(method, path, body, timeout, headers, auth, limit, None)
        return response.status, response.body

    def stream_to(
        self,
        method: str,
        path: str,
        sink: Sink,
        limit: int,
        timeout: float | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request and write a 2xx answer's body to ``sink`` (at most ``limit``
        bytes, else :class:`GatewayMisbehaved`); return ``(status, b"")``, or for any other
        status ``(status, error body)`` with nothing written."""
        response = self._call(method, path, None, timeout, headers, True, limit, sink)
        return response.status, response.body

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None,
        timeout: float | None,
        headers: dict[str, str] | None,
        auth: bool,
        limit: int,
        sink: Sink | None,
    ) -> Response:
        deadline = Deadline(timeout or self.timeout)
        all_headers = {"Authorization": self.endpoint.auth_header} if auth else {}
        all_headers.update(headers or {})
        replayable = sink is None and (body is None or isinstance(body, (bytes, bytearray)))
        for attempt in (0, 1):
            conn = self._checkout(deadline)
            reused, received = conn.requests > 0, conn.io.received
            try:
                return conn.request(
                    method, path, all_headers, body, deadline=deadline, limit=limit, sink=sink
                )
            except GatewayUnreachable:
                stale = reused and conn.io.received == received and not deadline.expired
                if attempt or not stale or not replayable:
                    raise
            finally:
                self._checkin(conn)
        raise AssertionError("unreachable")

    def _checkout(self, deadline: Deadline) -> HTTPConnection:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            deadline.check()
            try:
                sock = self.endpoint.connect(deadline.left())
            except OSError as exc:
                raise GatewayUnreachable(
                    f"cannot connect to the gateway at {self.endpoint.describe()}: {exc}"
                ) from exc
            conn = HTTPConnection(sock, self.endpoint.netloc)
        with self._lock:
            self._busy.add(conn)
        return conn

    def _checkin(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._busy.discard(conn)
            if conn.usable:
                self._idle.append(conn)

    def json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        expect: tuple[int, ...] = (200,),
        timeout: float | None = None,
    ) -> Any:
        """Send JSON, expect one of ``expect``, return the decoded answer (or None)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        status, data = self.request(method, path, body, timeout=timeout, headers=headers)
        if status not in expect:
            raise GatewayError(f"the gateway answered {method} {path} with {status}: {_reason(data)}", status)
        if status >= 300 or not data.strip():
            return None  # an expected error status: its body is not the answer
        try:
            return loads_bounded(data)
        except (ValueError, RecursionError):
            raise GatewayMisbehaved(
                f"the gateway answered {method} {path} with something that is not JSON"
            ) from None

    def close(self) -> None:
        """Close every idle connection and wake any call in flight (it fails at once)."""
        with self._lock:
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:
            conn.io.wake()


def _reason(data: bytes) -> str:
    try:
        payload = loads_bounded(data[:ERROR_TEXT_LIMIT])
        return str(payload.get("reason") or payload.get("message") or payload)[:500]
    except (ValueError, AttributeError, RecursionError):
        return data[:200].decode("utf-8", "replace")


def quote_path(path: str) -> str:
    """``path`` quoted for a query string."""
    return quote(path, safe="")
