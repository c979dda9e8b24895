"""Our side of the benchmark: enclave-tools through its public API (and the adapters).

Run by bench/run.py with the project's venv, once per operation, each in a fresh process
(so host memory figures start from a clean process)::

    ours.py OP '{"image": "...", "reps": 5, ...}'

It prints ``BENCH-JSON: {...}`` as its last line; bench/peer.py answers the same operations
for ms-enclave. Times are seconds, memory bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stats import (  # noqa: E402
    RssSampler,
    concurrency_runs,
    container_cpu,
    container_memory,
    host_cpu,
    main,
    paced_calls,
    rss_bytes,
    run_concurrently,
)

import enclave_tools.image  # noqa: E402
import enclave_tools.lifecycle  # noqa: E402
from enclave_tools import Sandbox, SandboxSessions  # noqa: E402
from enclave_tools.backends.docker import DockerBackend  # noqa: E402
from enclave_tools.kernel import KernelClient  # noqa: E402

SANDBOX_USER = "10001:10001"
VENV_PYTHON = "/opt/enclave/venv/bin/python"
PLOT = "plt.figure(); plt.plot([1, 3, 2]); plt.show()"


# -- helpers ------------------------------------------------------------------------------


def open_sandbox(image: str, **config: Any) -> Sandbox:
    """A started sandbox on ``image`` with ``x = 1`` defined."""
    sandbox = Sandbox(image=image, build_image=False, **config)
    execution = sandbox.run("x = 1")
    if not execution.ok:
        raise RuntimeError(f"setup failed: {execution.text}")
    return sandbox


def open_many(image: str, count: int, parallel: int = 4) -> list[Sandbox]:
    """Start ``count`` sandboxes, ``parallel`` at a time."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: open_sandbox(image), range(count)))


def close_many(sandboxes: list[Sandbox]) -> None:
    """Close sandboxes in parallel."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda sb: sb.close(), sandboxes))


def time_calls(fn: Callable[[], Any], calls: int, warmup: int = 5) -> list[float]:
    """Seconds per call of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def expect_one(execution: Any) -> Any:
    """Check that a trivial cell answered ``1`` (after 1000 cells IPython also warns, on
    stderr, that it flushes its output cache: the kernel's normal behaviour)."""
    if not execution.ok or not execution.text.endswith("1"):
        raise RuntimeError(f"unexpected answer {execution.text!r}")
    return execution


@contextlib.contextmanager
def phase_timer(phases: dict[str, float]):
    """Time the phases of a cold start by wrapping the functions that do them."""
    wrapped = {
        "docker_client_image_lookup": (enclave_tools.image, "ensure_image"),
        "container_create_start": (DockerBackend, "start"),
        "gateway_ready": (enclave_tools.lifecycle, "wait_ready"),
        "kernel_create_connect": (KernelClient, "start"),
    }
    originals = {name: getattr(owner, attr) for name, (owner, attr) in wrapped.items()}

    def wrap(name: str, original: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

        return timed

    for name, (owner, attr) in wrapped.items():
        setattr(owner, attr, wrap(name, originals[name]))
    try:
        yield phases
    finally:
        for name, (owner, attr) in wrapped.items():
            setattr(owner, attr, originals[name])


# -- the floor ------------------------------------------------------------------------------


def kernel_floor(sandbox: Sandbox, calls: int) -> list[float]:
    """The kernel's own round trip, measured inside the container over ZMQ (bench/floor.py),
    while the host sends nothing.

    The host's websocket is closed meanwhile (private API: the next ``run`` reconnects), so
    the gateway does not forward the floor's messages to the host while it is measured.
    """
    kernel = sandbox._kernel
    kernel.disconnect()
    with open(os.path.join(HERE, "floor.py"), "rb") as script:
        command = [VENV_PYTHON, "-", str(calls), getattr(kernel, "kernel_id", "") or ""]
        done = in_container(sandbox, command, stdin=script)
    return json.loads(done.strip().splitlines()[-1])["times"]


def in_container(sandbox: Sandbox, command: list[str], stdin: Any = None) -> str:
    """Run ``command`` in the sandbox's container as its user; its stdout."""
    done = subprocess.run(
        ["docker", "exec", "-i", "-u", SANDBOX_USER, sandbox.container_id, *command],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


def gateway_import_probe(sandbox: Sandbox, reps: int = 3) -> dict:
    """Inside a running sandbox: seconds for a bare interpreter, and for importing the
    gateway as its start does (its bytecode bundle first, where the image has one; then
    ``enclave_gateway``, which imports kernel_gateway), wall and CPU, with warm page cache."""
    code = (
        "import time; t = time.perf_counter(); c = time.process_time()\n"
        "try:\n import enclave_bundle; enclave_bundle.install('/opt/enclave/gateway/imports.bundle')\n"
        "except ImportError:\n pass\n"
        "import enclave_gateway; print(time.perf_counter() - t, time.process_time() - c)"
    )
    bare, imports, cpu = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        in_container(sandbox, [VENV_PYTHON, "-c", "pass"])
        bare.append(time.perf_counter() - start)
        wall, used = in_container(sandbox, [VENV_PYTHON, "-c", code]).split()
        imports.append(float(wall))
        cpu.append(float(used))
    return {
        "docker_exec_bare_python_s": bare,
        "import_enclave_gateway_s": imports,
        "import_enclave_gateway_cpu_s": cpu,
    }


# -- the operations -------------------------------------------------------------------------


def op_cold(image: str, reps: int, **_: Any) -> dict:
    """``Sandbox()`` to the first result, with the image present; then ``close()``."""
    open_sandbox(image).close()  # the first start in a process pays for imports
    first, close, phases = [], [], []
    for _ in range(reps):
        with phase_timer({}) as rep_phases:
            start = time.perf_counter()
            sandbox = Sandbox(image=image, build_image=False)
            expect_one(sandbox.run("x = 1\nx"))
            first.append(time.perf_counter() - start)
        start = time.perf_counter()
        sandbox.close()
        close.append(time.perf_counter() - start)
        rep_phases["first_execute_and_rest"] = first[-1] - sum(rep_phases.values())
        phases.append(rep_phases)
    probe_box = open_sandbox(image)
    try:
        probe = gateway_import_probe(probe_box)
    finally:
        probe_box.close()
    return {"first_result_s": first, "close_s": close, "phases": phases, "probe": probe}


def op_start_cost(image: str, reps: int, **_: Any) -> dict:
    """One sandbox at a time: ``Sandbox()`` to the first result, with the CPU it cost: this
    process's (every thread) and the container's (its cgroup, read just before removal)."""
    open_sandbox(image).close()  # the first start in a process pays for imports
    first, host, container = [], [], []
    for _ in range(reps):
        cpu = host_cpu()
        start = time.perf_counter()
        sandbox = Sandbox(image=image, build_image=False)
        try:
            expect_one(sandbox.run("x = 1\nx"))
            first.append(time.perf_counter() - start)
            host.append(host_cpu() - cpu)
            container.append(container_cpu(sandbox.container_id))
        finally:
            sandbox.close()
    return {"first_result_s": first, "host_cpu_s": host, "container_cpu_s": container}


def op_start_rate(image: str, sandboxes: int, parallel: int, **_: Any) -> dict:
    """``sandboxes`` sandboxes, ``parallel`` at a time, each started, run to its first
    result and closed: sandboxes per minute, and host CPU per sandbox."""
    open_sandbox(image).close()

    def one(_: int) -> None:
        with Sandbox(image=image, build_image=False) as sandbox:
            expect_one(sandbox.run("x = 1\nx"))

    cpu = host_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(sandboxes)))
    wall = time.perf_counter() - start
    return {"per_minute": [60 * sandboxes / wall], "host_cpu_per_sandbox_s": [(host_cpu() - cpu) / sandboxes]}


def op_refill(image: str, sessions: int, warm: int, **_: Any) -> dict:
    """A warm pool of ``warm`` refilling while ``sessions`` sessions, one after another,
    each take a sandbox, run a cell and release it: sandboxes started per minute."""
    pool = SandboxSessions(warm=warm, factory=lambda: Sandbox(image=image, build_image=False))
    try:
        if not pool.wait_ready(120):
            raise RuntimeError(f"the warm pool did not fill: {pool.last_error}")
        cpu = host_cpu()
        start = time.perf_counter()
        for n in range(sessions):
            expect_one(pool.get(f"s{n}").run("x = 1\nx"))
            pool.release(f"s{n}")
        wall = time.perf_counter() - start
    finally:
        pool.close()
    return {"per_minute": [60 * sessions / wall], "host_cpu_per_sandbox_s": [(host_cpu() - cpu) / sessions]}


def op_warm(image: str, reps: int, **_: Any) -> dict:
    """``SandboxSessions(warm=1)``, after ``wait_ready``: ``get`` to the first result."""
    times = []
    for rep in range(reps):
        sessions = SandboxSessions(warm=1, factory=lambda: Sandbox(image=image, build_image=False))
        try:
            sessions.start()
            if not sessions.wait_ready(120):
                raise RuntimeError(f"the warm pool did not fill: {sessions.last_error}")
            start = time.perf_counter()
            expect_one(sessions.get(f"session-{rep}").run("x = 1\nx"))
            times.append(time.perf_counter() - start)
        finally:
            sessions.close()
    return {"acquire_first_result_s": times}


def op_connect(image: str, reps: int, **_: Any) -> dict:
    """``Sandbox.connect(id)`` to a detached kept-alive sandbox, to the first result of a
    trivial cell; then ``detach()`` (beside ``cold``: what a worker pays per turn)."""
    sandbox = Sandbox(image=image, build_image=False, keep_alive="10m")
    expect_one(sandbox.run("x = 1\nx"))
    sandbox_id = sandbox.id
    sandbox.detach()
    first, detach = [], []
    try:
        for _ in range(reps):
            start = time.perf_counter()
            sandbox = Sandbox.connect(sandbox_id)
            expect_one(sandbox.run("x"))
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            sandbox.detach()
            detach.append(time.perf_counter() - start)
    finally:
        Sandbox.connect(sandbox_id, wait=10).close()
    return {"connect_first_result_s": first, "detach_s": detach}


def op_roundtrip(image: str, batches: int, calls: int, **_: Any) -> dict:
    """``x`` through the core (unix and TCP), each adapter, and the kernel's own floor;
    in interleaved batches, so drift in the machine's load hits every path alike."""
    from langchain_enclave import EnclaveNotebookTool
    from llama_index.tools.enclave import EnclaveNotebookToolSpec

    unix = open_sandbox(image)
    tcp = open_sandbox(image, network="bridge", transport="tcp")
    try:
        langchain_tool = EnclaveNotebookTool(sandbox=unix)
        llama_tool = EnclaveNotebookToolSpec(sandbox=unix).to_tool_list()[0]
        paths = {
            "core_unix": lambda: expect_one(unix.run("x")),
            "core_tcp": lambda: expect_one(tcp.run("x")),
            "langchain": lambda: langchain_tool.invoke({"code": "x"}),
            "llama_index": lambda: llama_tool.call(code="x"),
        }
        check_adapters(langchain_tool, llama_tool)
        samples: dict[str, list[list[float]]] = {name: [] for name in [*paths, "floor"]}
        for _ in range(batches):
            for name, fn in paths.items():
                samples[name].append(time_calls(fn, calls))
            time.sleep(0.2)
            samples["floor"].append(kernel_floor(unix, calls))
    finally:
        close_many([unix, tcp])
    return {"configs": samples}


def check_adapters(langchain_tool: Any, llama_tool: Any) -> None:
    """Both adapters answer ``1`` to ``x`` (so their timings are of real work)."""
    answer = langchain_tool.invoke({"code": "x"})
    if "1" not in str(answer):
        raise RuntimeError(f"langchain tool answered {answer!r}")
    output = llama_tool.call(code="x")
    if "1" not in str(output):
        raise RuntimeError(f"llama_index tool answered {output!r}")


def op_output(image: str, reps: int, **_: Any) -> dict:
    """1 MB and 10 MB of stdout; host RSS growth during the 10 MB run."""
    sandbox = open_sandbox(image)
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
                    execution = sandbox.run(f"print('x' * {size})")
                    out[f"{label}_s"].append(time.perf_counter() - start)
                if not execution.ok:
                    raise RuntimeError(f"{label} stdout failed: {execution.text[:500]}")
                out[f"{label}_bytes"].append(len(execution.stdout))
                if label == "10mb":
                    out["10mb_host_growth"].append(sampler.growth)
                del execution
    finally:
        sandbox.close()
    return out


def op_plot(image: str, reps: int, **_: Any) -> dict:
    """A matplotlib plot (pyplot imported beforehand), returned as a PNG."""
    sandbox = open_sandbox(image)
    try:
        start = time.perf_counter()
        sandbox.run("import matplotlib.pyplot as plt")
        import_s = time.perf_counter() - start
        times, images = [], []
        for _ in range(reps):
            start = time.perf_counter()
            execution = sandbox.run(PLOT)
            times.append(time.perf_counter() - start)
            images.append(len(execution.images))
        if min(images) < 1:
            raise RuntimeError(f"a plot came back without an image: {execution.text[:300]}")
    finally:
        sandbox.close()
    return {"plot_s": times, "images": images, "pyplot_import_s": import_s}


def op_memory(image: str, sandboxes: int, rounds: int, **_: Any) -> dict:
    """Idle container memory, and host RSS growth per open sandbox."""
    close_many(open_many(image, 1))  # imports, docker client and caches: not per sandbox
    per_sandbox, idle = [], []
    backend = DockerBackend()
    for _ in range(rounds):
        before = rss_bytes()
        opened = open_many(image, sandboxes)
        time.sleep(2.0)
        per_sandbox.append((rss_bytes() - before) / sandboxes)
        for sandbox in opened:
            idle.append(container_memory(backend.client, sandbox.container_id))
        close_many(opened)
    return {"host_per_sandbox_bytes": per_sandbox, "container_idle_bytes": idle}


def op_concurrency(
    image: str, levels: list[int], cells: int, reps: int, paced: list[list[float]] = (), **_: Any
) -> dict:
    """``levels`` sandboxes running ``cells`` cells at once, each in its own thread, back to
    back; then each ``(level, rate)`` in ``paced`` at ``rate`` cells/s per sandbox."""
    runs = concurrency_runs(levels, cells, paced)
    opened = open_many(image, max(level for _, level, _, _ in runs))
    out: dict[str, list] = {}
    try:
        for key, level, interval, count in runs:
            for _ in range(reps):
                out.setdefault(key, []).append(concurrent_cells(opened[:level], count, interval))
    finally:
        close_many(opened)
    return out


def concurrent_cells(sandboxes: list[Sandbox], cells: int, interval: float | None = None) -> dict:
    """Each sandbox runs ``cells`` cells in its own thread (paced by ``interval``)."""
    workers = [
        lambda sb=sb: paced_calls(lambda: expect_one(sb.run("x")), cells, interval) for sb in sandboxes
    ]
    return run_concurrently(workers, [sb.container_id for sb in sandboxes])


def op_runtimes(image: str, runtimes: list[str], reps: int, calls: int, **_: Any) -> dict:
    """Per OCI runtime (runc, gVisor's runsc): ``Sandbox()`` to the first result, and the
    trivial cell's round trip; the runtimes take turns, one repetition at a time."""
    out: dict[str, dict[str, list]] = {rt: {"first_result_s": [], "roundtrip_s": []} for rt in runtimes}
    patient = {"startup_timeout": 300.0}  # measure a slow start rather than fail it
    for runtime in runtimes:  # the first start per runtime pays for imports and caches
        open_sandbox(image, runtime=runtime, **patient).close()
    for _ in range(reps):
        for runtime in runtimes:
            start = time.perf_counter()
            sandbox = Sandbox(image=image, build_image=False, runtime=runtime, **patient)
            try:
                expect_one(sandbox.run("x = 1\nx"))
                out[runtime]["first_result_s"].append(time.perf_counter() - start)
                out[runtime]["roundtrip_s"].append(
                    time_calls(lambda sb=sandbox: expect_one(sb.run("x")), calls)
                )
            finally:
                sandbox.close()
    return out


OPS = {
    "cold": op_cold,
    "start_cost": op_start_cost,
    "start_rate": op_start_rate,
    "refill": op_refill,
    "warm": op_warm,
    "connect": op_connect,
    "roundtrip": op_roundtrip,
    "output": op_output,
    "plot": op_plot,
    "memory": op_memory,
    "concurrency": op_concurrency,
    "runtimes": op_runtimes,
}


if __name__ == "__main__":
    main(OPS)
