"""KernelClient: one kernel in one gateway, over REST and one websocket.

A background reader thread owns the websocket: it answers the gateway's pings (so an
idle sandbox stays connected), decodes frames and hands each message to the call it
belongs to, by parent ``msg_id``. Server status messages with no parent (``restarting``,
``dead``) end every call in flight at once, as does a closed socket.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import websocket

from enclave_tools.errors import GatewayError, InvalidInput
from enclave_tools.protocol import (
    WS_PROTOCOL_V1,
    ExecuteCall,
    decode_frame,
    encode_message,
    msg_type,
    new_message,
    parent_id,
)
from enclave_tools.transport import GatewayHTTP

__all__ = ["KernelClient", "MAX_CODE_BYTES"]

log = logging.getLogger(__name__)

MAX_CODE_BYTES = 8 * 2**20
"""The largest code string sent; the gateway closes the socket on frames over 10 MiB."""


class KernelClient:
    """Drives one kernel: create, execute, interrupt, restart, shut down."""

    def __init__(self, http: GatewayHTTP) -> None:
        self.http = http
        self.kernel_id: str | None = None
        self.session = uuid.uuid4().hex
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._calls: dict[str, ExecuteCall] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.connected = False
        self.v1 = False  # whether the gateway accepted the binary v1 wire format
        self._offer_v1 = True
        self.kernel_lost: str | None = None  # set when the server says the kernel died

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create a kernel (with an empty environment request) and connect to it."""
        model = self.http.json(
            "POST", "/api/kernels", {"name": "python3", "env": {}}, expect=(201,), timeout=timeout
        )
        self.kernel_id = model["id"]
        self.kernel_lost = None
        self.connect(timeout)

    def connect(self, timeout: float = 30.0) -> None:
        """Open the websocket (closing any earlier one) and start its reader."""
        self.disconnect()
        ws = None
        if self._offer_v1:
            ws = self._open_websocket(timeout, [WS_PROTOCOL_V1])
            # A gateway that does not take v1 fails the handshake (websocket-client wants
            # the offered subprotocol back): use the legacy format with it from now on.
            self._offer_v1 = ws is not None
        if ws is None:
            ws = self._open_websocket(timeout, None)
        ws.settimeout(None)
        self.v1 = ws.getsubprotocol() == WS_PROTOCOL_V1
        self._ws = ws
        self.connected = True
        self._reader = threading.Thread(
            target=self._read_loop, args=(ws, self.v1), name=f"enclave-ws-{self.kernel_id}", daemon=True
        )
        self._reader.start()
        self._handshake(timeout)

    def _open_websocket(self, timeout: float, subprotocols: list[str] | None) -> websocket.WebSocket | None:
        """The kernel's websocket; None if the gateway refused the offered subprotocols."""
        endpoint = self.http.endpoint
        sock = endpoint.connect(timeout)
        url = (
            f"ws://{endpoint.netloc}/api/kernels/{self.kernel_id}/channels"
            f"?session_id={self.session}"
        )
        try:
            return websocket.create_connection(
                url,
                socket=sock,
                timeout=timeout,
                header=[f"Authorization: {endpoint.auth_header}"],
                suppress_origin=True,
                enable_multithread=True,
                skip_utf8_validation=True,
                subprotocols=subprotocols,
            )
        except websocket.WebSocketBadStatusException as exc:
            sock.close()
            raise GatewayError(f"the gateway refused the kernel connection: {exc}") from exc
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            sock.close()
            raise
        except websocket.WebSocketException:
            sock.close()
            if subprotocols:  # the handshake was answered, without the subprotocol
                return None
            raise
        except BaseException:
            sock.close()
            raise

    def disconnect(self) -> None:
        """Close the websocket; calls in flight end as ``disconnected``."""
        ws, self._ws = self._ws, None
        if ws is not None:
            sock = ws.sock
            try:
                if sock is not None:
                    sock.shutdown(2)  # wakes the reader thread
            except OSError:
                pass
            try:
                ws.close(timeout=0.2)
            finally:
                if sock is not None:
                    sock.close()  # websocket-client leaves it open once the peer is gone
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2)
        self.connected = False

    def interrupt(self, timeout: float = 10.0) -> None:
        """Send SIGINT to the kernel."""
        self.http.json("POST", f"/api/kernels/{self.kernel_id}/interrupt", expect=(204,), timeout=timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Restart the kernel (its state is lost), end the processes it left behind,
        and reconnect."""
        self.http.json("POST", f"/api/kernels/{self.kernel_id}/restart", {}, expect=(200,), timeout=timeout)
        self.kernel_lost = None
        self.reap_strays(timeout)
        self.connect(timeout)

    def reap_strays(self, timeout: float = 10.0) -> None:
        """Kill processes that earlier code left running outside the kernel (a stock
        gateway without the enclave endpoints has nothing to call: that is not an error)."""
        self.http.json("POST", "/api/enclave/reap", {}, expect=(200, 404), timeout=timeout)

    def replace(self, timeout: float = 60.0) -> None:
        """Delete the kernel if it still exists and start a new one."""
        self.disconnect()
        if self.kernel_id:
            try:
                self.http.request("DELETE", f"/api/kernels/{self.kernel_id}", timeout=timeout)
            except OSError:
                pass
        self.reap_strays(timeout)
        self.start(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Disconnect and delete the kernel; errors are ignored (the container goes next)."""
        self.disconnect()
        if self.kernel_id:
            try:
                self.http.request("DELETE", f"/api/kernels/{self.kernel_id}", timeout=timeout)
            except (OSError, GatewayError):
                pass

    def model(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The gateway's record of the kernel, or None if it no longer exists."""
        status, data = self.http.request("GET", f"/api/kernels/{self.kernel_id}", timeout=timeout)
        if status == 404:
            return None
        if status != 200:
            raise GatewayError(f"the gateway answered {status} for the kernel's state", status)
        return json.loads(data)

    # -- execution -------------------------------------------------------------------

    def execute(self, code: str, *, capture_limit: int, output_limit: int) -> ExecuteCall:
        """Send ``code`` to run; return the call, which the reader thread fills in."""
        if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
            raise InvalidInput(
                f"the code is {len(code):,} characters; the limit is {MAX_CODE_BYTES // 2**20} MiB. "
                "Write large data to a file with write_file() instead."
            )
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        return self._request("execute_request", content, capture_limit, output_limit)

    def _request(
        self, kind: str, content: dict[str, Any], capture_limit: int = 100_000, output_limit: int = 8000
    ) -> ExecuteCall:
        msg = new_message(kind, content, self.session)
        call = ExecuteCall(msg["msg_id"], capture_limit, output_limit)
        event = threading.Event()
        with self._lock:
            self._calls[call.msg_id] = call
            self._events[call.msg_id] = event
        ws = self._ws
        try:
            if ws is None or not self.connected:
                raise ConnectionError("not connected")
            frame = encode_message(msg, self.v1)
            ws.send(frame, websocket.ABNF.OPCODE_BINARY if self.v1 else websocket.ABNF.OPCODE_TEXT)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("send failed: %s", exc)
            self._finish(call.msg_id, "disconnected")
        return call

    def _handshake(self, timeout: float) -> None:
        """Wait until a request's reply *and* its idle status come back, so the output
        channel is live (a fresh connection can miss a kernel's first messages)."""
        deadline = time.monotonic() + timeout
        wait = 0.2
        while True:
            call = self._request("kernel_info_request", {})
            try:
                if self.wait(call, min(wait, max(deadline - time.monotonic(), 0.01))):
                    if call.ended:
                        raise GatewayError(f"the kernel connection failed ({call.ended})")
                    return
            finally:
                self.forget(call)
            if time.monotonic() >= deadline:
                raise GatewayError(f"the kernel did not answer within {timeout:.0f} s")
            wait = min(wait * 2, 2.0)

    def wait(self, call: ExecuteCall, timeout: float | None) -> bool:
        """Wait until ``call`` is done or ``timeout`` seconds pass; return whether it is done."""
        event = self._events.get(call.msg_id)
        if event is None:
            return call.done
        return event.wait(timeout) or call.done

    def forget(self, call: ExecuteCall) -> None:
        """Stop routing messages to ``call``."""
        with self._lock:
            self._calls.pop(call.msg_id, None)
            self._events.pop(call.msg_id, None)

    # -- the reader thread -----------------------------------------------------------

    def _read_loop(self, ws: websocket.WebSocket, v1: bool) -> None:
        reason = "disconnected"
        try:
            while True:
                opcode, frame = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    frame = frame.decode("utf-8", "replace")
                msg = decode_frame(frame, v1)
                if msg is None:
                    log.debug("skipped an undecodable frame")
                    continue
                self._dispatch(msg)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            log.debug("websocket closed: %s", exc)
        finally:
            if self._ws is ws:
                self.connected = False
            self._end_all(reason)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg_type(msg)
        parent = parent_id(msg)
        if kind == "status" and not parent:
            state = msg["content"].get("execution_state")
            if state in ("restarting", "dead"):
                self.kernel_lost = state
                self._end_all("kernel_died")
            return
        if not parent:
            return
        with self._lock:
            call = self._calls.get(parent)
        if call is not None and call.feed(msg):
            self._finish(parent, None)

    def _finish(self, msg_id: str, reason: str | None) -> None:
        with self._lock:
            call = self._calls.pop(msg_id, None)
            event = self._events.pop(msg_id, None)
        if call is not None and reason:
            call.end(reason)
        if event is not None:
            event.set()

    def _end_all(self, reason: str) -> None:
        with self._lock:
            ids = list(self._calls)
        for msg_id in ids:
            self._finish(msg_id, reason)
