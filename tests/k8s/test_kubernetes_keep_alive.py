"""Kept-alive sandboxes on Kubernetes (the fake cluster, whose kubelet runs real gateways),
across real processes: nothing is kept on the host, so each child finds the sandbox through
the API alone. Turns in three processes keep state; a racing pair of workers ends with one
pod; a killed worker's claim lapses; the idle limit ends a pod with no process left, and
connect then says so; set_timeout stays within the pod's deadline; gc removes what expired.
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
from conftest import NAMESPACE
from kubernetes.client.exceptions import ApiException

from enclave_tools import InvalidInput, Sandbox, SandboxGone, SandboxInUse
from enclave_tools.backends.base import IDLE_EXIT
from enclave_tools.backends.kubernetes import SANDBOX
from enclave_tools.backends.kubernetes.manifests import HOLDER, KEEP_ALIVE, SESSION

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 180.0
"""Watchdog on each child process."""
EXPIRY_WATCHDOG = 120.0
"""Watchdog on a 20 s idle limit ending its pod."""
LEASE = 3.0
"""The children's attach claim, short so that a killed child's lapses quickly."""

PRELUDE = """
import json, os, sys, time
from kubernetes import client
from enclave_tools import Sandbox, SandboxSessions
from enclave_tools.backends.kubernetes import KubernetesBackend
from enclave_tools.config import SandboxConfig
cfg = SandboxConfig.model_validate(json.loads(os.environ["KA_CONFIG"]))
backend = KubernetesBackend(
    os.environ["KA_NAMESPACE"],
    api_client=client.ApiClient(client.Configuration(host=os.environ["KA_API"])),
    connect="pod_ip",
    attach_lease=float(os.environ["KA_LEASE"]),
)
"""


class Children:
    """Child Python processes that reach the fake cluster by its URL only (and whose state
    directory is empty and private: no record on the host)."""

    def __init__(self, config: Any, api: str, state: Path) -> None:
        self.env = {
            **os.environ,
            "KA_CONFIG": config.model_dump_json(),
            "KA_API": api,
            "KA_NAMESPACE": NAMESPACE,
            "KA_LEASE": str(LEASE),
            "XDG_STATE_HOME": str(state),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }

    def run(self, code: str) -> str:
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

    def start(self, code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", PRELUDE + code],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.2)


@pytest.fixture
def kept(fake_cluster, k8s_config, make_backend, tmp_path, monkeypatch):
    """(config, Children, backend) on the fake cluster; the test's host state dir is empty."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = k8s_config.model_copy(update={"startup_timeout": 120})
    return config, Children(config, fake_cluster.url, tmp_path / "child-state"), make_backend()


def kept_pods(cluster, sandbox_id: str) -> list[dict[str, Any]]:
    return cluster.list("pods", f"{SANDBOX}={sandbox_id},{KEEP_ALIVE}=1")


def test_turns_in_three_processes_keep_state_and_a_held_sandbox_is_refused(kept, fake_cluster) -> None:
    config, children, backend = kept
    sid = children.run("""
sb = Sandbox(cfg, keep_alive="5m", backend=backend)
assert sb.run("x = 41").ok
print(sb.id)
sb.detach()
""")
    [pod] = kept_pods(fake_cluster, sid)
    assert pod["metadata"]["name"] == f"enclave-{sid}"
    backend.reap_orphans()  # its maker is gone: no reaper may judge it by an owner process
    assert kept_pods(fake_cluster, sid)
    children.run(f"""
sb = Sandbox.connect({sid!r}, backend=backend)
assert sb.run("x += 1").ok
sb.detach()
""")
    worker = children.start(f"""
sb = Sandbox.connect({sid!r}, backend=backend)
print(sb.run("x").text, flush=True)
time.sleep(600)
""")
    try:
        assert read_line(worker) == "42"
        with pytest.raises(SandboxInUse, match="in use by another process") as refused:
            Sandbox.connect(sid, backend=backend)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    # The token is in the Secret only: not in the pod (labels, annotations, env), nor errors.
    token = backend._token(fake_cluster.get("pods", NAMESPACE, f"enclave-{sid}"))
    assert token not in json.dumps(fake_cluster.get("pods", NAMESPACE, f"enclave-{sid}"))
    assert token not in str(refused.value)
    # The killed worker's claim lapses (LEASE s, plus the clock allowance); then it is ours.
    sb = Sandbox.connect(sid, backend=backend, wait=60)
    try:
        assert sb.run("x").text == "42"
    finally:
        sb.close()
    wait_for(lambda: not kept_pods(fake_cluster, sid), 30, "the pod was not deleted")
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid, backend=backend)


def test_two_workers_racing_for_one_session_share_one_pod(kept, fake_cluster) -> None:
    _config, children, backend = kept
    key = f"race-{uuid.uuid4().hex[:8]}"
    code = f"""
sessions = SandboxSessions(cfg, keep_alive="5m", backend=backend)
with sessions.use({key!r}) as sb:
    r = sb.run("n = globals().get('n', 0) + 1\\nn")
    print(sb.container_id, r.text, flush=True)
"""
    workers = [children.start(code) for _ in range(2)]
    try:
        lines = [read_line(worker) for worker in workers]
        for worker in workers:
            assert worker.wait(CHILD_TIMEOUT) == 0, worker.stderr.read()[-3000:]  # type: ignore[union-attr]
    finally:
        for worker in workers:
            worker.kill()
    (first, a), (second, b) = (line.split() for line in lines)
    assert first == second  # one pod, one kernel
    assert sorted([a, b]) == ["1", "2"]  # one after the other, in the same namespace
    sid = backend.session_sandbox_id(key)
    [pod] = kept_pods(fake_cluster, sid)
    assert pod["metadata"]["labels"][SESSION] == key
    assert not (pod["metadata"].get("annotations") or {}).get(HOLDER)  # both let go
    Sandbox.connect(sid, backend=backend).close()


def test_idle_limit_ends_the_pod_with_no_process_left(kept, fake_cluster) -> None:
    _config, children, backend = kept
    sid = children.run("""
sb = Sandbox(cfg, keep_alive="10m", backend=backend)
sb.run("z = 1")
limits = sb.set_timeout(keep_alive=20)
assert limits["idle_limit"] == 20, limits
print(sb.id)
sb.detach()
""")
    name = f"enclave-{sid}"

    def ended() -> bool:
        pod = fake_cluster.get("pods", NAMESPACE, name)
        return (pod.get("status") or {}).get("phase") == "Failed"

    wait_for(
        ended, EXPIRY_WATCHDOG, f"the pod still ran {EXPIRY_WATCHDOG:g} s after a 20 s idle limit: not ended"
    )
    status = fake_cluster.get("pods", NAMESPACE, name)["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == IDLE_EXIT
    with pytest.raises(SandboxGone, match="not used for longer than its keep_alive"):
        Sandbox.connect(sid, backend=backend)
    assert fake_cluster.get("pods", NAMESPACE, name) is None  # connect removed what expired
    with pytest.raises(SandboxGone, match="is gone"):
        Sandbox.connect(sid, backend=backend)


def test_lifetime_stays_within_the_pods_deadline_and_gc_removes_what_expired(kept, fake_cluster) -> None:
    config, _children, backend = kept
    sb = Sandbox(config, keep_alive="5m", lifetime="10m", backend=backend)
    try:
        sb.run("w = 1")
        name = sb.container_id
        deadline = fake_cluster.get("pods", NAMESPACE, name)["spec"]["activeDeadlineSeconds"]
        assert 600 < deadline <= 700
        with pytest.raises(InvalidInput, match="only shrink"):
            sb.set_timeout(lifetime="1h")  # past the deadline, which Kubernetes will not raise
        limits = sb.set_timeout(lifetime="2m")
        assert limits["lifetime"] == 120
        lowered = fake_cluster.get("pods", NAMESPACE, name)["spec"]["activeDeadlineSeconds"]
        assert 120 < lowered < deadline
        with pytest.raises(ApiException) as refused:  # as the real API server: never raised
            backend.api.patch_namespaced_pod(
                name, NAMESPACE, {"spec": {"activeDeadlineSeconds": lowered + 1}}
            )
        assert refused.value.status == 422
        sb.detach()
        # gc's own backstop: an expiry in the past (as a gateway that ignored its limits
        # would leave it) gets the running pod deleted.
        record = backend.load_record(sb.id)
        record.expires = time.time() - 1
        backend.save_record(record)
        assert backend.reap_orphans() == 1
        wait_for(lambda: fake_cluster.get("pods", NAMESPACE, name) is None, 30, "gc did not delete the pod")
        with pytest.raises(SandboxGone):
            Sandbox.connect(sb.id, backend=backend)
    finally:
        sb.close()
