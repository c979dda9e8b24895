"""bench/build_baseline.sh, run as a newcomer runs it, in a clone of this repository with
``docker`` and the venv's ``python`` stood in for at the boundary: it builds the older
commit on the base this checkout's kernel image was built on, and leaves no worktree or
temporary directory behind, whether the build succeeds or fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DOCKER = """#!/bin/sh
# docker image inspect [--format F] NAME: only the kernel image (built on python:3.12-slim,
# as make image builds it where a registry answers) and that base are local.
case "$*" in
  *org.enclave-tools.base*enclave-tools/kernel:*) echo python:3.12-slim ;;
  "image inspect python:3.12-slim") ;;
  *) exit 1 ;;
esac
"""

PYTHON = """#!/bin/sh
# The venv's python; the older commit's image build only records where and how it ran.
if [ "$1" = "-m" ] && [ "$2" = "enclave_tools.cli" ]; then
  echo "$PWD $*" >> "$BUILD_RECORD"
  exit "$BUILD_RC"
fi
exec {python} "$@"
"""


def run_script(tmp_path: Path, build_rc: int) -> tuple[subprocess.CompletedProcess, Path, str]:
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(repo)], check=True)
    script = repo / "bench" / "build_baseline.sh"
    script.write_text((ROOT / "bench" / "build_baseline.sh").read_text())  # this checkout's
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "docker").write_text(DOCKER)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text(PYTHON.format(python=sys.executable))
    for stub in (stubs / "docker", repo / ".venv" / "bin" / "python"):
        stub.chmod(0o755)
    temp = tmp_path / "temp"
    temp.mkdir()
    record = tmp_path / "build.txt"
    env = {
        **os.environ,
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(temp),
        "BUILD_RECORD": str(record),
        "BUILD_RC": str(build_rc),
    }
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", str(script), "HEAD"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    listed = ["git", "-C", str(repo), "worktree", "list", "--porcelain"]
    worktrees = subprocess.run(listed, capture_output=True, text=True, check=True).stdout
    assert worktrees.count("worktree ") == 1, worktrees  # the clone's own only
    assert list(temp.iterdir()) == []
    return done, repo, record.read_text() if record.exists() else ""


def test_the_baseline_is_built_on_the_base_of_this_checkouts_image(tmp_path: Path) -> None:
    done, repo, build = run_script(tmp_path, build_rc=0)

    assert done.returncode == 0, done.stdout + done.stderr
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    where, _, args = build.strip().partition(" ")
    tag = f"enclave-tools/kernel:baseline-{commit}"
    assert where != str(repo)
    assert args == f"-m enclave_tools.cli image build --base python:3.12-slim --tag {tag}"
    assert done.stdout.strip().splitlines()[-1] == tag


def test_a_failed_build_leaves_no_worktree_behind(tmp_path: Path) -> None:
    done, _, build = run_script(tmp_path, build_rc=3)

    assert done.returncode != 0
    assert "image build" in build
