"""The wire clients against hostile servers on real sockets.

Each server is a thread on a unix socket (or loopback TCP) that breaks one rule. Memory is
checked by what the server managed to send before the client hung up: a client that kept
reading would let it send far past the limit (the server gives up at ``_CAP`` bytes and the
test fails). A watchdog bounds every call, so a regression fails instead of hanging.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enclave_tools.backends.remote import TLSEndpoint, ssl_context
from enclave_tools.errors import EnclaveError, GatewayError, GatewayMisbehaved, GatewayUnreachable
from enclave_tools.kernel import REPLY_GRACE, KernelClient
from enclave_tools.protocol import WS_PROTOCOL_V1, ExecuteCall
from enclave_tools.transport import Endpoint, GatewayHTTP
from enclave_tools.wire import Deadline
from enclave_tools.wire import websocket as wire_ws

MiB = 2**20
_CAP = 96 * MiB  # a server stops sending here: a client still reading has no bound
_SLACK = 4 * MiB  # socket buffers between the two ends


class HostileServer:
    """Accepts connections and runs ``handler(conn)`` for each, in threads; counts the
    bytes ``send`` managed to hand to the kernel, per connection."""

    def __init__(
        self, handler: Callable[[HostileServer, socket.socket], None], address: Any, family: int
    ) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.sent: list[int] = []
        self.events: list[str] = []
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(8)
        self.address = self.listener.getsockname()
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.sent.append(0)
            worker = threading.Thread(target=self._serve, args=(conn, len(self.sent) - 1), daemon=True)
            worker.start()
            self.threads.append(worker)

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(0.2)
        self._index = index
        try:
            self.handler(self, conn)
        except (OSError, AssertionError) as exc:
            self.events.append(f"handler ended: {exc!r}")
        finally:
            conn.close()

    def send(self, conn: socket.socket, data: bytes, index: int = -1) -> bool:
        """Send ``data``; False once the client is gone, the test is over, or the cap is hit."""
        view = memoryview(data)
        while view:
            if self.stop.is_set() or self.sent[index] >= _CAP:
                return False
            try:
                n = conn.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            self.sent[index] += n
            view = view[n:]
        return True

    def pump(self, conn: socket.socket, chunks: Iterator[bytes]) -> None:
        """Send chunks until the client hangs up."""
        for chunk in chunks:
            if not self.send(conn, chunk):
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def serve(tmp_path):
    servers: list[HostileServer] = []

    def start(handler, tcp: bool = False) -> tuple[HostileServer, Endpoint]:
        if tcp:
            server = HostileServer(handler, ("127.0.0.1", 0), socket.AF_INET)
            endpoint = Endpoint(token="t", host="127.0.0.1", port=server.address[1])
        else:
            path = str(tmp_path / f"gw{len(servers)}.sock")
            server = HostileServer(handler, path, socket.AF_UNIX)
            endpoint = Endpoint(token="t", unix_path=path)
        servers.append(server)
        return server, endpoint

    yield start
    for server in servers:
        server.close()


def bounded(fn: Callable[[], Any], seconds: float = 15.0) -> Any:
    """Run ``fn`` in a thread; fail the test if it has not returned within ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def read_request(conn: socket.socket) -> bytes:
    """Read up to the end of a request head (the tests send no bodies unless noted)."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            raise OSError("client went away")
        data += chunk
    return data


def forever(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


# -- HTTP ---------------------------------------------------------------------------------


def test_an_endless_chunked_body_stops_at_the_limit(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        server.pump(conn, forever(b"10000\r\n" + b"x" * 0x10000 + b"\r\n"))

    server, endpoint = serve(handler)
    http = GatewayHTTP(endpoint)
    with pytest.raises(GatewayMisbehaved, match="limit of 1 MiB"):
        bounded(lambda: http.request("GET", "/big", limit=MiB))
    server.close()
    assert server.sent[0] < MiB + _SLACK


def test_the_default_limit_is_32_mib(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        server.pump(conn, forever(b"10000\r\n" + b"x" * 0x10000 + b"\r\n"))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="limit of 32 MiB"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/big"))
    server.close()
    assert server.sent[0] < 32 * MiB + _SLACK


def test_an_endless_chunk_size_line_is_refused(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        server.pump(conn, forever(b"0" * 65536))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="chunk-size line longer"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))
    server.close()
    assert server.sent[0] < _SLACK


def test_an_endless_header_line_is_refused(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nX-Endless: ")
        server.pump(conn, forever(b"a" * 65536))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="header line longer than 65,536 bytes"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))
    server.close()
    assert server.sent[0] < 64 * 1024 + _SLACK


def test_a_hundred_thousand_headers_are_refused(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\n")
        server.pump(conn, (b"X-H%d: v\r\n" % i for i in range(100_000)))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="more than 100 header lines"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))
    server.close()
    assert server.sent[0] < _SLACK


def test_a_huge_content_length_is_refused_before_reading(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % 2**40)
        server.pump(conn, forever(b"x" * 65536))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="1,024 GiB"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))
    server.close()
    assert server.sent[0] < _SLACK


def trickle(server, conn):
    read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000:
        if server.stop.wait(0.2) or not server.send(conn, bytes([byte])):
            return


def test_one_byte_every_200_ms_fails_at_the_calls_deadline(serve):
    server, endpoint = serve(trickle)
    started = time.monotonic()
    with pytest.raises(GatewayMisbehaved, match="did not answer within 1 s"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/", timeout=1.0), seconds=10)
    assert server.sent[0] > 0  # it did send: each receive alone succeeded
    assert time.monotonic() - started < 10


def test_a_server_that_never_answers_fails_at_the_deadline(serve):
    def handler(server, conn):
        server.stop.wait()

    _, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="did not answer within 0.5 s"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/", timeout=0.5), seconds=10)


def test_close_wakes_a_call_in_flight(serve):
    _, endpoint = serve(trickle)
    http = GatewayHTTP(endpoint)
    box: dict[str, BaseException] = {}

    def call() -> None:
        try:
            http.request("GET", "/", timeout=600)
        except EnclaveError as exc:
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    bounded(http.close, seconds=5)
    thread.join(10)
    assert not thread.is_alive(), "close() did not wake the call in flight"
    assert isinstance(box.get("error"), GatewayUnreachable)


def test_a_reset_mid_body_is_unreachable_with_its_cause(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    _, endpoint = serve(handler, tcp=True)
    with pytest.raises(GatewayUnreachable) as failed:
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))
    assert isinstance(failed.value.__cause__, ConnectionResetError)


def test_a_close_mid_body_is_unreachable(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxx")

    _, endpoint = serve(handler)
    with pytest.raises(GatewayUnreachable, match="closed the connection"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/"))


def test_nothing_listening_is_unreachable(tmp_path):
    endpoint = Endpoint(token="t", unix_path=str(tmp_path / "none.sock"))
    with pytest.raises(GatewayUnreachable) as failed:
        GatewayHTTP(endpoint).request("GET", "/")
    assert isinstance(failed.value.__cause__, OSError)


def ok_server(answers: list[bytes], close_after_each: bool = False):
    """Answers each request on a connection with the next of ``answers``; records requests."""
    requests: list[bytes] = []

    def handler(server, conn):
        buffered = b""
        while answers:
            while b"\r\n\r\n" not in buffered:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffered += chunk
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            body = b""
            if b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffered) < length:
                    buffered += conn.recv(65536)
                body, buffered = buffered[:length], buffered[length:]
            elif b"transfer-encoding: chunked" in head.lower():
                while not buffered.endswith(b"0\r\n\r\n"):
                    buffered += conn.recv(65536)
                body, buffered = buffered, b""
            requests.append(head + b"\r\n\r\n" + body)
            server.send(conn, answers.pop(0))
            if close_after_each:
                return

    return handler, requests


def test_keep_alive_reuses_and_a_stale_connection_is_retried(serve):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    handler, requests = ok_server([answer, answer, answer], close_after_each=True)
    server, endpoint = serve(handler)
    http = GatewayHTTP(endpoint)
    assert http.request("GET", "/a") == (200, b"ok")
    assert http.request("GET", "/b") == (200, b"ok")  # the first connection was closed: retried
    assert len(server.sent) == 2
    assert [r.split(b" ")[1] for r in requests] == [b"/a", b"/b"]
    assert b"Authorization: token t" in requests[0]


def test_bodies_from_files_and_streamed_answers(serve):
    answers = [
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b'HTTP/1.1 404 Not Found\r\nContent-Length: 17\r\n\r\n{"reason": "nope"}'[:-1] + b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsix!!!",
    ]
    handler, requests = ok_server(answers)
    _, endpoint = serve(handler)
    http = GatewayHTTP(endpoint)
    payload = os.urandom(300_000)
    assert (
        http.request("PUT", "/f", io.BytesIO(payload), headers={"Content-Length": str(len(payload))})[0]
        == 201
    )
    assert requests[0].endswith(payload)
    assert http.request("PUT", "/g", io.BytesIO(b"abc"))[0] == 201
    assert b"Transfer-Encoding: chunked" in requests[1] and requests[1].endswith(b"3\r\nabc\r\n0\r\n\r\n")
    sink = io.BytesIO()
    assert http.stream_to("GET", "/h", sink, limit=100) == (200, b"")
    assert sink.getvalue() == b"hello"
    sink = io.BytesIO()
    status, body = http.stream_to("GET", "/missing", sink, limit=100)
    assert status == 404 and b"nope" in body and sink.getvalue() == b""
    with pytest.raises(GatewayMisbehaved, match="limit of 5 bytes"):
        http.stream_to("GET", "/i", io.BytesIO(), limit=5)


def test_json_that_is_not_json_is_misbehaving(serve):
    handler, _ = ok_server([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{{{"])
    _, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="not JSON"):
        GatewayHTTP(endpoint).json("GET", "/api")


# -- websocket ----------------------------------------------------------------------------


def handshake(
    conn: socket.socket, server: HostileServer, *, protocol: bool = True, accept: str | None = None
) -> None:
    request = read_request(conn).decode()
    key = next(
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    digest = base64.b64encode(hashlib.sha1(key.encode() + wire_ws._GUID).digest()).decode()
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept or digest}\r\n"
    )
    if protocol:
        head += "Sec-WebSocket-Protocol: v1.kernel.websocket.jupyter.org\r\n"
    server.send(conn, (head + "\r\n").encode())


def frame(
    op: int, payload: bytes = b"", fin: bool = True, length: int | None = None, masked: bool = False
) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | op
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if masked:
        return head + b"\0\0\0\0" + payload
    return head + payload


def read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = conn.recv(n - len(data))
            except TimeoutError:
                continue
            if not chunk:
                raise OSError("client went away")
            data += chunk
        return data

    first, second = exact(2)
    assert second & 0x80, "a client frame must be masked"
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exact(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exact(8))
    key = exact(4)
    return first & 0x0F, wire_ws.mask(key, exact(n))


def open_ws(endpoint: Endpoint, timeout: float = 5.0, **limits: float) -> wire_ws.WebSocket:
    return wire_ws.connect(
        endpoint.connect(),
        "localhost",
        "/ws",
        {},
        ["v1.kernel.websocket.jupyter.org"],
        Deadline(timeout),
        **limits,
    )


def test_a_1_tib_frame_header_fails_at_once(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_BINARY, length=2**40))
        server.pump(conn, forever(b"x" * 65536))

    server, endpoint = serve(handler)
    ws = open_ws(endpoint)
    with pytest.raises(GatewayMisbehaved, match="larger than 256 MiB"):
        bounded(ws.recv)
    ws.close()
    server.close()
    assert server.sent[0] < _SLACK


def test_a_large_message_is_discarded_and_the_next_one_kept(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_BINARY, b"x" * 3000, fin=False))
        server.send(conn, frame(wire_ws.OP_CONTINUATION, b"y" * 3000))
        server.send(conn, frame(wire_ws.OP_TEXT, b"after"))
        server.stop.wait()

    _, endpoint = serve(handler)
    ws = open_ws(endpoint, message_limit=4096, discard_limit=8192)
    assert bounded(ws.recv) == wire_ws.Message(b"", discarded=6000)
    assert bounded(ws.recv) == wire_ws.Message("after")
    ws.close()


def test_endless_fragments_are_refused(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_BINARY, b"x", fin=False))
        server.pump(conn, forever(frame(wire_ws.OP_CONTINUATION, b"x", fin=False) * 4096))

    server, endpoint = serve(handler)
    ws = open_ws(endpoint)
    with pytest.raises(GatewayMisbehaved, match="more than 65,536 frames"):
        bounded(ws.recv)
    ws.close()
    server.close()
    assert server.sent[0] < 65537 * 3 + _SLACK


def test_a_message_that_trickles_fails_at_the_message_deadline(serve):
    def handler(server, conn):
        handshake(conn, server)
        for byte in frame(wire_ws.OP_TEXT, b"x" * 100):
            if server.stop.wait(0.2) or not server.send(conn, bytes([byte])):
                return

    _, endpoint = serve(handler)
    ws = open_ws(endpoint, message_time=1.0)
    with pytest.raises(GatewayMisbehaved, match="did not answer within 1 s"):
        bounded(ws.recv, seconds=10)
    ws.close()


def test_a_ping_during_a_slow_message_is_answered_at_once(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_TEXT, b"hel", fin=False))
        server.send(conn, frame(wire_ws.OP_PING, b"are you there"))
        op, payload = read_client_frame(conn)  # before the rest of the message is sent
        server.events.append(f"got {op} {payload!r}")
        server.send(conn, frame(wire_ws.OP_CONTINUATION, b"lo"))
        server.stop.wait()

    server, endpoint = serve(handler)
    ws = open_ws(endpoint)
    assert bounded(ws.recv) == wire_ws.Message("hello")
    assert server.events == [f"got {wire_ws.OP_PONG} b'are you there'"]
    ws.close()


def test_a_masked_server_frame_is_refused(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_TEXT, b"hi", masked=True))
        server.stop.wait()

    _, endpoint = serve(handler)
    ws = open_ws(endpoint)
    with pytest.raises(GatewayMisbehaved, match="masked"):
        bounded(ws.recv)
    ws.close()


def test_an_oversized_control_frame_is_refused(serve):
    def handler(server, conn):
        handshake(conn, server)
        server.send(conn, frame(wire_ws.OP_PING, b"p" * 200))
        server.stop.wait()

    _, endpoint = serve(handler)
    ws = open_ws(endpoint)
    with pytest.raises(GatewayMisbehaved, match="control frame"):
        bounded(ws.recv)
    ws.close()


def test_a_bad_accept_key_is_refused(serve):
    _, endpoint = serve(lambda server, conn: (handshake(conn, server, accept="d3Jvbmc="), server.stop.wait()))
    with pytest.raises(GatewayMisbehaved, match="Sec-WebSocket-Accept"):
        bounded(lambda: open_ws(endpoint))


def test_an_endless_handshake_header_is_refused(serve):
    def handler(server, conn):
        read_request(conn)
        server.send(conn, b"HTTP/1.1 101 Switching Protocols\r\nX: ")
        server.pump(conn, forever(b"a" * 65536))

    server, endpoint = serve(handler)
    with pytest.raises(GatewayMisbehaved, match="longer than 65,536"):
        bounded(lambda: open_ws(endpoint))
    server.close()
    assert server.sent[0] < 64 * 1024 + _SLACK


def test_no_subprotocol_in_the_answer_means_the_legacy_format(serve):
    _, endpoint = serve(lambda server, conn: (handshake(conn, server, protocol=False), server.stop.wait()))
    ws = bounded(lambda: open_ws(endpoint))
    assert ws.subprotocol is None
    ws.close()


def test_a_refused_upgrade_carries_its_status(serve):
    handler, _ = ok_server([b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"])
    _, endpoint = serve(handler)
    with pytest.raises(GatewayError, match="403") as refused:
        bounded(lambda: open_ws(endpoint))
    assert refused.value.status == 403


def test_messages_round_trip_masked(serve):
    def handler(server, conn):
        handshake(conn, server)
        for _ in range(2):
            op, payload = read_client_frame(conn)
            server.send(conn, frame(op, payload))
        server.stop.wait()

    _, endpoint = serve(handler)
    ws = open_ws(endpoint)
    big = os.urandom(200_000)
    ws.send(big)
    ws.send("text é")
    assert bounded(ws.recv) == wire_ws.Message(big)
    assert bounded(ws.recv) == wire_ws.Message("text é")
    ws.close()


# -- KernelClient on a hostile gateway ----------------------------------------------------


def test_a_gateway_that_never_answers_the_websocket_raises_an_enclave_error(serve):
    _, endpoint = serve(lambda server, conn: server.stop.wait())
    kernel = KernelClient(GatewayHTTP(endpoint))
    kernel.kernel_id = "k"
    with pytest.raises(GatewayMisbehaved, match="did not answer within 1 s"):
        bounded(lambda: kernel.connect(timeout=1.0), seconds=10)


def test_disconnect_is_bounded_while_a_message_trickles(serve):
    def handler(server, conn):
        handshake(conn, server)
        read_client_frame(conn)  # the kernel_info_request: never answered
        server.send(conn, frame(wire_ws.OP_BINARY, b"", fin=False, length=1000))
        while not server.stop.wait(0.2) and server.send(conn, b"x"):
            pass

    _, endpoint = serve(handler)
    kernel = KernelClient(GatewayHTTP(endpoint))
    kernel.kernel_id = "k"
    connecting = threading.Thread(target=lambda: pytest.raises(GatewayError, kernel.connect, 60), daemon=True)
    connecting.start()
    deadline = time.monotonic() + 10
    while kernel._ws is None and time.monotonic() < deadline:
        time.sleep(0.01)
    reader = kernel._reader
    bounded(kernel.disconnect, seconds=5)
    assert reader is not None and not reader.is_alive()
    assert not kernel.connected


def test_a_lost_reply_counts_as_done_after_the_grace(monkeypatch):
    kernel = KernelClient(GatewayHTTP(Endpoint(token="t", unix_path="/nonexistent")))
    call = ExecuteCall("m1", 1000, 1000)
    event = threading.Event()
    kernel._calls["m1"], kernel._events["m1"] = call, event
    idle = {
        "header": {"msg_type": "status"},
        "parent_header": {"msg_id": "m1"},
        "content": {"execution_state": "idle"},
        "metadata": {},
    }
    assert kernel.wait(call, 0.05) is False  # nothing came: not done
    threading.Timer(0.1, kernel._dispatch, args=(idle,)).start()
    assert bounded(lambda: kernel.wait(call, 60), seconds=REPLY_GRACE + 10) is True
    assert call.reply is None and call.ended is None


# -- over TLS (the remote backend's sockets) ----------------------------------------------


@pytest.fixture
def tls(tmp_path):
    """A self-signed certificate for localhost: (server context, client context)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl_context(str(cert))


def test_http_and_websocket_over_tls(serve, tls):
    server_context, client_context = tls

    def handler(server, conn):
        conn = server_context.wrap_socket(conn, server_side=True)
        conn.settimeout(0.2)
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        handshake(conn, server)
        op, payload = read_client_frame(conn)
        server.send(conn, frame(wire_ws.OP_PING, b"p") + frame(op, payload))
        server.events.append(repr(read_client_frame(conn)))
        server.stop.wait()

    server, plain = serve(handler, tcp=True)
    endpoint = TLSEndpoint(token="t", host="127.0.0.1", port=plain.port, context=client_context)
    http = GatewayHTTP(endpoint)
    assert http.request("GET", "/") == (200, b"hello")
    conn = http._idle[0]  # the same TLS connection carries the websocket next
    ws = wire_ws.connect(conn.io.sock, "x", "/ws", {}, [WS_PROTOCOL_V1], Deadline(5))
    ws.send(b"x" * 100_000)
    assert bounded(ws.recv) == wire_ws.Message(b"x" * 100_000)
    deadline = time.monotonic() + 10
    while not server.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.events == [repr((wire_ws.OP_PONG, b"p"))]
    box: dict[str, BaseException] = {}
    reader = threading.Thread(target=lambda: box.setdefault("e", pytest.raises(EnclaveError, ws.recv).value))
    reader.start()
    time.sleep(0.1)  # let it block (the test holds either way)
    ws.shutdown()
    reader.join(5)
    assert not reader.is_alive(), "shutdown() did not wake the reader of a TLS websocket"
    assert isinstance(box.get("e"), GatewayUnreachable)
    ws.close()


def test_a_trickle_over_tls_fails_at_the_deadline(serve, tls):
    server_context, client_context = tls

    def handler(server, conn):
        conn = server_context.wrap_socket(conn, server_side=True)
        conn.settimeout(0.2)
        trickle(server, conn)

    _, plain = serve(handler, tcp=True)
    endpoint = TLSEndpoint(token="t", host="127.0.0.1", port=plain.port, context=client_context)
    with pytest.raises(GatewayMisbehaved, match="within 1 s"):
        bounded(lambda: GatewayHTTP(endpoint).request("GET", "/", timeout=1.0), seconds=10)
