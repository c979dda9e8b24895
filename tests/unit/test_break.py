"""Attacks on the host boundary that need no container: what a hostile gateway's bytes
cost the host once they are inside a bound, and what a hurried caller's bad numbers do.

The gateway is the boundary here: a real unix socket served by a thread of this test
stands in for it, and the real clients (GatewayHTTP, decode_frame) read what it sends.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_tools import Sandbox
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import GatewayMisbehaved, InvalidInput
from enclave_tools.escalation import _out_of_memory
from enclave_tools.protocol import MAX_JSON_VALUES, decode_frame, loads_bounded
from enclave_tools.transport import Endpoint, GatewayHTTP
from enclave_tools.wire import Deadline, wait_ready

MESSAGE = 32 * 2**20 - 4096
"""Just under the websocket's and the HTTP client's 32 MiB bound."""
PEAK_BOUND = 100 * 2**20
"""How much host memory decoding one hostile answer may take (the hostile tests' bound)."""
WATCHDOG_S = 20.0


def dict_flood(size: int = MESSAGE) -> str:
    """A valid Jupyter message whose content is ``size`` bytes of empty objects: ~24 bytes
    of host memory for each byte once decoded."""
    head = '{"header":{"msg_type":"stream"},"parent_header":{},"content":{"x":['
    return head + ",".join(["{}"] * ((size - len(head) - 3) // 3)) + "]}}"


def peak_of(fn) -> tuple[object, int]:
    """``fn()``'s result (or exception) and the peak of Python allocations during it."""
    tracemalloc.start()
    try:
        try:
            result: object = fn()
        except Exception as exc:  # noqa: BLE001 - returned for the caller to judge
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- many small JSON values ------------------------------------------------------------------


def test_a_websocket_message_of_many_small_values_is_refused_without_decoding_it():
    frame = dict_flood()
    result, peak = peak_of(lambda: decode_frame(frame))
    assert result is None
    assert peak < PEAK_BOUND, f"decoding one 32 MiB message took {peak >> 20} MiB"


def test_a_legacy_binary_frame_of_millions_of_buffer_offsets_is_refused():
    count = MESSAGE // 4 - 2
    frame = struct.pack("!I", count) + struct.pack(f"!{count}I", *([4 * (count + 1)] * count)) + b"{}"
    result, peak = peak_of(lambda: decode_frame(frame))
    assert result is None
    assert peak < PEAK_BOUND, f"decoding one 32 MiB frame took {peak >> 20} MiB"


def test_a_v1_frame_of_millions_of_offsets_is_refused():
    count = MESSAGE // 8 - 2
    frame = struct.pack("<Q", count) + struct.pack(f"<{count}Q", *([8 * (count + 1)] * count)) + b"{}"
    result, peak = peak_of(lambda: decode_frame(frame, v1=True))
    assert result is None
    assert peak < PEAK_BOUND, f"decoding one 32 MiB frame took {peak >> 20} MiB"


def test_ordinary_json_with_many_commas_inside_strings_still_decodes():
    text = "a,b,[c],{d}\n" * (MAX_JSON_VALUES // 2)  # a printed CSV: separators only in a string
    msg = loads_bounded('{"header":{},"content":{"text":' + __import__("json").dumps(text) + "}}")
    assert msg["content"]["text"] == text
    with pytest.raises(ValueError):
        loads_bounded("[" + ",".join(["0"] * (MAX_JSON_VALUES + 1)) + "]")


@pytest.fixture
def hostile_gateway(tmp_path: Path) -> Iterator[tuple[Endpoint, list[bytes]]]:
    """A unix-socket "gateway" that answers every request with the next body queued."""
    path = str(tmp_path / "gw.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    bodies: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                body = bodies.pop(0) if bodies else b"{}"
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                try:
                    conn.sendall(head.encode() + body)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Endpoint(token="t", unix_path=path), bodies
    finally:
        listener.close()


def test_a_json_answer_of_many_small_values_is_refused_within_the_memory_bound(hostile_gateway):
    endpoint, bodies = hostile_gateway
    bodies.append(dict_flood().encode())
    http = GatewayHTTP(endpoint, timeout=WATCHDOG_S)
    try:
        result, peak = peak_of(lambda: http.json("GET", "/api/enclave/lifetime"))
    finally:
        http.close()
    assert isinstance(result, GatewayMisbehaved), result
    assert peak < PEAK_BOUND, f"one 32 MiB JSON answer took {peak >> 20} MiB of host memory"


# -- bad numbers from a hurried caller -------------------------------------------------------


@pytest.mark.parametrize("field", ["timeout", "startup_timeout", "interrupt_grace", "file_timeout"])
@pytest.mark.parametrize("value", [float("inf"), 1e300])
def test_a_config_wait_of_infinity_is_refused(field, value):
    # Before: accepted; every call then raised a bare OverflowError from poll() or
    # Event.wait() (read_file with file_timeout=inf, run() with timeout=inf).
    with pytest.raises(ValueError):
        SandboxConfig(**{field: value})


@pytest.mark.parametrize("seconds", [float("inf"), 1e300, float("nan"), -1.0])
def test_a_deadline_of_any_float_waits_without_overflow(seconds):
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        done: list[BaseException | None] = []

        def wait() -> None:
            try:
                wait_ready(a, select.POLLIN, Deadline(seconds))
                done.append(None)
            except BaseException as exc:  # noqa: BLE001 - judged below
                done.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(WATCHDOG_S)
        assert done, "wait_ready hung"
        assert done[0] is None or isinstance(done[0], GatewayMisbehaved), repr(done[0])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), -1, "5"])
def test_connect_with_a_bad_wait_is_invalid_input(wait, tmp_path, monkeypatch):
    # Before: wait=nan made the attach lock wait forever for a sandbox in use.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with pytest.raises(InvalidInput):
        Sandbox.connect("a1b2c3d4e5f6", wait=wait)


def test_detach_with_a_bad_timeout_is_invalid_input():
    sb = Sandbox(keep_alive="1m")
    for bad in (float("nan"), float("inf"), -1, "5"):
        with pytest.raises(InvalidInput):
            sb.detach(timeout=bad)
    assert sb._handle is None, "a bad argument must be refused before anything starts"


@pytest.mark.parametrize(
    "body",
    [
        b'{"oom_kills": 1e999}',
        b'{"oom_kills": -1e999}',
        b'{"oom_kills": "NaN"}',
        b'{"oom_kills": [1]}',
        b"[]",
        b"[" * 100_000,
        b'{"oom_kills": NaN}',
    ],
)
def test_a_hostile_info_answer_never_crashes_the_death_cause(hostile_gateway, body):
    # Before: {"oom_kills": 1e999} (JSON's infinity) raised a bare OverflowError out of
    # run() when the kernel died.
    endpoint, bodies = hostile_gateway
    bodies.append(body)
    sb = Sandbox()
    sb._http = GatewayHTTP(endpoint, timeout=WATCHDOG_S)
    try:
        assert _out_of_memory(sb) is None
    finally:
        sb._http.close()
        sb._http = None
