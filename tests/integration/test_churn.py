"""Load and churn: concurrent callers never see each other's output, and many
create/run/close cycles leak nothing on the host or the engine."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

from enclave_tools import Sandbox
from enclave_tools.testing import RUN_ID, RUN_LABEL


async def test_two_tasks_on_one_sandbox_are_serialized(sandbox):
    await sandbox.arun("import time\nactive = 0\noverlap = False")
    code = "active += 1\noverlap = overlap or active > 1\ntime.sleep(0.3)\nactive -= 1\nprint('{tag}')"
    first, second = await asyncio.gather(
        sandbox.arun(code.format(tag="task-1")), sandbox.arun(code.format(tag="task-2"))
    )
    assert (first.stdout, second.stdout) == ("task-1\n", "task-2\n")
    assert (await sandbox.arun("overlap")).text == "False"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fifty_cycles_leak_no_containers_threads_or_descriptors(sandbox_config, docker_engine):
    for _ in range(5):  # the first cycles fill the Docker client's connection pool (10 sockets)
        with Sandbox(sandbox_config) as warmup:
            warmup.run("1")
    gc.collect()
    threads, fds = threading.active_count(), _open_fds()
    networks, volumes = len(docker_engine.networks.list()), len(docker_engine.volumes.list())
    for i in range(50):
        with Sandbox(sandbox_config) as sb:
            assert sb.run(f"{i} * 2").text == str(i * 2)
    gc.collect()
    mine = docker_engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
    assert [c.name for c in mine] == []
    assert len(docker_engine.networks.list()) == networks
    assert len(docker_engine.volumes.list()) == volumes
    assert threading.active_count() <= threads + 1
    assert _open_fds() <= fds + 2
