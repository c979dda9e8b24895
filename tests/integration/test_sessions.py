"""One sandbox per session, a warm pool, and retirement of idle sessions, for real."""

from __future__ import annotations

import time

import pytest

from enclave_tools import Sandbox, SandboxClosed, SandboxSessions


@pytest.fixture
def sessions_factory(sandbox_config):
    made = []

    def make(**kwargs):
        made.append(SandboxSessions(factory=lambda: Sandbox(sandbox_config), **kwargs))
        return made[-1]

    yield make
    for sessions in made:
        sessions.close()


def test_one_sandbox_per_session(sessions_factory):
    sessions = sessions_factory()
    a, b = sessions.get("a"), sessions.get("b")
    assert a is sessions.get("a") and a is not b
    a.run("who = 'a'")
    b.run("who = 'b'")
    assert sessions.get("a").run("who").text == "'a'"
    assert sessions.get("b").run("who").text == "'b'"
    assert sorted(sessions.keys()) == ["a", "b"]
    sessions.release("a")
    assert sessions.get("a").run("'who' in dir()").text == "False"


def test_warm_pool_hands_out_started_sandboxes_and_refills(sessions_factory):
    sessions = sessions_factory(warm=2)
    sessions.start()
    assert sessions.wait_ready(timeout=120)
    first = sessions.get("conversation-1")
    assert first.started  # a warm sandbox: its kernel is already running
    assert first.run("1 + 1").text == "2"
    assert sessions.wait_ready(timeout=120)  # the pool was refilled in the background
    assert sessions.ready == 2


def test_idle_sessions_are_retired_and_the_loss_is_said(sessions_factory, docker_engine):
    sessions = sessions_factory(idle_ttl=1.0)
    old = sessions.get("chat")
    old.run("x = 1")
    container_id = old.container_id

    def container_exists():
        return any(c.id == container_id for c in docker_engine.containers.list(all=True))

    deadline = time.monotonic() + 30
    while ("chat" in sessions.keys() or container_exists()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the retirement worker runs on its own schedule; poll its effects
    assert "chat" not in sessions.keys()
    assert not container_exists()
    fresh = sessions.get("chat").run("'x' in dir()")
    assert fresh.text.startswith("False")
    assert fresh.state_lost and "without use" in fresh.text


def test_close_removes_warm_and_used_sandboxes(sessions_factory):
    sessions = sessions_factory(warm=1)
    sessions.start()
    sessions.wait_ready(timeout=120)
    used = sessions.get("x")
    used.run("1")
    warm_left = sessions.ready
    sessions.close()
    assert not used.started and warm_left >= 0
    with pytest.raises(SandboxClosed):
        sessions.get("y")
