"""Small, bounded, synchronous wire clients for the gateway: HTTP/1.1 and websockets.

The gateway is hostile (code in the sandbox may control it), so every read here is bounded
in size and every call in time. A :class:`Deadline` is an absolute point on the monotonic
clock handed down through a whole call; each wait on the socket lasts at most the time left.
Sockets are used in non-blocking mode and waited on with ``poll``, so a reader and a writer
in two threads never change each other's timeouts.

Every failure is an :class:`~enclave_tools.errors.EnclaveError`: the peer closing or
resetting is :class:`~enclave_tools.errors.GatewayUnreachable`, a broken protocol, an
exceeded bound or an expired deadline is :class:`~enclave_tools.errors.GatewayMisbehaved`.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import time

from enclave_tools.errors import GatewayMisbehaved, GatewayUnreachable

__all__ = ["RECV_CHUNK", "Deadline", "SocketIO"]

RECV_CHUNK = 65536
"""The most bytes asked of the socket at once."""
_POLL_MAX_S = 3600.0
"""The longest single poll (the loop polls again until the deadline): no overflow."""


class Deadline:
    """An absolute monotonic time by which a call must be over; ``None`` seconds: never."""

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and not seconds >= 0:  # NaN or negative: no time at all
            seconds = 0.0
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        """Seconds left (at least 0), or None for no deadline."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        """Whether the time is up."""
        return self.at is not None and time.monotonic() >= self.at

    def error(self) -> GatewayMisbehaved:
        """The exception for an expired deadline."""
        return GatewayMisbehaved(f"the gateway did not answer within {self.seconds:g} s")

    def check(self) -> None:
        """Raise :meth:`error` if the time is up."""
        if self.expired:
            raise self.error()


def wait_ready(sock: socket.socket, events: int, deadline: Deadline) -> None:
    """Block until ``sock`` is ready for ``events`` (``select.POLLIN``/``POLLOUT``) or
    raise the deadline's error."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    while True:
        left = deadline.left()
        if left is not None and left <= 0:
            raise deadline.error()
        try:
            if poller.poll(None if left is None else math.ceil(min(left, _POLL_MAX_S) * 1000)):
                return
        except InterruptedError:
            continue


class SocketIO:
    """A connected socket with a bounded read buffer and deadline-bound reads and writes.

    One thread may read while another writes (the websocket reader and its senders); two
    readers or two writers need a lock of their own.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(0)
        self.sock = sock
        self._buf = bytearray()
        self.closed = False
        self.received = 0
        """How many bytes arrived on the socket so far."""

    # -- reading -----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf)

    def _recv(self, deadline: Deadline, eof_ok: bool = False) -> bool:
        """Receive at least one more byte into the buffer; False at the end of the stream
        if ``eof_ok``, else the end raises :class:`GatewayUnreachable`."""
        while True:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except ssl.SSLWantWriteError:
                wait_ready(self.sock, select.POLLOUT, deadline)
                continue
            except (ssl.SSLWantReadError, BlockingIOError):
                wait_ready(self.sock, select.POLLIN, deadline)
                continue
            except InterruptedError:
                continue
            except (OSError, ValueError) as exc:
                raise GatewayUnreachable(f"the connection to the gateway failed: {exc}") from exc
            if not data:
                if eof_ok:
                    return False
                raise GatewayUnreachable("the gateway closed the connection")
            self._buf += data
            self.received += len(data)
            return True

    def fill(self, n: int, deadline: Deadline) -> None:
        """Make sure ``n`` bytes are buffered (``n`` must be small: it is all kept)."""
        while len(self._buf) < n:
            self._recv(deadline)

    def read_exact(self, n: int, deadline: Deadline) -> bytes:
        """Exactly ``n`` bytes; the caller bounds ``n``."""
        if len(self._buf) >= n:
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return data
        out = bytearray(self._buf)
        self._buf.clear()
        while len(out) < n:
            self._recv(deadline)
            take = min(n - len(out), len(self._buf))
            out += self._buf[:take]
            del self._buf[:take]
        return bytes(out)

    def read_some(self, most: int, deadline: Deadline) -> bytes:
        """Between 1 and ``most`` bytes."""
        if not self._buf:
            self._recv(deadline)
        data = bytes(self._buf[:most])
        del self._buf[:most]
        return data

    def read_line(self, limit: int, deadline: Deadline, what: str = "a header line") -> bytes:
        """One line ending in LF (CRLF or LF stripped); :class:`GatewayMisbehaved` if it
        is longer than ``limit`` bytes."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                if end > limit + 1:
                    break
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > limit + 1:
                break
            start = len(self._buf)
            self._recv(deadline)
        raise GatewayMisbehaved(f"the gateway sent {what} longer than {limit:,} bytes")

    def read_until_close(self, most: int, deadline: Deadline) -> bytes:
        """Bytes up to ``most`` or the end of the stream; b"" at the end."""
        if not self._buf and not self._recv(deadline, eof_ok=True):
            return b""
        return self.read_some(most, deadline)

    # -- writing -----------------------------------------------------------------------

    def send_all(self, data: bytes | bytearray | memoryview, deadline: Deadline) -> None:
        """Send every byte of ``data`` before the deadline."""
        view = memoryview(data).cast("B")
        while view:
            try:
                sent = self.sock.send(view[: 1 << 20])
            except ssl.SSLWantReadError:
                wait_ready(self.sock, select.POLLIN, deadline)
                continue
            except (ssl.SSLWantWriteError, BlockingIOError):
                wait_ready(self.sock, select.POLLOUT, deadline)
                continue
            except InterruptedError:
                continue
            except (OSError, ValueError) as exc:
                raise GatewayUnreachable(f"the connection to the gateway failed: {exc}") from exc
            view = view[sent:]

    # -- closing -----------------------------------------------------------------------

    def wake(self) -> None:
        """Shut the socket down in both directions: a thread blocked on it wakes at once
        (the file descriptor stays open until :meth:`close`)."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # not SSLSocket's: keeps its state
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
