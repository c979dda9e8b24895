"""Small statistics shared by the benchmark drivers (standard library only, so both our
venv and the peer's can import it)."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence

__all__ = [
    "RssSampler",
    "Timer",
    "container_memory",
    "cpu_throttling",
    "host_cpu",
    "percentile",
    "rss_bytes",
    "summarize",
    "timed",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and quartiles of repeated measurements of one figure."""
    values = list(values)
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p25": percentile(values, 25),
        "p75": percentile(values, 75),
        "n": len(values),
    }


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Run ``fn``; return (seconds, its result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples this process's RSS every few milliseconds; ``peak`` is the highest seen.

    ``with RssSampler() as s: work()`` then ``s.peak - s.before`` is the growth while the
    work ran, even if the memory was released before it returned.
    """

    def __init__(self, every: float = 0.002) -> None:
        self.every = every
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_bytes()
        self.peak = max(self.peak, self.after)

    @property
    def growth(self) -> int:
        """Peak RSS minus RSS before, in bytes."""
        return self.peak - self.before


def container_memory(client, container_id: str) -> int:
    """A container's memory use as ``docker stats`` shows it: usage less inactive page
    cache. ``client`` is a docker-py ``DockerClient``."""
    stats = client.api.stats(container_id, stream=False)["memory_stats"]
    detail = stats.get("stats", {})
    inactive = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return int(stats["usage"]) - int(inactive)


def cpu_throttling(container_ids: list[str]) -> dict | None:
    """Summed CFS throttling of containers so far: periods throttled and seconds lost
    (cgroup v1 or v2 with Docker's cgroupfs layout; None where it cannot be read)."""
    periods = seconds = 0.0
    for cid in container_ids:
        for path, scale in (
            (f"/sys/fs/cgroup/cpu/docker/{cid}/cpu.stat", 1e-9),
            (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6),
        ):
            try:
                with open(path) as handle:
                    fields = dict(line.split() for line in handle if line.strip())
            except OSError:
                continue
            periods += int(fields.get("nr_throttled", 0))
            seconds += int(fields.get("throttled_time", fields.get("throttled_usec", 0))) * scale
            break
        else:
            return None
    return {"throttled_periods": periods, "throttled_s": seconds}


def container_cpu(container_id: str) -> float | None:
    """CPU seconds a container's processes have used so far, read from the host's cgroup
    (v1 cpuacct or v2 cpu.stat, Docker's cgroupfs layout); None where it cannot be read."""
    for path, field, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", None, 1e-9),
        (f"/sys/fs/cgroup/docker/{container_id}/cpu.stat", "usage_usec", 1e-6),
    ):
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        if field is None:
            return int(text.strip()) * scale
        fields = dict(line.split() for line in text.splitlines() if line.strip())
        return int(fields[field]) * scale
    return None


def host_cpu() -> float:
    """CPU seconds (user + system) this process has used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def paced_calls(call: Callable[[], object], calls: int, interval: float | None) -> list[float]:
    """Seconds per call of ``call``, each started ``interval`` seconds after the previous one
    was due (back to back when ``interval`` is None, or when a call overruns its slot). The
    first slot has a random phase, so that paced sandboxes do not all fire at once."""
    times = []
    due = time.perf_counter() + (random.uniform(0, interval) if interval else 0)
    for _ in range(calls):
        if interval:
            time.sleep(max(due - time.perf_counter(), 0))
            due += interval
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def concurrency_runs(levels: list[int], cells: int, paced: list[list[float]]) -> list[tuple]:
    """The runs of the drivers' ``concurrency`` operation, as ``(key, sandboxes, interval,
    cells)``: each level back to back, then each ``[level, rate(, cells)]`` of ``paced``
    at ``rate`` cells/s per sandbox (``cells`` each, if given)."""
    runs = [(str(level), level, None, cells) for level in levels]
    for level, rate, *count in paced:
        runs.append(
            (f"{int(level)} at {rate:g}/s each", int(level), 1 / rate, int(count[0]) if count else cells)
        )
    return runs


def run_concurrently(workers: list[Callable[[], list[float]]], container_ids: list[str]) -> dict:
    """Run each worker (one per sandbox, returning its call latencies) in its own thread,
    all released at once; wall time, every latency, host CPU and container throttling."""
    barrier = threading.Barrier(len(workers) + 1)
    latencies: list[float] = []
    lock = threading.Lock()

    def run(worker: Callable[[], list[float]]) -> None:
        barrier.wait()
        times = worker()
        with lock:
            latencies.extend(times)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    throttled_before = cpu_throttling(container_ids)
    cpu_before = host_cpu()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = cpu_throttling(container_ids)
    throttled = None
    if throttled_before is not None and after is not None:
        throttled = {key: after[key] - throttled_before[key] for key in throttled_before}
    return {
        "wall_s": wall,
        "cells": len(latencies),
        "latencies_s": latencies,
        "host_cpu_s": host_cpu() - cpu_before,
        "cpu_throttling": throttled,
    }


def main(ops: dict[str, Callable[..., dict]]) -> None:
    """``SCRIPT OP JSON-ARGS``: run one operation, print its answer as JSON."""
    import json
    import logging
    import sys

    logging.basicConfig(level=logging.WARNING)
    op, args = sys.argv[1], json.loads(sys.argv[2])
    answer = ops[op](**args)
    print("BENCH-JSON: " + json.dumps(answer), flush=True)
