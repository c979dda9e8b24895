"""A sandbox whose owner runs in another PID namespace on this machine (a container with
--network host, another CI job on the same daemon) survives `enclave-tools gc` and every
other process's reaper while its owner lives; once that owner is gone for good, it is
reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from enclave_tools.backends.docker import LABEL, OWNER_PID, OWNER_PID_NS, DockerBackend
from enclave_tools.backends.owner import pid_namespace
from enclave_tools.testing import RUN_ID, RUN_LABEL

OWNER = textwrap.dedent(
    """
    import sys
    from enclave_tools import Sandbox
    sandbox = Sandbox(image=sys.argv[1], labels={sys.argv[2]: sys.argv[3]}).start()
    print(sandbox.container_id, flush=True)
    sys.stdin.readline()  # wait until told to end
    sandbox.close()
    print("closed", flush=True)
    """
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unshare() -> list[str]:
    """A new PID namespace (with its own /proc); through a user namespace when not root.
    --kill-child: the owner dies with the unshare process, should that be killed."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", "--mount-proc", "--kill-child"]


class ForeignOwner:
    """An owner process in its own PID namespace that starts one sandbox and waits."""

    def __init__(self, image: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [*_unshare(), sys.executable, "-c", OWNER, image, RUN_LABEL, RUN_ID],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.container_id = ""

    def wait_started(self, timeout: float = 180.0) -> str:
        """The owner's sandbox id, once it has started (bounded by a watchdog)."""
        timer = _watchdog(self.process, timeout)
        try:
            self.container_id = self.process.stdout.readline().strip()
        finally:
            timer.cancel()
        assert self.container_id, self.process.stderr.read()
        return self.container_id

    def end(self, timeout: float = 60.0) -> str:
        """Tell the owner to close its sandbox and exit; return what it printed."""
        out, err = self.process.communicate("stop\n", timeout=timeout)
        assert self.process.returncode == 0, err
        return out

    def kill(self) -> None:
        """SIGKILL the owner, its namespace's init (no cleanup at all), then unshare,
        which exits once it has reaped it."""
        if self.process.poll() is not None:
            return
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as handle:
                children = [int(pid) for pid in handle.read().split()]
        except OSError:
            children = []
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # --kill-child then takes the owner down too
            self.process.wait(timeout=30)


def _watchdog(process: subprocess.Popen, timeout: float) -> threading.Timer:
    """Kill ``process`` if it is still there after ``timeout`` seconds (cancel to stop)."""
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    return timer


def _exists(client: Any, container_id: str) -> bool:
    return any(
        c.id == container_id for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
    )


@pytest.fixture
def foreign_owner(kernel_image: str, docker_engine: Any) -> Iterator[ForeignOwner]:
    """A started owner in another PID namespace; its process and sandbox are removed at
    the end whatever happened."""
    owner = ForeignOwner(kernel_image)
    try:
        owner.wait_started()
        yield owner
    finally:
        owner.kill()
        if owner.container_id:
            DockerBackend(docker_engine).remove_container(owner.container_id, None)


def _gc() -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "enclave_tools.cli", "gc"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_a_live_owner_in_another_pid_namespace_keeps_its_sandbox(foreign_owner, docker_engine):
    labels = docker_engine.containers.get(foreign_owner.container_id).labels
    assert labels[OWNER_PID_NS] != pid_namespace()  # it really is another namespace
    assert labels[OWNER_PID] == "1"  # and a pid that, here, is init's
    DockerBackend(docker_engine).reap_orphans()
    assert _exists(docker_engine, foreign_owner.container_id)
    done = _gc()
    assert done.returncode == 0, done.stderr
    assert _exists(docker_engine, foreign_owner.container_id)
    assert "closed" in foreign_owner.end()
    assert not _exists(docker_engine, foreign_owner.container_id)


def test_a_killed_owner_in_another_pid_namespace_is_reaped_from_the_initial_one(foreign_owner, docker_engine):
    if os.stat("/proc/self/ns/pid").st_ino != 0xEFFFFFFC:
        pytest.skip("only a process in the initial PID namespace sees every other namespace")
    foreign_owner.kill()
    done = _gc()
    assert done.returncode == 0, done.stderr
    assert not _exists(docker_engine, foreign_owner.container_id)
