"""Kept-alive sandboxes across real processes: detach in one, connect in another; a killed
worker's kernel survives; racing workers share one kernel; the idle limit ends a sandbox
with no process left; another user is refused.

Each process is a real ``python -c`` child; every container a test makes carries a label
unique to the test and is removed when it ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enclave_tools import Sandbox, SandboxAccessDenied, SandboxGone, SandboxInUse, registry
from enclave_tools.backends.docker import (
    IDLE_EXIT,
    KEEP_ALIVE,
    RUN_DIR,
    SESSION,
    DockerBackend,
    _safe_run_dir,
)
from enclave_tools.config import SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 180.0
"""Watchdog on each child process (a start builds nothing: the image exists)."""
EXPIRY_WATCHDOG = 120.0
"""Watchdog on a 20 s idle limit ending its container."""

PRELUDE = """
import json, os, sys, time
from enclave_tools import Sandbox, SandboxSessions
from enclave_tools.config import SandboxConfig
cfg = SandboxConfig.model_validate(json.loads(os.environ["KA_CONFIG"]))
"""


class Children:
    """Runs child Python processes with this test's config and state directory."""

    def __init__(self, config: SandboxConfig, state: Path) -> None:
        self.env = {
            **os.environ,
            "KA_CONFIG": config.model_dump_json(),
            "XDG_STATE_HOME": str(state),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }

    def run(self, code: str) -> str:
        """Run ``code`` to its end; return its stdout (fails the test on an error)."""
        done = subprocess.run(
            [sys.executable, "-c", PRELUDE + code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
        assert done.returncode == 0, f"child failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    def start(self, code: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``code`` and return the process."""
        return subprocess.Popen(
            [sys.executable, "-c", PRELUDE + code],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )


def read_line(process: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT) -> str:
    """The child's next line of output, within ``timeout`` s (a watchdog, not a sleep)."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    if not selector.select(timeout):
        process.kill()
        pytest.fail(f"the child printed nothing within {timeout:g} s: {process.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    line = process.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, f"the child ended early: {process.stderr.read()[-3000:]}"  # type: ignore[union-attr]
    return line


@pytest.fixture
def kept(sandbox_config: SandboxConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: Any):
    """(config with a label unique to this test, Children); removes the test's containers."""
    label = ("io.enclave-tools.test-keep-alive", uuid.uuid4().hex[:12])
    config = sandbox_config.model_copy(update={"labels": {**sandbox_config.labels, label[0]: label[1]}})
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    children = Children(config, state)
    yield config, children
    backend = DockerBackend(docker_engine)
    for container in docker_engine.containers.list(all=True, filters={"label": f"{label[0]}={label[1]}"}):
        backend.remove_container(container.id, _safe_run_dir((container.labels or {}).get(RUN_DIR)))


def containers_of(engine: Any, config: SandboxConfig, **labels: str) -> list[Any]:
    filters = [f"{k}={v}" for k, v in {**config.labels, **labels}.items()]
    return engine.containers.list(all=True, filters={"label": filters})


def test_turns_in_three_processes_keep_state(kept, docker_engine) -> None:
    config, children = kept
    sid = children.run("""
sb = Sandbox(cfg, keep_alive="5m")
assert sb.run("x = 41").ok
print(sb.id)
sb.detach()
""")
    # The maker is gone: no reaper may judge the sandbox by an owner.
    DockerBackend(docker_engine).reap_orphans()
    assert [c.status for c in containers_of(docker_engine, config)] == ["running"]
    children.run(f"""
sb = Sandbox.connect({sid!r})
assert sb.run("x += 1").ok
sb.detach()
""")
    out = children.run(f"""
sb = Sandbox.connect({sid!r})
print(sb.run("x").text)
sb.close()
""")
    assert out == "42"
    assert containers_of(docker_engine, config) == []
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid)


def test_killed_worker_restarted_finds_its_kernel(kept, docker_engine) -> None:
    config, children = kept
    key = f"conversation-{uuid.uuid4().hex[:8]}"
    worker = children.start(f"""
sessions = SandboxSessions(cfg, keep_alive="5m")
sb = sessions.get({key!r})
assert sb.run("y = 7").ok
print(sb.id, flush=True)
time.sleep(600)
""")
    try:
        sid = read_line(worker)
        # While the worker is attached, another process is refused, and says why.
        with pytest.raises(SandboxInUse, match="in use by another process"):
            Sandbox.connect(sid)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    DockerBackend(docker_engine).reap_orphans()
    assert [c.status for c in containers_of(docker_engine, config, **{SESSION: key})] == ["running"]
    out = children.run(f"""
sessions = SandboxSessions(cfg, keep_alive="5m")
with sessions.use({key!r}) as sb:
    print(sb.id, sb.run("y").text)
""")
    assert out == f"{sid} 7"


def test_two_workers_racing_for_one_session_share_one_kernel(kept, docker_engine) -> None:
    config, children = kept
    key = f"race-{uuid.uuid4().hex[:8]}"
    code = f"""
sessions = SandboxSessions(cfg, keep_alive="5m")
with sessions.use({key!r}) as sb:
    r = sb.run("import os\\nn = globals().get('n', 0) + 1\\nn")
    print(sb.container_id, r.text)
"""
    workers = [children.start(code) for _ in range(2)]
    lines = [read_line(worker) for worker in workers]
    for worker in workers:
        assert worker.wait(CHILD_TIMEOUT) == 0, worker.stderr.read()[-3000:]  # type: ignore[union-attr]
    (first, a), (second, b) = (line.split() for line in lines)
    assert first == second  # one kernel
    assert sorted([a, b]) == ["1", "2"]  # one after the other, in the same namespace
    assert len(containers_of(docker_engine, config, **{SESSION: key})) == 1


def test_idle_limit_ends_the_sandbox_with_no_process_left(kept, docker_engine) -> None:
    config, children = kept
    sid = children.run("""
sb = Sandbox(cfg, keep_alive="10m")
sb.run("z = 1")
limits = sb.set_timeout(keep_alive=20)
assert limits["idle_limit"] == 20, limits
print(sb.id)
sb.detach()
""")
    [container] = containers_of(docker_engine, config)
    deadline = time.monotonic() + EXPIRY_WATCHDOG
    while True:
        container.reload()
        if container.status != "running":
            break
        assert time.monotonic() < deadline, f"still running {EXPIRY_WATCHDOG:g} s after a 20 s idle limit"
        time.sleep(1)
    assert container.attrs["State"]["ExitCode"] == IDLE_EXIT
    with pytest.raises(SandboxGone, match="not used for longer than its keep_alive"):
        Sandbox.connect(sid)
    assert containers_of(docker_engine, config) == []  # connect cleaned up what expired
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid)


def test_gc_removes_what_expired_and_keeps_what_runs(kept, docker_engine) -> None:
    config, _children = kept
    backend = DockerBackend(docker_engine)
    alive = Sandbox(config, keep_alive="5m")
    ended = Sandbox(config, keep_alive="5m")
    try:
        alive.start()
        ended.start()
        ended_container = ended.container_id
        ended.detach()
        alive.detach()
        docker_engine.api.stop(ended_container, timeout=1)
        backend.reap_orphans()
        left = containers_of(docker_engine, config)
        assert [(c.name, c.status) for c in left] == [(f"enclave-{alive.id}", "running")]
        assert left[0].labels[KEEP_ALIVE] == "1"
        assert {r.id for r in registry.records()} == {alive.id}
    finally:
        alive.close()
        ended.close()


def _connect_as_nobody(sandbox_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``Sandbox.connect(sandbox_id)`` run as uid 65534."""
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            f"from enclave_tools import Sandbox\nSandbox.connect({sandbox_id!r})",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def test_the_record_is_private_and_another_user_is_refused(kept, docker_engine, tmp_path) -> None:
    config, children = kept
    sb = Sandbox(config, keep_alive="5m")
    try:
        sb.run("secret = 1")
        path = registry.state_dir() / f"{sb.id}.json"
        assert path.stat().st_mode & 0o777 == 0o600
        assert registry.state_dir().stat().st_mode & 0o777 == 0o700
        token = registry.load(sb.id).token
        [container] = containers_of(docker_engine, config)
        assert token not in json.dumps(container.attrs)  # not in labels, env, command
        assert token not in docker_engine.api.logs(container.id).decode("utf-8", "replace")
        sb.detach()
        if os.getuid() == 0:  # a real other user: uid 65534 with this user's state directory
            # The checkout may sit in a private directory (mktemp -d): let that user read the code.
            mode = ROOT.stat().st_mode & 0o7777
            ROOT.chmod(mode | 0o005)
            try:
                done = _connect_as_nobody(sb.id, children.env)
            finally:
                ROOT.chmod(mode)
            assert done.returncode != 0
            assert "SandboxAccessDenied" in done.stderr and "another user" in done.stderr, done.stderr[-2000:]
            assert token not in done.stderr
        os.chmod(path, 0o644)  # readable by others: its token may be known, refuse it
        with pytest.raises(SandboxAccessDenied, match="readable by other users") as refused:
            Sandbox.connect(sb.id)
        assert token not in str(refused.value)
        os.chmod(path, 0o600)
        sb = Sandbox.connect(sb.id)
        assert sb.run("secret").text == "1"
    finally:
        sb.close()


def test_gc_removes_a_running_sandbox_past_its_recorded_lifetime(kept, docker_engine) -> None:
    """The host's backstop: a gateway that did not end its sandbox when its lifetime was up."""
    config, _children = kept
    sb = Sandbox(config, keep_alive="5m")
    try:
        sb.start()
        sb.detach()
        record = registry.load(sb.id)
        record.expires = time.time() - 3600  # as if its lifetime ended an hour ago
        registry.save(record)
        assert [c.status for c in containers_of(docker_engine, config)] == ["running"]
        DockerBackend(docker_engine).reap_orphans()
        assert containers_of(docker_engine, config) == []
        assert registry.records() == []
    finally:
        sb.close()
