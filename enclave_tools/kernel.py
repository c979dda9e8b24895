"""KernelClient: one kernel in one gateway, over REST and one websocket.

A background reader thread owns the websocket: it answers the gateway's pings (so an
idle sandbox stays connected), decodes frames and hands each message to the call it
belongs to, by parent ``msg_id``. Server status messages with no parent (``restarting``,
``dead``) end every call in flight at once, as does a closed socket.

:meth:`KernelClient.run` is one cell from its caller's side: send it, wait until it is done,
its deadline passes or its caller cancels, interrupt it if it has not ended, and let go of
the call. What to do about a cell that did not stop is the sandbox's business
(:mod:`enclave_tools.escalation`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from enclave_tools.errors import (
    EnclaveError,
    GatewayError,
    GatewayMisbehaved,
    GatewayUnreachable,
    InvalidInput,
)
from enclave_tools.protocol import (
    WS_PROTOCOL_V1,
    ExecuteCall,
    decode_frame,
    encode_message,
    loads_bounded,
    msg_type,
    new_message,
    parent_id,
)
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP
from enclave_tools.wire import Deadline
from enclave_tools.wire import websocket as wire_ws

__all__ = ["INTERRUPT_TIMEOUT", "MAX_CODE_BYTES", "REPLY_GRACE", "Caller", "KernelClient", "Run"]

log = logging.getLogger(__name__)

MAX_CODE_BYTES = 8 * 2**20
"""The largest code string sent; the gateway closes the socket on frames over 10 MiB."""

_KERNEL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def is_kernel_id(text: object) -> bool:
    """Whether ``text`` may be a kernel id (safe to put in a URL path as it is)."""
    return isinstance(text, str) and _KERNEL_ID.fullmatch(text) is not None


REPLY_GRACE = 1.0
"""Seconds a call whose ``idle`` status came waits for its reply before it counts as done:
the protocol does not order the output and reply channels, and a reply can be lost when
an interrupt lands just as the code ends."""

SEND_TIMEOUT = 10.0
"""Seconds one request may take to send before the connection counts as broken."""

INTERRUPT_TIMEOUT = 5.0
"""Seconds an interrupt request may take."""

INTERRUPT_AGAIN_AFTER = 1.0
"""Seconds after an interrupt when code still running is interrupted once more."""

CANCEL_POLL = 0.1
"""How often a running call looks whether its caller cancelled it."""


HANDSHAKE_FIRST_WAIT = 0.05
"""Seconds the handshake's first kernel_info request waits before another is sent (each
later one waits twice as long, up to 2 s)."""


class Caller(Protocol):
    """The caller's side of one run (a :class:`~enclave_tools.turns.Turn` is one)."""

    call: ExecuteCall | None
    """The call, set once its code has gone to the kernel."""
    cancelled: bool
    """Set by the caller when it gives up; looked at every :data:`CANCEL_POLL` seconds."""


@dataclass(frozen=True)
class Run:
    """How one :meth:`KernelClient.run` went, as far as the kernel client knows."""

    call: ExecuteCall
    """The call, no longer routed: what it collected is all it will have."""
    overran: bool = False
    """It had not ended at its deadline or when its caller cancelled, so it was interrupted."""
    cancelled: bool = False
    """Its caller had cancelled when it was interrupted (else the deadline had passed)."""
    answered: bool = True
    """The gateway took the interrupt."""
    stopped: bool = True
    """The call is over: done, or its ``idle`` status came."""


class KernelClient:
    """Drives one kernel: create, execute, interrupt, restart, shut down."""

    def __init__(self, http: GatewayHTTP) -> None:
        self.http = http
        self.kernel_id: str | None = None
        self.session = uuid.uuid4().hex
        self._ws: wire_ws.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._calls: dict[str, ExecuteCall] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.connected = False
        self.v1 = False  # whether the gateway accepted the binary v1 wire format
        self.kernel_lost: str | None = None  # set when the server says the kernel died
        self.on_new_kernel: Callable[[KernelClient], None] | None = None
        """Called after a restart or a replacement gave this client a fresh kernel (a
        kept-alive sandbox on a remote gateway sets up its watchdog again); must not raise."""

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create a kernel (with an empty environment request) and connect to it."""
        model = self.http.json(
            "POST", "/api/kernels", {"name": "python3", "env": {}}, expect=(201,), timeout=timeout
        )
        kernel_id = model.get("id") if isinstance(model, dict) else None
        if not is_kernel_id(kernel_id):
            raise GatewayMisbehaved("the gateway's answer to creating a kernel lacks a valid id")
        self.kernel_id = model["id"]
        self.kernel_lost = None
        self.connect(timeout)

    def connect(self, timeout: float = 30.0) -> None:
        """Open the websocket (closing any earlier one) and start its reader."""
        self.disconnect()
        ws = self._open_websocket(timeout)
        # A gateway that does not take v1 answers without a subprotocol: legacy format.
        self.v1 = ws.subprotocol == WS_PROTOCOL_V1
        self._ws = ws
        self.connected = True
        self._reader = threading.Thread(
            target=self._read_loop, args=(ws, self.v1), name=f"enclave-ws-{self.kernel_id}", daemon=True
        )
        self._reader.start()
        self._handshake(timeout)

    def _open_websocket(self, timeout: float) -> wire_ws.WebSocket:
        """The kernel's websocket, offering the v1 subprotocol."""
        endpoint = self.http.endpoint
        deadline = Deadline(timeout)
        try:
            sock = endpoint.connect(deadline.left())
        except OSError as exc:
            raise GatewayUnreachable(
                f"cannot connect to the gateway at {endpoint.describe()}: {exc}"
            ) from exc
        path = f"/api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        try:
            return wire_ws.connect(
                sock,
                endpoint.netloc,
                path,
                {"Authorization": endpoint.auth_header},
                [WS_PROTOCOL_V1],
                deadline,
            )
        except (GatewayMisbehaved, GatewayUnreachable):
            raise
        except GatewayError as exc:  # an HTTP status instead of the upgrade
            raise GatewayError(f"the gateway refused the kernel connection: {exc}", exc.status) from exc

    def disconnect(self) -> None:
        """Close the websocket; calls in flight end as ``disconnected``. Bounded in time
        whatever the peer does: the socket is shut down, which wakes the reader."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.send_close(timeout=0.2)
            ws.shutdown()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2)
        if ws is not None:
            ws.close()
        self.connected = False

    def interrupt(self, timeout: float = 10.0) -> None:
        """Send SIGINT to the kernel."""
        self.http.json("POST", f"/api/kernels/{self.kernel_id}/interrupt", expect=(204,), timeout=timeout)

    def interrupt_call(self, call: ExecuteCall, begin_wait: float = INTERRUPT_TIMEOUT) -> None:
        """Interrupt ``call``'s code, once it has begun. ipykernel ignores a SIGINT that
        lands before the code begins, or drops the request with no reply, so this waits up
        to ``begin_wait`` seconds for the kernel to say it began, then interrupts anyway.
        A call already over, or let go of by its run, is not interrupted: the signal would
        hit whatever runs next."""
        call.began.wait(begin_wait)
        if _over(call):
            return
        call.interrupted = True  # a request dropped with no reply is then no "ok"
        self.interrupt(timeout=INTERRUPT_TIMEOUT)
        # Nothing says the signal arrived, and a few windows of ipykernel's and IPython's
        # lose it; code still running a moment later gets it once more, as a second Ctrl-C.
        if not _ends_within(call, INTERRUPT_AGAIN_AFTER):
            self.interrupt(timeout=INTERRUPT_TIMEOUT)

    def restart(self, timeout: float = 30.0) -> None:
        """Restart the kernel (its state is lost), end the processes it left behind,
        and reconnect."""
        self.http.json("POST", f"/api/kernels/{self.kernel_id}/restart", {}, expect=(200,), timeout=timeout)
        self.kernel_lost = None
        self.reap_strays(timeout)
        self.connect(timeout)
        if self.on_new_kernel is not None:
            self.on_new_kernel(self)

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
            except (OSError, GatewayError):
                pass
        self.reap_strays(timeout)
        self.start(timeout)
        if self.on_new_kernel is not None:
            self.on_new_kernel(self)

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
        try:
            model = loads_bounded(data)
        except (ValueError, RecursionError):
            model = None
        if not isinstance(model, dict):
            raise GatewayMisbehaved("the gateway's record of the kernel is not a JSON object")
        return model

    # -- execution -------------------------------------------------------------------

    def execute(
        self,
        code: str,
        *,
        capture_limit: int,
        output_limit: int,
        rich_limit: int | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
        caller: Caller | None = None,
    ) -> ExecuteCall:
        """Send ``code`` to run; return the call, which the reader thread fills in.
        ``rich_limit`` (bytes of rich outputs kept) is passed on when given; ``listener``
        sees each of the call's messages on the reader thread (live output; it must not
        block). ``caller.call`` is set before the code goes out (an interrupt from another
        thread finds the call through it)."""
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
        limits = {} if rich_limit is None else {"rich_limit": rich_limit}
        return self._request(
            "execute_request",
            content,
            capture_limit,
            output_limit,
            listener=listener,
            caller=caller,
            **limits,
        )

    def run(
        self,
        code: str,
        timeout: float,
        caller: Caller,
        *,
        interrupt_grace: float,
        capture_limit: int,
        output_limit: int,
        rich_limit: int | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> Run:
        """Run ``code`` (see :meth:`execute`) until it is done, ``timeout`` seconds pass or
        ``caller`` cancels. A call that has not ended by then is interrupted and gets
        ``interrupt_grace`` seconds to stop; a gateway that refuses the interrupt is not
        asked again. Either way the call is let go of before this returns."""
        call = self.execute(
            code,
            capture_limit=capture_limit,
            output_limit=output_limit,
            rich_limit=rich_limit,
            listener=listener,
            caller=caller,
        )
        caller.call = call  # set before the send already; a test double's execute may not
        try:
            if self._ends_in_time(call, timeout, caller):
                return Run(call)
            cancelled = caller.cancelled
            try:
                self.interrupt_call(call, begin_wait=interrupt_grace)
                answered = True
            except CONNECT_ERRORS as exc:
                log.debug("interrupt failed: %s", exc)
                answered = False
            stopped = (answered and self.wait(call, interrupt_grace)) or call.idle  # idle: it is over
            return Run(call, overran=True, cancelled=cancelled, answered=answered, stopped=stopped)
        finally:
            self.forget(call)
            call.release()

    def _ends_in_time(self, call: ExecuteCall, timeout: float, caller: Caller) -> bool:
        """Whether ``call`` ends before ``timeout`` seconds pass or ``caller`` cancels."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.wait(call, max(min(left, CANCEL_POLL), 0.0)):
                return True
            if caller.cancelled:
                return False
            if left <= CANCEL_POLL:
                return call.idle  # idle came: the cell is over, whatever became of its reply

    def execute_quietly(self, code: str, limit: int = 8192) -> ExecuteCall:
        """Send enclave-tools' own ``code``: not in the kernel's history, no execution count."""
        content = {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        return self._request("execute_request", content, limit, limit)

    def _request(
        self,
        kind: str,
        content: dict[str, Any],
        capture_limit: int = 100_000,
        output_limit: int = 8000,
        listener: Callable[[dict[str, Any]], None] | None = None,
        caller: Caller | None = None,
        **limits: int,
    ) -> ExecuteCall:
        msg = new_message(kind, content, self.session)
        call = ExecuteCall(msg["msg_id"], capture_limit, output_limit, listener=listener, **limits)
        if caller is not None:
            caller.call = call
        event = threading.Event()
        with self._lock:
            self._calls[call.msg_id] = call
            self._events[call.msg_id] = event
        ws = self._ws
        try:
            if ws is None or not self.connected:
                raise ConnectionError("not connected")
            ws.send(encode_message(msg, self.v1), timeout=SEND_TIMEOUT)
        except (OSError, EnclaveError) as exc:
            log.debug("send failed: %s", exc)
            self._finish(call.msg_id, "disconnected")
        return call

    def _handshake(self, timeout: float) -> None:
        """Wait until a request's reply *and* its idle status come back, so the output
        channel is live (a fresh connection can miss a kernel's first messages)."""
        deadline = time.monotonic() + timeout
        # A fresh websocket usually misses the first idle (the gateway subscribes to the
        # kernel's output as the socket opens), so the first try is short: the second
        # request then answers within milliseconds instead of after a 0.2 s wait.
        wait = HANDSHAKE_FIRST_WAIT
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
        """Wait until ``call`` is done or ``timeout`` seconds pass; return whether it is done.

        A call whose ``idle`` status came but whose reply has not within
        :data:`REPLY_GRACE` seconds after it counts as done."""
        event = self._events.get(call.msg_id)
        if event is None:
            return call.done
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if call.done:
                return True
            now = time.monotonic()
            if call.idle_at is not None and now >= call.idle_at + REPLY_GRACE:
                return True  # the reply is lost: the output is complete once idle came
            wake = [t for t in (end, call.idle_at and call.idle_at + REPLY_GRACE) if t]
            if end is not None and now >= end:
                return False
            event.wait(max(min(wake) - now, 0.0) if wake else None)
            event.clear()  # set again by idle (below) or by the end of the call

    def forget(self, call: ExecuteCall) -> None:
        """Stop routing messages to ``call``."""
        with self._lock:
            self._calls.pop(call.msg_id, None)
            self._events.pop(call.msg_id, None)

    # -- the reader thread -----------------------------------------------------------

    def _read_loop(self, ws: wire_ws.WebSocket, v1: bool) -> None:
        reason = "disconnected"
        try:
            while True:
                message = ws.recv()
                if message is None:
                    break
                if message.discarded:
                    self._discarded(message.discarded)
                    continue
                msg = decode_frame(message.data, v1)
                if msg is None:
                    log.debug("skipped an undecodable frame")
                    continue
                self._dispatch(msg)
        except (OSError, EnclaveError, ValueError) as exc:
            if isinstance(exc, GatewayMisbehaved):
                log.warning("closed the kernel connection: %s", exc)
            else:
                log.debug("websocket closed: %s", exc)
        finally:
            if self._ws is ws:
                self.connected = False
            ws.shutdown()
            self._end_all(reason)

    def _discarded(self, size: int) -> None:
        """A message too large to keep was skipped: count it as dropped output of the calls
        in flight (its owner is unknown without decoding it)."""
        log.warning("skipped a %d-byte message from the gateway (over the size limit)", size)
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            call.log.dropped += size

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
            event = self._events.get(parent)
        if call is None:
            return
        was_idle = call.idle
        if call.feed(msg):
            self._finish(parent, None)
        elif call.idle and not was_idle and event is not None:
            event.set()  # wakes wait(), which starts the reply's grace period

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


def _over(call: ExecuteCall) -> bool:
    """Whether ``call`` has nothing left to interrupt: done, idle, or let go of."""
    return call.done or call.idle or call.released_at is not None


def _ends_within(call: ExecuteCall, seconds: float) -> bool:
    """Whether ``call`` is over within ``seconds`` (looked at every 50 ms; the call's own
    wake-up event belongs to its run)."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while not _over(call):
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.05)
    return True
