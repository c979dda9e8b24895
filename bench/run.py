"""Benchmarks of enclave-tools against ms-enclave, on the same image, in one run.

    .venv/bin/python bench/run.py            # full run (make bench), a few minutes
    .venv/bin/python bench/run.py --quick    # fewer repetitions: a smoke run
    .venv/bin/python bench/run.py --no-peer  # ours only

Each operation runs in a fresh process per side: bench/ours.py (our venv) and
bench/peer.py (ms-enclave in bench/.venv-peer, made by bench/setup_peer.sh when missing),
one side right after the other, so drift in the machine's load hits both alike. The table
gives each figure as the median of its repetitions with the spread [min-max]; the JSON
(bench/results/<timestamp>.json and latest.json) keeps every sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from stats import percentile, summarize  # noqa: E402

PEER_VENV = os.path.join(HERE, ".venv-peer")
PEER_PYTHON = os.path.join(PEER_VENV, "bin", "python")
RESULTS = os.path.join(HERE, "results")
MB = 1e6
MIB = 2**20

FULL = {
    "cold": {"reps": 5},
    # What a start costs: CPU (host process + container) one at a time, then how many
    # sandboxes start per minute 4 at a time, and with a warm pool refilling.
    "start_cost": {"reps": 5},
    "start_rate": {"sandboxes": 12, "parallel": 4},
    "refill": {"sessions": 8, "warm": 2},
    "warm": {"reps": 5},
    # A worker's turn on a kept-alive sandbox: Sandbox.connect(id) to the first result.
    "connect": {"reps": 5},
    "roundtrip": {"batches": 5, "calls": 200},
    "output": {"reps": 5},
    "plot": {"reps": 10},
    "memory": {"sandboxes": 8, "rounds": 2},
    # Back to back: each side's capacity (throughput) at its own saturation.
    "concurrency": {"levels": [1, 4, 16], "cells": 50, "reps": 3},
    # Then latency at the same offered load for both sides: each level paced at `fraction`
    # of the lower of the two capacities just measured, with at least `samples` cells per
    # repetition (a p99 of 50 cells is only their worst one or two).
    "equal_load": {"fraction": 0.5, "cells": 50, "samples": 300, "reps": 3},
    # Ours on runc and on gVisor (runsc, when registered: deploy/gvisor/register-runsc.sh).
    "runtimes": {"runtimes": ["runc", "runsc"], "reps": 5, "calls": 100},
}
QUICK = {
    "cold": {"reps": 2},
    "start_cost": {"reps": 2},
    "start_rate": {"sandboxes": 4, "parallel": 2},
    "refill": {"sessions": 3, "warm": 1},
    "warm": {"reps": 2},
    "connect": {"reps": 2},
    "roundtrip": {"batches": 2, "calls": 40},
    "output": {"reps": 2},
    "plot": {"reps": 3},
    "memory": {"sandboxes": 4, "rounds": 1},
    "concurrency": {"levels": [1, 4], "cells": 10, "reps": 1},
    "equal_load": {"fraction": 0.5, "cells": 10, "samples": 20, "reps": 1},
    "runtimes": {"runtimes": ["runc", "runsc"], "reps": 2, "calls": 30},
}


# -- running the drivers --------------------------------------------------------------------


def ensure_peer_venv() -> None:
    """Create bench/.venv-peer with ms-enclave if it is missing or broken."""
    check = [PEER_PYTHON, "-c", "import ms_enclave, docker, websocket"]
    if os.path.exists(PEER_PYTHON) and subprocess.run(check, capture_output=True).returncode == 0:
        return
    print("making bench/.venv-peer (ms-enclave in its own venv) ...", flush=True)
    subprocess.run(["bash", os.path.join(HERE, "setup_peer.sh")], check=True)


def resolve_image() -> str:
    """Our default kernel image (built if missing), as a name both sides can use."""
    from enclave_tools._docker import docker_client
    from enclave_tools.image import default_image, ensure_image

    name = default_image()
    ensure_image(docker_client(), None, build=True, progress=lambda line: print(line, flush=True))
    return name


def run_driver(python: str, script: str, op: str, args: dict, timeout: float = 900) -> dict:
    """Run one operation of one driver in a fresh process; its JSON answer, or an error."""
    command = [python, os.path.join(HERE, script), op, json.dumps(args)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"{script} {op} took longer than {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH-JSON: "):
            answer = json.loads(line[len("BENCH-JSON: ") :])
            answer["_seconds"] = time.monotonic() - started
            return answer
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"error": f"{script} {op} failed (exit {done.returncode}):\n" + "\n".join(tail)}


OURS_ONLY = {"runtimes", "connect"}
"""Operations of enclave-tools alone (the peer has no OCI runtime option and cannot
reconnect to a sandbox from another process)."""

INTERLEAVED = {"concurrency", "equal_load"}
"""Operations run one repetition at a time, the two sides taking turns, so that a slow
spell of a shared machine falls on both rather than on one side's whole series."""


def measure(plan: dict, image: str, peer: bool, baseline: str | None = None) -> dict:
    """Every operation, ours then the peer's (and, for the start figures, ours again on
    the ``baseline`` image); the raw answers."""
    raw: dict[str, dict] = {"ours": {}, "peer": {}}
    sides = [("ours", sys.executable, "ours.py", image)]
    if peer:
        sides.append(("peer", PEER_PYTHON, "peer.py", image))
    if baseline:
        raw["baseline"] = {}
    for op, args in plan.items():
        driver_op, args = driver_args(op, args, raw)
        if driver_op is None:
            print(f"  {op}: skipped ({args['why']})", flush=True)
            continue
        turns = [{**args, "reps": 1}] * args["reps"] if op in INTERLEAVED else [args]
        op_sides = sides[:1] if op in OURS_ONLY else sides
        if baseline and op in BASELINE_OPS:
            op_sides = [*op_sides, ("baseline", sys.executable, "ours.py", baseline)]
        for n, turn in enumerate(turns):
            for side, python, script, side_image in op_sides:
                label = "ms-enclave" if side == "peer" else side
                count = f" {n + 1}/{len(turns)}" if len(turns) > 1 else ""
                print(f"  {op}: {label}{count}", end="", flush=True)
                answer = run_driver(python, script, driver_op, {"image": side_image, **turn})
                report_progress(answer)
                raw[side][op] = merge_reps(raw[side].get(op), answer)
    return raw


BASELINE_OPS = ("cold", "start_cost")
"""What ``--baseline IMAGE`` measures on that image too: the start's time and CPU."""


def baseline_lines(raw: dict, baseline: str) -> list[str]:
    """The start figures on this image against the same on the ``--baseline`` image,
    measured in the same run by the same client."""
    ours, base = raw["ours"], raw.get("baseline", {})
    picks = {
        "cold": ("cold start, Sandbox() to first result", "s", lambda a: a["first_result_s"]),
        "start_cost": (
            "CPU per sandbox start (host process + container)",
            "s",
            lambda a: [h + (c or 0.0) for h, c in zip(a["host_cpu_s"], a["container_cpu_s"], strict=True)],
        ),
    }
    lines = [f"against the baseline image {baseline} (same client, same run):"]
    for op, (name, unit, pick) in picks.items():
        if not (ok(ours.get(op)) and ok(base.get(op))):
            continue
        mine, theirs = summarize(pick(ours[op])), summarize(pick(base[op]))
        lines.append(
            f"- {name}: {fmt(mine)} {unit} against {fmt(theirs)} {unit}: "
            f"{mine['median'] / theirs['median']:.2f}x"
        )
    return lines


def merge_reps(earlier: dict | None, answer: dict) -> dict:
    """One answer from per-repetition answers whose values are lists of repetitions."""
    if earlier is None or not ok(earlier):
        return answer
    if not ok(answer):
        return answer
    merged = dict(earlier)
    for key, value in answer.items():
        if isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merged[key] + value
        elif key == "_seconds":
            merged[key] = merged[key] + value
    return merged


def driver_args(op: str, args: dict, raw: dict) -> tuple[str | None, dict]:
    """The driver operation and arguments for a plan entry. ``equal_load`` runs the
    drivers' ``concurrency`` paced, at a rate set from both sides' measured capacity.
    ``runtimes`` keeps only the runtimes Docker has registered."""
    if op == "runtimes":
        missing = [rt for rt in args["runtimes"] if rt not in docker_runtimes()]
        if missing:
            return None, {
                "why": f"Docker has no runtime {', '.join(missing)} (gVisor: deploy/gvisor/register-runsc.sh)"
            }
        return op, args
    if op != "equal_load":
        return op, args
    capacity = {side: raw[side].get("concurrency") for side in ("ours", "peer")}
    measured = [answer for answer in capacity.values() if ok(answer)]
    if not measured:
        return None, {"why": "needs the concurrency figures"}
    paced = []
    for level in measured[0]:
        if not level.isdigit():
            continue
        lowest = min(
            summarize([r["cells"] / r["wall_s"] for r in answer[level]])["median"] for answer in measured
        )
        cells = max(args["cells"], -(-args["samples"] // int(level)))
        paced.append([int(level), round(args["fraction"] * lowest / int(level), 2), cells])
    return "concurrency", {"levels": [], "paced": paced, "cells": args["cells"], "reps": args["reps"]}


def docker_runtimes() -> list[str]:
    """The OCI runtimes the Docker daemon has registered."""
    done = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=30
    )
    return list(json.loads(done.stdout or "{}")) if done.returncode == 0 else []


def report_progress(answer: dict) -> None:
    """One line per finished driver run."""
    if "error" in answer:
        print(f" FAILED\n    {answer['error']}", flush=True)
    else:
        print(f" ({answer['_seconds']:.0f} s)", flush=True)


# -- figures ----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the report: our value, the peer's, and the target."""

    name: str
    unit: str
    ours: dict | None
    peer: dict | None = None
    peer_na: str | None = None
    higher_is_better: bool = False
    target: float | None = None
    target_text: str = ""
    note: str = ""
    scale: float = 1.0
    extra: dict = field(default_factory=dict)

    def met(self) -> str:
        """'met', 'not met', or '' when there is no target."""
        if self.target is None or self.ours is None:
            return ""
        value = self.ours["median"]
        ok = value >= self.target if self.higher_is_better else value <= self.target
        return "met" if ok else "NOT MET"

    def ratio(self) -> float | None:
        """Ours / peer (medians)."""
        if self.ours is None or self.peer is None or not self.peer["median"]:
            return None
        return self.ours["median"] / self.peer["median"]

    def ahead(self) -> str:
        """Whether we are ahead of the peer on this figure."""
        ratio = self.ratio()
        if ratio is None:
            return ""
        if self.higher_is_better:
            return f"{ratio:.2f}x more" if ratio >= 1 else f"{1 / ratio:.2f}x less (behind)"
        return f"{1 / ratio:.2f}x better" if ratio <= 1 else f"{ratio:.2f}x worse (behind)"

    def to_json(self) -> dict:
        """The row for the JSON report."""
        return {
            "name": self.name,
            "unit": self.unit,
            "ours": self.ours,
            "peer": self.peer if self.peer_na is None else {"na": self.peer_na},
            "ours_over_peer": self.ratio(),
            "vs_peer": self.ahead(),
            "target": self.target_text,
            "target_value": self.target,
            "met": self.met(),
            "note": self.note,
            **self.extra,
        }


def ok(answer: dict | None) -> bool:
    """Whether a driver answer holds measurements."""
    return bool(answer) and "error" not in answer


def batch_percentile(batches: list[list[float]], q: float) -> dict:
    """The q-th percentile of each batch, summarized across batches."""
    return summarize([percentile(batch, q) for batch in batches])


def scaled(summary: dict | None, factor: float) -> dict | None:
    """A summary with every value multiplied by ``factor`` (e.g. seconds to ms)."""
    if summary is None:
        return None
    return {k: (v * factor if k != "n" else v) for k, v in summary.items()}


def figures(raw: dict) -> list[Figure]:
    """Turn the raw answers into report rows."""
    ours, peer = raw["ours"], raw.get("peer", {})
    rows: list[Figure] = []
    for builder in (
        start_figures,
        start_cost_figures,
        roundtrip_figures,
        output_figures,
        memory_figures,
        concurrency_figures,
        teardown_figures,
        runtime_figures,
    ):
        rows.extend(builder(ours, peer))
    return rows


def peer_summary(peer: dict, op: str, pick: Callable[[dict], dict | None]) -> tuple[dict | None, str | None]:
    """The peer's summary for a figure, or why there is none."""
    if op not in peer:
        return None, "--no-peer"
    answer = peer[op]
    if not ok(answer):
        return None, f"failed: {answer.get('error', '?').splitlines()[0]}"
    if "na" in answer:
        return None, answer["na"]
    return pick(answer), None


def start_figures(ours: dict, peer: dict) -> list[Figure]:
    """Cold start and warm acquire."""
    rows = []
    if ok(ours.get("cold")):
        pick = lambda a: summarize(a["first_result_s"])  # noqa: E731
        p, na = peer_summary(peer, "cold", pick)
        rows.append(
            Figure(
                "cold start: Sandbox() to first result",
                "s",
                pick(ours["cold"]),
                p,
                na,
                target=1.5,
                target_text="<= 1.5 s",
                extra={
                    "phases_ours": phase_medians(ours["cold"]),
                    "phases_peer": phase_medians(peer.get("cold")),
                    "probe_ours": probe_medians(ours["cold"]),
                },
            )
        )
    if ok(ours.get("warm")):
        pick = lambda a: scaled(summarize(a["acquire_first_result_s"]), 1000)  # noqa: E731
        p, na = peer_summary(peer, "warm", pick)
        rows.append(
            Figure(
                "warm start: pool get() to first result",
                "ms",
                pick(ours["warm"]),
                p,
                na,
                target=50,
                target_text="<= 50 ms",
                note=(peer.get("warm") or {}).get("note", ""),
            )
        )
    if ok(ours.get("connect")):
        rows.append(
            Figure(
                "reconnect: Sandbox.connect(id) to first result",
                "ms",
                scaled(summarize(ours["connect"]["connect_first_result_s"]), 1000),
                None,
                "no reconnect from another process",
            )
        )
    return rows


def start_cost_figures(ours: dict, peer: dict) -> list[Figure]:
    """CPU per sandbox start, and sandboxes started per minute (4 at a time; warm pool)."""
    rows = []
    if ok(ours.get("start_cost")):

        def total(answer: dict) -> dict | None:
            if None in answer["container_cpu_s"]:
                return None
            return summarize(
                [h + c for h, c in zip(answer["host_cpu_s"], answer["container_cpu_s"], strict=True)]
            )

        def split(answer: dict | None) -> str:
            if not ok(answer) or "host_cpu_s" not in answer:
                return ""
            return (
                f"host {summarize(answer['host_cpu_s'])['median']:.2f} s + container "
                f"{summarize([c or 0.0 for c in answer['container_cpu_s']])['median']:.2f} s"
            )

        p, na = peer_summary(peer, "start_cost", total)
        note = "; ".join(
            f"{side} {text}"
            for side, text in (("ours", split(ours["start_cost"])), ("peer", split(peer.get("start_cost"))))
            if text
        )
        rows.append(
            Figure(
                "CPU per sandbox start (host process + container), to first result",
                "s",
                total(ours["start_cost"]),
                p,
                na,
                note=note,
            )
        )
        pick = lambda a: summarize(a["first_result_s"])  # noqa: E731
        p, na = peer_summary(peer, "start_cost", pick)
        rows.append(Figure("cold start, one at a time (start_cost)", "s", pick(ours["start_cost"]), p, na))
    for op, label in (
        ("start_rate", "sandboxes started per minute, several at a time"),
        ("refill", "sandboxes started per minute, warm pool refilling"),
    ):
        if ok(ours.get(op)):
            pick = lambda a: summarize(a["per_minute"])  # noqa: E731
            p, na = peer_summary(peer, op, pick)
            rows.append(
                Figure(
                    label,
                    "/min",
                    pick(ours[op]),
                    p,
                    na,
                    higher_is_better=True,
                    note=f"host CPU {summarize(ours[op]['host_cpu_per_sandbox_s'])['median']:.2f} s/sandbox",
                )
            )
    return rows


def phase_medians(answer: dict | None) -> dict | None:
    """Median seconds of each cold-start phase."""
    if not ok(answer):
        return None
    names = answer["phases"][0].keys()
    return {name: summarize([p.get(name, 0.0) for p in answer["phases"]])["median"] for name in names}


def probe_medians(answer: dict) -> dict:
    """Median seconds of the in-container start-up probes (see ours.gateway_import_probe)."""
    return {name: summarize(values)["median"] for name, values in answer.get("probe", {}).items()}


def roundtrip_figures(ours: dict, peer: dict) -> list[Figure]:
    """Trivial cell round trips: p50 and p99 per path, against the kernel's floor."""
    if not ok(ours.get("roundtrip")):
        return []
    configs = ours["roundtrip"]["configs"]
    floor = {q: scaled(batch_percentile(configs["floor"], q), 1000) for q in (50, 99)}
    labels = {
        "core_unix": "core, unix socket (default)",
        "core_tcp": 'core, TCP on 127.0.0.1 (transport="tcp")',
        "langchain": "LangChain tool .invoke",
        "llama_index": "LlamaIndex tool .call",
    }
    rows = [
        Figure(
            f"round trip p{q}: kernel floor (ZMQ in container)",
            "ms",
            floor[q],
            peer_na="same kernel",
            note="jupyter_client inside the container; host websocket closed meanwhile" if q == 50 else "",
        )
        for q in (50, 99)
    ]
    for name, label in labels.items():
        for q in (50, 99):
            pick = lambda a, q=q: scaled(batch_percentile(a["configs"]["execute_tool"], q), 1000)  # noqa: E731
            p, na = peer_summary(peer, "roundtrip", pick)
            limit = 2 * floor[q]["median"]
            rows.append(
                Figure(
                    f"round trip p{q}: {label}",
                    "ms",
                    scaled(batch_percentile(configs[name], q), 1000),
                    p,
                    na,
                    target=limit,
                    target_text=f"<= 2x floor ({limit:.1f})",
                    note="peer (every path): its notebook_executor tool over TCP"
                    if (name, q) == ("core_unix", 50)
                    else "",
                )
            )
    return rows


def output_figures(ours: dict, peer: dict) -> list[Figure]:
    """Large stdout, host memory during it, and a plot."""
    rows = []
    if ok(ours.get("output")):
        lost = None  # the peer's gateway may drop a flood (IOPub rate limit): no comparison then
        for label, target in (("1mb", None), ("10mb", 2.0)):
            pick = lambda a, label=label: summarize(a[f"{label}_s"])  # noqa: E731
            p, na = peer_summary(peer, "output", pick)
            got_ours = max(ours["output"][f"{label}_bytes"])
            got_peer = max((peer.get("output") or {}).get(f"{label}_bytes") or [0])
            if p is not None and got_peer < 0.5 * (MB if label == "1mb" else 10 * MB):
                lost = f"its gateway dropped the output: {got_peer / MB:.1f} MB came back"
                p, na = None, lost
            rows.append(
                Figure(
                    f"stdout {label.upper()}: print('x' * 10**{6 if label == '1mb' else 7})",
                    "s",
                    pick(ours["output"]),
                    p,
                    na,
                    target=target,
                    target_text="<= 2 s" if target else "",
                    note=f"kept on host: ours {got_ours / MB:.1f} MB, peer {got_peer / MB:.1f} MB",
                )
            )
        pick = lambda a: scaled(summarize(a["10mb_host_growth"]), 1 / MB)  # noqa: E731
        p, na = peer_summary(peer, "output", pick)
        if lost:
            p, na = None, lost
        rows.append(
            Figure(
                "host RSS growth during 10 MB stdout",
                "MB",
                pick(ours["output"]),
                p,
                na,
                target=50,
                target_text="< 50 MB",
            )
        )
    if ok(ours.get("plot")):
        pick = lambda a: scaled(summarize(a["plot_s"]), 1000)  # noqa: E731
        p, na = peer_summary(peer, "plot", pick)
        rows.append(
            Figure(
                "matplotlib plot returned as PNG",
                "ms",
                pick(ours["plot"]),
                p,
                na,
                note=f"pyplot imported first ({ours['plot']['pyplot_import_s'] * 1000:.0f} ms)",
            )
        )
    return rows


def memory_figures(ours: dict, peer: dict) -> list[Figure]:
    """Idle container memory and host memory per open sandbox."""
    if not ok(ours.get("memory")):
        return []
    idle = lambda a: scaled(summarize(a["container_idle_bytes"]), 1 / MIB)  # noqa: E731
    host = lambda a: scaled(summarize(a["host_per_sandbox_bytes"]), 1 / MIB)  # noqa: E731
    p_idle, na_idle = peer_summary(peer, "memory", idle)
    p_host, na_host = peer_summary(peer, "memory", host)
    return [
        Figure(
            "idle sandbox container memory",
            "MiB",
            idle(ours["memory"]),
            p_idle,
            na_idle,
            target=100,
            target_text="<= 100 MiB",
            note="docker stats: usage less inactive file cache",
        ),
        Figure(
            "host RSS per open sandbox",
            "MiB",
            host(ours["memory"]),
            p_host,
            na_host,
            note="RSS growth opening N sandboxes, / N",
        ),
    ]


def concurrency_figures(ours: dict, peer: dict) -> list[Figure]:
    """1, 4, 16 sandboxes running cells at once: throughput back to back (each side's
    capacity), p99 at the same offered load for both, and p99 back to back."""
    if not ok(ours.get("concurrency")):
        return []
    tput = lambda runs: summarize([r["cells"] / r["wall_s"] for r in runs])  # noqa: E731
    p99 = lambda runs: scaled(summarize([percentile(r["latencies_s"], 99) for r in runs]), 1000)  # noqa: E731
    equal = ours.get("equal_load") if ok(ours.get("equal_load")) else {}
    rows = []
    for level in (key for key in ours["concurrency"] if key.isdigit()):
        label = f"{level} sandbox{'es' if level != '1' else ''}"
        rows.append(
            concurrency_row(
                f"{label} back to back: throughput",
                "cells/s",
                ours,
                peer,
                "concurrency",
                level,
                tput,
                higher_is_better=True,
                details=False,
            )
        )
        paced = next((key for key in equal if key.split()[0] == level), None)
        if paced:
            rate = paced.split()[2]
            rows.append(
                concurrency_row(
                    f"{label} at {rate} each, same load for both: p99",
                    "ms",
                    ours,
                    peer,
                    "equal_load",
                    paced,
                    p99,
                    extra_note="the rate is half the lower capacity of the two sides, measured above",
                )
            )
        rows.append(
            concurrency_row(
                f"{label} back to back: p99",
                "ms",
                ours,
                peer,
                "concurrency",
                level,
                p99,
                extra_note="each side at its own saturation: not the same load (see throughput)",
            )
        )
    return rows


def concurrency_row(
    name: str,
    unit: str,
    ours: dict,
    peer: dict,
    op: str,
    key: str,
    pick: Callable[[list[dict]], dict | None],
    higher_is_better: bool = False,
    extra_note: str = "",
    details: bool = True,
) -> Figure:
    """One concurrency figure from ``op``'s runs under ``key``; with ``details``, the p50s
    and CPU use as its note."""
    p, na = peer_summary(peer, op, lambda answer: pick(answer[key]) if key in answer else None)
    note = concurrency_note(ours[op][key], (peer.get(op) or {}).get(key)) if details else ""
    return Figure(
        name,
        unit,
        pick(ours[op][key]),
        p,
        na,
        higher_is_better=higher_is_better,
        note="; ".join(part for part in (extra_note, note) if part),
    )


def concurrency_note(ours: list[dict], peer: list[dict] | None) -> str:
    """p50 over all cells, and how long the containers' CPU quota throttled them."""
    parts = []
    for side, reps in (("ours", ours), ("peer", peer)):
        if not reps:
            continue
        p50 = percentile([x for r in reps for x in r["latencies_s"]], 50) * 1000
        throttled = [r["cpu_throttling"]["throttled_s"] for r in reps if r.get("cpu_throttling")]
        lost = f", CPU quota throttled {summarize(throttled)['median']:.2f} s/rep" if throttled else ""
        cpu = (
            summarize([r["host_cpu_s"] / r["cells"] * 1000 for r in reps if "host_cpu_s" in r])["median"]
            if any("host_cpu_s" in r for r in reps)
            else None
        )
        per_cell = f", host CPU {cpu:.2f} ms/cell" if cpu is not None else ""
        parts.append(f"{side} p50 {p50:.1f} ms{per_cell}{lost}")
    return "; ".join(parts)


def teardown_figures(ours: dict, peer: dict) -> list[Figure]:
    """close() of a started sandbox."""
    if not ok(ours.get("cold")):
        return []
    pick = lambda a: scaled(summarize(a["close_s"]), 1000)  # noqa: E731
    p, na = peer_summary(peer, "cold", pick)
    return [Figure("teardown: close()", "ms", pick(ours["cold"]), p, na, note="peer: await sandbox.stop()")]


def runtime_figures(ours: dict, peer: dict) -> list[Figure]:
    """Cold start and trivial round trip per OCI runtime (runc, gVisor's runsc)."""
    if not ok(ours.get("runtimes")):
        return []
    picks = {
        "cold start to first result": ("s", lambda a: summarize(a["first_result_s"])),
        "round trip p50": ("ms", lambda a: scaled(batch_percentile(a["roundtrip_s"], 50), 1000)),
        "round trip p99": ("ms", lambda a: scaled(batch_percentile(a["roundtrip_s"], 99), 1000)),
    }
    answers = {rt: a for rt, a in ours["runtimes"].items() if isinstance(a, dict)}
    rows = []
    for runtime, answer in answers.items():
        for label, (unit, pick) in picks.items():
            mine = pick(answer)
            runc = pick(answers["runc"]) if "runc" in answers else None
            note = f"{mine['median'] / runc['median']:.1f}x runc's" if runc and runtime != "runc" else ""
            rows.append(Figure(f"runtime {runtime}: {label}", unit, mine, peer_na="ours only", note=note))
    return rows


# -- the report -------------------------------------------------------------------------------


def fmt(summary: dict | None, na: str | None = None) -> str:
    """'12.3 [11.0-14.1]', or 'n/a (why)'."""
    if summary is None:
        return f"n/a ({na})" if na else "-"
    return f"{_num(summary['median'])} [{_num(summary['min'])}-{_num(summary['max'])}]"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Figure]) -> str:
    """The report as fixed-width text."""
    header = [
        "figure",
        "unit",
        "ours median [min-max]",
        "ms-enclave",
        "ours/peer",
        "vs peer",
        "target",
        "met?",
    ]
    lines = [header]
    for row in rows:
        ratio = row.ratio()
        lines.append(
            [
                row.name,
                row.unit,
                fmt(row.ours),
                fmt(row.peer, row.peer_na),
                f"{ratio:.2f}" if ratio is not None else "",
                row.ahead(),
                row.target_text,
                row.met(),
            ]
        )
    widths = [min(max(len(line[i]) for line in lines), 60) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def notes(rows: list[Figure]) -> str:
    """Per-row notes and the cold-start breakdown."""
    out = [f"- {row.name}: {row.note}" for row in rows if row.note]
    for row in rows:
        for side in ("ours", "peer"):
            phases = row.extra.get(f"phases_{side}")
            if phases:
                parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in phases.items())
                out.append(
                    f"- cold start phases ({'ms-enclave' if side == 'peer' else side}, medians): {parts}"
                )
        probe = row.extra.get("probe_ours")
        if probe:
            parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in probe.items())
            out.append(f"- inside a running sandbox (warm page cache): {parts}")
    return "\n".join(out)


def environment(image: str, peer: bool) -> dict:
    """What the numbers were measured on."""

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    info = {
        "image": image,
        "image_id": sh("docker", "image", "inspect", "--format", "{{.Id}}", image),
        "docker": sh("docker", "version", "--format", "{{.Server.Version}}"),
        "storage_driver": sh("docker", "info", "--format", "{{.Driver}}"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": sh("git", "rev-parse", "HEAD"),
        "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
        "load_average": os.getloadavg(),
    }
    if peer:
        info["ms_enclave"] = sh(
            PEER_PYTHON, "-c", "import importlib.metadata as m; print(m.version('ms-enclave'))"
        )
    return info


def write_json(report: dict) -> str:
    """bench/results/<timestamp>.json and latest.json; the path of the first."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{report['started'].replace(':', '').replace('-', '')}.json")
    for target in (path, os.path.join(RESULTS, "latest.json")):
        with open(target, "w") as handle:
            json.dump(report, handle, indent=1)
    return path


def main() -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a fast smoke run")
    parser.add_argument("--no-peer", action="store_true", help="measure enclave-tools only")
    parser.add_argument("--only", nargs="+", choices=list(FULL), help="run only these operations")
    parser.add_argument(
        "--baseline",
        metavar="IMAGE",
        help="also measure the start figures (cold, start_cost) on this kernel image, such as "
        "one built from an older commit by bench/build_baseline.sh",
    )
    args = parser.parse_args()

    plan = QUICK if args.quick else FULL
    if args.only:
        plan = {op: plan[op] for op in args.only}
    peer = not args.no_peer
    started = datetime.datetime.now().isoformat(timespec="seconds")
    clock = time.monotonic()
    if peer:
        ensure_peer_venv()
    image = resolve_image()
    env = environment(image, peer)
    print(f"benchmark on {image} ({env['cpus']} CPUs, load {env['load_average'][0]:.2f})", flush=True)
    raw = measure(plan, image, peer, args.baseline)
    rows = figures(raw)
    print()
    print(table(rows))
    print()
    print(notes(rows))
    if args.baseline:
        print()
        print("\n".join(baseline_lines(raw, args.baseline)))
    env["load_average_after"] = os.getloadavg()
    report = {
        "started": started,
        "seconds": time.monotonic() - clock,
        "quick": args.quick,
        "baseline": args.baseline,
        "plan": plan,
        "environment": env,
        "figures": [row.to_json() for row in rows],
        "raw": raw,
    }
    path = write_json(report)
    print(
        f"\nwrote {os.path.relpath(path, ROOT)} and bench/results/latest.json "
        f"({report['seconds']:.0f} s in all)"
    )
    failed = [f"{side} {op}" for side in raw for op, a in raw[side].items() if not ok(a)]
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
