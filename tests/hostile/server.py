"""A hostile gateway: what code that took over a sandbox's gateway could answer the host.

Runs INSIDE a sandbox container (uploaded and started by kernel code), stdlib only::

    python server.py MODE PORT

It listens on ``0.0.0.0:PORT`` and serves MODE (see ``HTTP_ATTACKS`` and ``WS_ATTACKS``).
In an HTTP mode every request, the websocket upgrade included, gets the attack. In a
websocket mode ordinary REST requests get plausible gateway answers, and the websocket
upgrade gets the attack.

It records what it received on ``0.0.0.0:PORT+1``: whoever connects there gets every record
so far and then each new one as it happens, one JSON object a line (so the test keeps the
records even if the host removes the container right after the attack). A request's record
carries the SHA-256 of its ``Authorization`` header, never the header itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import sys
import threading
import time
import uuid

CHUNK = b"x" * 65536
KERNEL_ID = str(uuid.uuid4())
WS_MAGIC = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_records: list[bytes] = []
_subscribers: list[socket.socket] = []
_lock = threading.Lock()


def record(**fields: object) -> None:
    """Keep one record and push it to every subscriber."""
    line = json.dumps({"time": time.time(), **fields}).encode() + b"\n"
    with _lock:
        _records.append(line)
        for sub in list(_subscribers):
            try:
                sub.sendall(line)
            except OSError:
                _subscribers.remove(sub)


def serve_records(port: int) -> None:
    """Accept subscribers to the records."""
    listener = socket.create_server(("0.0.0.0", port), reuse_port=False)
    while True:
        sub, _ = listener.accept()
        with _lock:
            try:
                sub.sendall(b"".join(_records))
                _subscribers.append(sub)
            except OSError:
                sub.close()


# -- reading requests ---------------------------------------------------------------------


class Request:
    """One parsed HTTP request."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers

    @property
    def websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


def read_request(conn: socket.socket, buffer: bytearray) -> Request | None:
    """The next request on ``conn`` (its body read and dropped); None at the end."""
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data or len(buffer) > 1 << 20:
            return None
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    method, path = (lines[0].split(" ") + ["", ""])[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(buffer) < length:
        data = conn.recv(65536)
        if not data:
            return None
        buffer += data
    del buffer[:length]
    auth = headers.get("authorization", "")
    record(
        event="request",
        method=method,
        path=path,
        websocket=Request(method, path, headers).websocket,
        auth_sha256=hashlib.sha256(auth.encode()).hexdigest() if auth else None,
    )
    return Request(method, path, headers)


# -- plausible answers (websocket modes) --------------------------------------------------------


def plausible(req: Request) -> tuple[int, bytes]:
    """What a real gateway would answer to a REST request."""
    path = req.path.split("?")[0]
    model = {"id": KERNEL_ID, "name": "python3", "execution_state": "idle", "connections": 1}
    if req.method == "GET" and path == "/api":
        return 200, json.dumps({"version": "6.6.6"}).encode()
    if req.method == "POST" and path == "/api/kernels":
        return 201, json.dumps(model).encode()
    if path.endswith("/interrupt") or req.method == "DELETE":
        return 204, b""
    if path.endswith("/restart"):
        return 200, json.dumps(model).encode()
    if path.startswith("/api/kernels/"):
        return 200, json.dumps(model).encode()
    if path == "/api/enclave/reap":
        return 200, b"{}"
    if path == "/api/enclave/info":
        return 200, json.dumps({"oom_kills": 0}).encode()
    if path == "/api/enclave/files":
        return 200, b"not the file you wrote"
    return 404, json.dumps({"reason": "not found"}).encode()


def answer(conn: socket.socket, status: int, body: bytes) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    conn.sendall(head.encode() + body)


def accept_websocket(conn: socket.socket, req: Request) -> None:
    """A correct 101 answer (echoing the first subprotocol offered)."""
    key = req.headers.get("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + WS_MAGIC).encode()).digest()).decode()
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    offered = req.headers.get("sec-websocket-protocol", "")
    if offered:
        lines.append(f"Sec-WebSocket-Protocol: {offered.split(',')[0].strip()}")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def frame_header(opcode: int, length: int, fin: bool) -> bytes:
    """An unmasked server frame header."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, length])
    if length < 1 << 16:
        return bytes([first, 126]) + struct.pack("!H", length)
    return bytes([first, 127]) + struct.pack("!Q", length)


def drip(conn: socket.socket, data: bytes) -> None:
    """Send ``data`` one byte every half second, forever (repeating its tail)."""
    sent = 0
    while True:
        conn.sendall(data[sent : sent + 1] if sent < len(data) else data[-1:])
        sent += 1
        time.sleep(0.5)


def forever(conn: socket.socket, piece: bytes) -> None:
    while True:
        conn.sendall(piece)


# -- the attacks ---------------------------------------------------------------------------


def chunked_forever(conn: socket.socket, req: Request) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    forever(conn, b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")


def many_headers(conn: socket.socket, req: Request) -> None:
    status = b"101 Switching Protocols" if req.websocket else b"200 OK"
    headers = b"".join(b"X-Hostile-%d: %d\r\n" % (i, i) for i in range(100_000))
    conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + headers + b"Content-Length: 2\r\n\r\n{}")
    time.sleep(3600)


def http_drip(conn: socket.socket, req: Request) -> None:
    drip(conn, b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaa")


def silent(conn: socket.socket, req: Request) -> None:
    time.sleep(3600)


def reset_mid_body(conn: socket.socket, req: Request) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n" + CHUNK[:1000]
    )
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


def garbage_status(conn: socket.socket, req: Request) -> None:
    conn.sendall(b"\x00\xff\xfeNOT HTTP \x1b[2J AT ALL\r\n\r\n")
    time.sleep(3600)


def short_body(conn: socket.socket, req: Request) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000000000000000\r\n\r\n{"short":1}'
    )
    # then the connection closes (FIN): 10**15 bytes announced, 11 sent


def ws_endless_header(conn: socket.socket, req: Request) -> None:
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Endless: "
    )
    forever(conn, b"a" * 65536)


def ws_huge_frame(conn: socket.socket, req: Request) -> None:
    accept_websocket(conn, req)
    conn.sendall(frame_header(0x2, 1 << 40, fin=True))
    forever(conn, CHUNK)


def ws_fragments(conn: socket.socket, req: Request) -> None:
    accept_websocket(conn, req)
    conn.sendall(frame_header(0x2, len(CHUNK), fin=False) + CHUNK)
    forever(conn, frame_header(0x0, len(CHUNK), fin=False) + CHUNK)


def ws_drip(conn: socket.socket, req: Request) -> None:
    accept_websocket(conn, req)
    drip(conn, frame_header(0x2, 1 << 20, fin=True) + b"x" * 64)


HTTP_ATTACKS = {
    "chunked_forever": chunked_forever,
    "many_headers": many_headers,
    "http_drip": http_drip,
    "silent": silent,
    "reset_mid_body": reset_mid_body,
    "garbage_status": garbage_status,
    "short_body": short_body,
}
"""Modes that answer EVERY request (the websocket upgrade too) with the attack."""

WS_ATTACKS = {
    "ws_endless_header": ws_endless_header,
    "ws_huge_frame": ws_huge_frame,
    "ws_fragments": ws_fragments,
    "ws_drip": ws_drip,
}
"""Modes that answer REST plausibly and the websocket upgrade with the attack."""


def handle(conn: socket.socket, mode: str, number: int) -> None:
    record(event="connect", conn=number)
    buffer = bytearray()
    try:
        while True:
            req = read_request(conn, buffer)
            if req is None:
                return
            if mode in HTTP_ATTACKS:
                HTTP_ATTACKS[mode](conn, req)
                return
            if req.websocket:
                WS_ATTACKS[mode](conn, req)
                return
            answer(conn, *plausible(req))
    except OSError as exc:
        record(event="closed", conn=number, error=type(exc).__name__)
    finally:
        conn.close()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode not in HTTP_ATTACKS and mode not in WS_ATTACKS:
        raise SystemExit(f"unknown mode {mode!r}")
    threading.Thread(target=serve_records, args=(port + 1,), daemon=True).start()
    listener = socket.create_server(("0.0.0.0", port))
    record(event="listening", mode=mode, port=port)
    number = 0
    while True:
        conn, _ = listener.accept()
        number += 1
        threading.Thread(target=handle, args=(conn, mode, number), daemon=True).start()


if __name__ == "__main__":
    main()
