"""How the host reaches a gateway: an endpoint (unix socket or loopback TCP) and a small
HTTP client that puts the token on every request.

No proxies are consulted: the gateway is always on this machine.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from enclave_tools.errors import GatewayError

__all__ = ["Endpoint", "GatewayHTTP"]


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


class _Connection(http.client.HTTPConnection):
    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        super().__init__(endpoint.netloc, timeout=timeout)
        self._endpoint = endpoint

    def connect(self) -> None:
        self.sock = self._endpoint.connect(self.timeout)


class GatewayHTTP:
    """A keep-alive HTTP client for one gateway, safe to share between threads."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[_Connection] = []
        self._lock = threading.Lock()

    def _conn(self, timeout: float) -> _Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _Connection(self.endpoint, timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, bytes]:
        """Send one request; return ``(status, body)``. Retries once on a stale connection."""
        all_headers = {"Authorization": self.endpoint.auth_header} if auth else {}
        all_headers.update(headers or {})
        for attempt in (0, 1):
            conn = self._conn(timeout or self.timeout)
            try:
                conn.request(method, path, body=body, headers=all_headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, payload: Any = None, *, expect: tuple[int, ...] = (200,),
             timeout: float | None = None) -> Any:
        """Send JSON, expect one of ``expect``, return the decoded answer (or None)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        status, data = self.request(method, path, body, timeout=timeout, headers=headers)
        if status not in expect:
            raise GatewayError(
                f"the gateway answered {method} {path} with {status}: {_reason(data)}", status
            )
        if status >= 300 or not data.strip():
            return None  # an expected error status: its body is not the answer
        return json.loads(data)

    def close(self) -> None:
        """Close every connection this client opened."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def _reason(data: bytes) -> str:
    try:
        payload = json.loads(data)
        return str(payload.get("reason") or payload.get("message") or payload)
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace")


def quote_path(path: str) -> str:
    """``path`` quoted for a query string."""
    return quote(path, safe="")
