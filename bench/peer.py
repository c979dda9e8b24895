"""The peer side of the benchmark: ms-enclave's ``DockerNotebookSandbox`` on our image.

Run by bench/run.py with ``bench/.venv-peer/bin/python`` (ms-enclave lives in its own
virtual environment), once per operation, each in a fresh process::

    peer.py OP '{"image": "...", "reps": 5, ...}'

It prints ``BENCH-JSON: {...}`` as its last line. The operations and their answers mirror
bench/ours.py; one the peer cannot do answers ``{"na": "why"}``.

How ms-enclave is driven (read from its source, ms_enclave/sandbox/boxes/docker_notebook.py):

* ``DockerNotebookConfig(image=<our image>)``: the image exists, so ms-enclave skips its
  own build (which needs python:3.12-slim from a registry).
* ``command=`` ms-enclave's own gateway command (the CMD of the image it would build):
  ``jupyter kernelgateway --KernelGatewayApp.ip=0.0.0.0 --KernelGatewayApp.port=8888
  --KernelGatewayApp.allow_origin=*``, so the peer runs the stock gateway, not ours, and
  with ``JUPYTER_CONFIG_DIR`` pointed at an empty directory it runs with the stock settings
  too, as ms-enclave ships it (not our gateway's config: TCP_NODELAY, rate limits, ...).
* the same limits as our default sandbox (2g, 1 CPU), working dir /workspace;
* a distinct host port per sandbox, published on 127.0.0.1 (ms-enclave's default is
  0.0.0.0:8888, which would expose an unauthenticated kernel and allow one sandbox at a time);
* code runs through its ``notebook_executor`` tool: ``await sandbox.execute_tool(...)``;
  teardown is ``await sandbox.stop()`` (stop the container, then remove it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ms_enclave.sandbox.boxes import DockerNotebookSandbox  # noqa: E402
from ms_enclave.sandbox.boxes.docker_sandbox import DockerSandbox  # noqa: E402
from ms_enclave.sandbox.manager import LocalSandboxManager  # noqa: E402
from ms_enclave.sandbox.model import DockerNotebookConfig, SandboxType  # noqa: E402
from stats import (  # noqa: E402
    RssSampler,
    concurrency_runs,
    container_cpu,
    container_memory,
    host_cpu,
    main,
    rss_bytes,
    run_concurrently,
)

TOOL = "notebook_executor"
GATEWAY_COMMAND = [
    "jupyter",
    "kernelgateway",
    "--KernelGatewayApp.ip=0.0.0.0",
    "--KernelGatewayApp.port=8888",
    "--KernelGatewayApp.allow_origin=*",
]
PLOT = "plt.figure(); plt.plot([1, 3, 2]); plt.show()"


# -- driving one sandbox ------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(image: str, port: int) -> DockerNotebookConfig:
    """ms-enclave's notebook config on our image, with its own gateway command."""
    return DockerNotebookConfig(
        image=image,
        command=GATEWAY_COMMAND,
        env_vars={"JUPYTER_CONFIG_DIR": "/tmp/stock-gateway-config"},  # stock settings
        port=port,
        tools_config={TOOL: {}},
        working_dir="/workspace",
        memory_limit="2g",
        cpu_limit=1.0,
    )


CREATED: list[DockerNotebookSandbox] = []
"""Every sandbox this process made, so that none outlives it (see ``remove_leftovers``)."""


def new_sandbox(image: str) -> DockerNotebookSandbox:
    """A not yet started peer sandbox on its own loopback port."""
    port = free_port()
    sandbox = DockerNotebookSandbox(make_config(image, port))
    sandbox.config.ports["8888/tcp"] = ("127.0.0.1", port)  # not 0.0.0.0
    CREATED.append(sandbox)
    return sandbox


def remove_leftovers() -> None:
    """Remove the container of any sandbox not stopped (after a failure)."""
    for sandbox in CREATED:
        if sandbox.container is not None:
            with contextlib.suppress(Exception):
                sandbox.container.remove(force=True)


def run(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop (one per call and thread)."""
    return asyncio.run(coro)


async def execute(sandbox: DockerNotebookSandbox, code: str) -> Any:
    """One cell through ms-enclave's notebook tool; raises if the tool failed."""
    result = await sandbox.execute_tool(TOOL, {"code": code, "timeout": 120})
    if result.error and "Execution failed" in result.error:
        raise RuntimeError(result.error)
    return result


def start_many(image: str, count: int, parallel: int = 4) -> list[DockerNotebookSandbox]:
    """Start ``count`` sandboxes, ``parallel`` at a time, each with ``x = 1`` run."""

    def one(_: int) -> DockerNotebookSandbox:
        sandbox = new_sandbox(image)
        run(sandbox.start())
        run(execute(sandbox, "x = 1"))
        return sandbox

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, range(count)))


def stop_many(sandboxes: list[DockerNotebookSandbox]) -> None:
    """Stop and remove sandboxes in parallel."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda sb: run(sb.stop()), sandboxes))


@contextlib.contextmanager
def phase_timer(phases: dict[str, float]):
    """Time ms-enclave's start phases by wrapping its methods for the duration."""
    wrapped = {
        "image_lookup": (DockerNotebookSandbox, "_build_jupyter_image"),
        "container_create_start": (DockerSandbox, "start"),
        "gateway_ready": (DockerNotebookSandbox, "_wait_for_jupyter_ready"),
        "kernel_create_connect": (DockerNotebookSandbox, "_create_kernel"),
    }
    originals = {name: getattr(cls, attr) for name, (cls, attr) in wrapped.items()}

    def wrap(name: str, original: Callable) -> Callable:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

        return timed

    for name, (cls, attr) in wrapped.items():
        setattr(cls, attr, wrap(name, originals[name]))
    try:
        yield phases
    finally:
        for name, (cls, attr) in wrapped.items():
            setattr(cls, attr, originals[name])


# -- the operations -------------------------------------------------------------------------


def op_cold(image: str, reps: int, **_: Any) -> dict:
    """Constructing a sandbox to the first result; then its teardown."""
    stop_many(start_many(image, 1))  # the first start in a process pays for imports
    first, close, phases = [], [], []
    for _ in range(reps):
        with phase_timer({}) as rep_phases:
            start = time.perf_counter()
            sandbox = new_sandbox(image)
            run(sandbox.start())
            result = run(execute(sandbox, "x = 1\nx"))
            first.append(time.perf_counter() - start)
        assert "1" in (result.output or ""), result
        start = time.perf_counter()
        run(sandbox.stop())
        close.append(time.perf_counter() - start)
        rep_phases["first_execute_and_rest"] = first[-1] - sum(rep_phases.values())
        phases.append(rep_phases)
    return {"first_result_s": first, "close_s": close, "phases": phases}


def op_start_cost(image: str, reps: int, **_: Any) -> dict:
    """As bench/ours.py: one sandbox at a time, to the first result, with its CPU cost."""
    stop_many(start_many(image, 1))
    first, host, container = [], [], []
    for _ in range(reps):
        cpu = host_cpu()
        start = time.perf_counter()
        sandbox = new_sandbox(image)
        try:
            run(sandbox.start())
            result = run(execute(sandbox, "x = 1\nx"))
            assert "1" in (result.output or ""), result
            first.append(time.perf_counter() - start)
            host.append(host_cpu() - cpu)
            container.append(container_cpu(sandbox.container.id))
        finally:
            run(sandbox.stop())
    return {"first_result_s": first, "host_cpu_s": host, "container_cpu_s": container}


def op_start_rate(image: str, sandboxes: int, parallel: int, **_: Any) -> dict:
    """As bench/ours.py: ``sandboxes`` started ``parallel`` at a time, each to its first
    result, then stopped."""
    stop_many(start_many(image, 1))

    def one(_: int) -> None:
        sandbox = new_sandbox(image)
        try:
            run(sandbox.start())
            run(execute(sandbox, "x = 1\nx"))
        finally:
            run(sandbox.stop())

    cpu = host_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(sandboxes)))
    wall = time.perf_counter() - start
    return {"per_minute": [60 * sandboxes / wall], "host_cpu_per_sandbox_s": [(host_cpu() - cpu) / sandboxes]}


def op_warm(image: str, reps: int, **_: Any) -> dict:
    """A pool of one (``initialize_pool``), then the first result through the pool."""
    times = []
    for _ in range(reps):
        port = free_port()
        config = make_config(image, port)
        config.ports["8888/tcp"] = ("127.0.0.1", port)

        async def once(config: Any = config) -> float:
            manager = LocalSandboxManager()
            await manager.start()
            try:
                await manager.initialize_pool(1, SandboxType.DOCKER_NOTEBOOK, config)
                start = time.perf_counter()
                result = await manager.execute_tool_in_pool(TOOL, {"code": "x = 1\nx"})
                elapsed = time.perf_counter() - start
                assert "1" in (result.output or ""), result
                return elapsed
            finally:
                await manager.stop()

        times.append(run(once()))
    return {
        "acquire_first_result_s": times,
        "note": "ms-enclave's pool shares its sandboxes between callers and reuses them "
        "(no fresh sandbox per session)",
    }


def op_roundtrip(image: str, batches: int, calls: int, **_: Any) -> dict:
    """``x`` repeatedly through the notebook tool, in batches."""
    sandbox = start_many(image, 1)[0]
    samples: list[list[float]] = []
    try:

        async def batch() -> list[float]:
            for _ in range(5):
                await execute(sandbox, "x")
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                result = await execute(sandbox, "x")
                times.append(time.perf_counter() - start)
            assert "1" in (result.output or ""), result
            return times

        for _ in range(batches):
            samples.append(run(batch()))
            time.sleep(0.2)
    finally:
        stop_many([sandbox])
    return {"configs": {"execute_tool": samples}}


def op_output(image: str, reps: int, **_: Any) -> dict:
    """1 MB and 10 MB of stdout; host RSS growth during the 10 MB run."""
    sandbox = start_many(image, 1)[0]
    out: dict[str, list] = {
        "1mb_s": [],
        "10mb_s": [],
        "1mb_bytes": [],
        "10mb_bytes": [],
        "10mb_host_growth": [],
    }
    try:
        for _ in range(reps):
            for label, size in (("1mb", 10**6), ("10mb", 10**7)):
                with RssSampler() as sampler:
                    start = time.perf_counter()
                    result = run(execute(sandbox, f"print('x' * {size})"))
                    out[f"{label}_s"].append(time.perf_counter() - start)
                out[f"{label}_bytes"].append(len(result.output or "") + len(result.error or ""))
                if label == "10mb":
                    out["10mb_host_growth"].append(sampler.growth)
                del result
    finally:
        stop_many([sandbox])
    return out


def op_plot(image: str, reps: int, **_: Any) -> dict:
    """A matplotlib plot: ms-enclave keeps stream, execute_result and error messages only."""
    sandbox = start_many(image, 1)[0]
    try:
        run(execute(sandbox, "import matplotlib.pyplot as plt"))
        times, outputs = [], []
        for _ in range(reps):
            start = time.perf_counter()
            result = run(execute(sandbox, PLOT))
            times.append(time.perf_counter() - start)
            outputs.append(repr(result.output)[:200])
    finally:
        stop_many([sandbox])
    return {
        "na": "drops display_data: no image comes back",
        "plot_s_without_image": times,
        "outputs": outputs[:1],
    }


def op_memory(image: str, sandboxes: int, rounds: int, **_: Any) -> dict:
    """Idle container memory, and host RSS growth per open sandbox."""
    warmup = start_many(image, 1)  # imports, docker client and caches: not per sandbox
    stop_many(warmup)
    per_sandbox, idle = [], []
    for _ in range(rounds):
        before = rss_bytes()
        opened = start_many(image, sandboxes)
        time.sleep(2.0)
        per_sandbox.append((rss_bytes() - before) / sandboxes)
        for sandbox in opened:
            idle.append(container_memory(sandbox.client, sandbox.container.id))
        stop_many(opened)
    return {"host_per_sandbox_bytes": per_sandbox, "container_idle_bytes": idle}


def op_concurrency(
    image: str, levels: list[int], cells: int, reps: int, paced: list[list[float]] = (), **_: Any
) -> dict:
    """As bench/ours.py: back to back, then paced at ``rate`` cells/s per sandbox."""
    runs = concurrency_runs(levels, cells, paced)
    opened = start_many(image, max(level for _, level, _, _ in runs))
    out: dict[str, list] = {}
    try:
        for key, level, interval, count in runs:
            for _ in range(reps):
                out.setdefault(key, []).append(concurrent_cells(opened[:level], count, interval))
    finally:
        stop_many(opened)
    return out


def concurrent_cells(
    sandboxes: list[DockerNotebookSandbox], cells: int, interval: float | None = None
) -> dict:
    """Each sandbox runs ``cells`` cells in its own thread (its own event loop), paced by
    ``interval`` as in stats.paced_calls."""

    def worker(sandbox: DockerNotebookSandbox) -> list[float]:
        async def go() -> list[float]:
            times = []
            due = time.perf_counter() + (random.uniform(0, interval) if interval else 0)
            for _ in range(cells):
                if interval:
                    await asyncio.sleep(max(due - time.perf_counter(), 0))
                    due += interval
                start = time.perf_counter()
                await execute(sandbox, "x")
                times.append(time.perf_counter() - start)
            return times

        return run(go())

    workers = [lambda sb=sb: worker(sb) for sb in sandboxes]
    return run_concurrently(workers, [sb.container.id for sb in sandboxes])


OPS = {
    "cold": op_cold,
    "start_cost": op_start_cost,
    "start_rate": op_start_rate,
    "refill": lambda **_: {"na": "its pool shares and reuses sandboxes: nothing refills"},
    "warm": op_warm,
    "roundtrip": op_roundtrip,
    "output": op_output,
    "plot": op_plot,
    "memory": op_memory,
    "concurrency": op_concurrency,
}


if __name__ == "__main__":
    main(OPS)
