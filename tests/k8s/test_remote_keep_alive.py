"""Kept-alive sandboxes on a remote gateway (a gateway container the test starts), across
real processes of this host: turns in three processes keep state; a racing pair of workers
ends with one kernel; the watchdog ends an idle kernel with no process left, and connect
then says so and deletes it; gc deletes a kernel past its lifetime. The record keeps no
token (the backend has the gateway's).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_remote_gateway import _delete_kernels, _kernels, _run_gateway, _url_when_up

from enclave_tools import Sandbox, SandboxGone, registry
from enclave_tools.backends.remote import RemoteGatewayBackend

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 180.0
EXPIRY_WATCHDOG = 90.0
"""Watchdog on a 5 s idle limit ending its kernel."""

PRELUDE = """
import os, sys
from enclave_tools import Sandbox, SandboxSessions
from enclave_tools.backends.remote import RemoteGatewayBackend
backend = RemoteGatewayBackend(os.environ["KA_URL"], os.environ["KA_TOKEN"])
"""


@pytest.fixture(scope="module")
def gateway(docker_engine, kernel_image):
    token = secrets.token_urlsafe(24)
    container = _run_gateway(docker_engine, kernel_image, token)
    try:
        yield _url_when_up(container, token), token, container
    finally:
        container.remove(force=True)


@pytest.fixture
def kept(gateway, tmp_path, monkeypatch):
    """(run a child, backend, gateway); every kernel is deleted after the test."""
    url, token, container = gateway
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    env = {
        **os.environ,
        "KA_URL": url,
        "KA_TOKEN": token,
        "XDG_STATE_HOME": str(state),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    def start(code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", PRELUDE + code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(code: str) -> str:
        child = start(code)
        out, err = child.communicate(timeout=CHILD_TIMEOUT)
        assert child.returncode == 0, f"child failed:\n{err[-3000:]}"
        return out.strip()

    yield run, start, RemoteGatewayBackend(url, token), gateway
    _delete_kernels(url, token)


def test_turns_in_three_processes_keep_state_and_no_token_is_recorded(kept) -> None:
    run, _start, backend, (url, token, _) = kept
    sid = run("""
sb = Sandbox(keep_alive="5m", backend=backend)
assert sb.run("x = 41").ok
print(sb.id)
sb.detach()
""")
    path = registry.state_dir() / f"{sid}.json"
    assert token not in path.read_text()  # the gateway's token is the backend's, not the record's
    run(f"""
sb = Sandbox.connect({sid!r}, backend=backend)
assert sb.run("x += 1").ok
sb.detach()
""")
    assert (
        run(f"""
sb = Sandbox.connect({sid!r}, backend=backend)
print(sb.run("x").text)
sb.close()
""")
        == "42"
    )
    assert _kernels(url, token) == []  # close deleted the kernel
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid, backend=backend)


def test_two_workers_racing_for_one_session_share_one_kernel(kept) -> None:
    _run, start, _backend, (url, token, _) = kept
    key = f"race-{uuid.uuid4().hex[:8]}"
    code = f"""
sessions = SandboxSessions(keep_alive="5m", backend=backend)
with sessions.use({key!r}) as sb:
    r = sb.run("n = globals().get('n', 0) + 1\\nn")
    print(sb._kernel.kernel_id, r.text, flush=True)
"""
    workers = [start(code) for _ in range(2)]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=CHILD_TIMEOUT)
        assert worker.returncode == 0, err[-3000:]
        outputs.append(out.split())
    (first, a), (second, b) = outputs
    assert first == second
    assert sorted([a, b]) == ["1", "2"]
    assert [k["id"] for k in _kernels(url, token)] == [first]


def test_idle_limit_ends_the_kernel_with_no_process_left(kept) -> None:
    run, _start, backend, (url, token, container) = kept
    sid, kernel_id, pid = run("""
sb = Sandbox(keep_alive="10m", backend=backend)
pid = sb.run("import os; os.getpid()").text
limits = sb.set_timeout(keep_alive=5)
assert limits["idle_limit"] == 5, limits
print(sb.id, sb._kernel.kernel_id, pid)
sb.detach()
""").split()
    assert pid.isdigit()

    def kernel_process_alive() -> bool:  # the gateway reaps and restarts an exited kernel
        return container.exec_run(["test", "-d", f"/proc/{pid}"]).exit_code == 0

    deadline = time.monotonic() + EXPIRY_WATCHDOG
    while kernel_process_alive():
        assert time.monotonic() < deadline, (
            f"the kernel was not ended {EXPIRY_WATCHDOG:g} s after a 5 s idle limit: {_kernels(url, token)}"
        )
        time.sleep(0.5)
    with pytest.raises(SandboxGone, match="restarted with no state"):
        Sandbox.connect(sid, backend=backend)
    assert kernel_id not in [k["id"] for k in _kernels(url, token)]  # connect deleted it
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid, backend=backend)


def test_gc_deletes_a_kernel_past_its_lifetime(kept) -> None:
    _run, _start, backend, (url, token, _) = kept
    sb = Sandbox(keep_alive="5m", backend=backend)
    sb.run("1")
    kernel_id = sb._kernel.kernel_id
    sb.detach()
    record = registry.load(sb.id)
    record.expires = time.time() - 1  # as if its lifetime passed while its watchdog was stopped
    registry.save(record)
    assert backend.reap_orphans() == 1
    assert kernel_id not in [k["id"] for k in _kernels(url, token)]
    with pytest.raises(SandboxGone):
        Sandbox.connect(sb.id, backend=backend)
