"""SandboxSessions' decisions without Docker: sandboxes that never start a container (the
backend is never reached), the background worker driven by hand."""

from __future__ import annotations

import threading
import time

import pytest

from enclave_tools.errors import SandboxClosed
from enclave_tools.execution import Execution
from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions
from enclave_tools.turns import Turn

WATCHDOG = 10.0
"""Seconds a step may take before the test calls it a hang."""


def _sessions(idle_ttl: float | None = 60.0) -> SandboxSessions:
    sessions = SandboxSessions(idle_ttl=idle_ttl, factory=Sandbox)
    sessions.start = lambda: sessions  # type: ignore[method-assign]  # no background worker
    return sessions


def _age(sessions: SandboxSessions, key: str, seconds: float) -> Sandbox:
    """Make session ``key`` look unused for ``seconds``."""
    sandbox = sessions._sessions[key]
    past = time.monotonic() - seconds
    sessions._last_used[key] = sandbox.last_active = past
    return sandbox


def _next_result_says(sandbox: Sandbox) -> str:
    execution = Execution()
    sandbox._losses.tell(Turn(0), execution, None)
    return execution.text


def test_an_idle_session_is_retired_and_comes_back_saying_its_state_was_lost():
    sessions = _sessions(idle_ttl=60)
    first = sessions.get("a")
    sessions.get("b")
    _age(sessions, "a", 120)
    sessions._retire_idle()
    assert sessions.keys() == ["b"]
    again = sessions.get("a")
    assert again is first  # its own sandbox, with a fresh container on the next run
    said = _next_result_says(again)
    assert "without use" in said and "re-run any setup code" in said
    assert _next_result_says(sessions.get("b")) == ""


def test_a_busy_session_is_never_retired_however_long_it_runs():
    sessions = _sessions(idle_ttl=60)
    sandbox = sessions.get("a")
    running = Turn()
    sandbox._turns.enter(running)  # a call runs
    _age(sessions, "a", 3600)
    sessions._retire_idle()
    assert sessions.keys() == ["a"] and sandbox.busy
    sandbox._turns.leave(running)
    assert _next_result_says(sandbox) == ""


def test_a_session_handed_out_meanwhile_is_kept():
    sessions = _sessions(idle_ttl=60)
    sandbox = sessions.get("a")
    _age(sessions, "a", 120)
    retire = sandbox.retire

    def get_first(reason: str) -> bool:  # a call comes for it just before retirement
        sandbox._turns.enter(Turn())
        return retire(reason)

    sandbox.retire = get_first  # type: ignore[method-assign]
    sessions._retire_idle()
    assert sessions.keys() == ["a"]
    assert _next_result_says(sandbox) == ""


def test_close_refuses_new_work_everywhere_before_ending_what_runs():
    sessions = _sessions(idle_ttl=None)
    busy, other = sessions.get("a"), sessions.get("b")
    running = Turn()
    busy._turns.enter(running)
    waiting = Turn()
    busy._turns.enter(waiting)
    failed: list[BaseException] = []

    def wait_for_turn() -> None:
        try:
            busy._turns.wait(waiting)
        except SandboxClosed as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait_for_turn, daemon=True)
    waiter.start()
    closer = threading.Thread(target=sessions.close, daemon=True)
    closer.start()
    waiter.join(WATCHDOG)  # the waiting call fails at once, while the running one runs
    assert not waiter.is_alive() and len(failed) == 1
    assert closer.is_alive()  # still waiting for the running call
    with pytest.raises(SandboxClosed):
        other.run("1")
    with pytest.raises(SandboxClosed):
        busy.run("1")
    with pytest.raises(SandboxClosed):
        sessions.get("c")
    busy._turns.leave(running)
    closer.join(WATCHDOG)
    assert not closer.is_alive()
