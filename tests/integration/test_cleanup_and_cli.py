"""Orphans of a killed owner are reaped by `enclave-tools gc` and by the next start;
the command line works end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from enclave_tools.backends.docker import LABEL, OWNER_PID
from enclave_tools.cli import main

ORPHAN_MAKER = textwrap.dedent(
    """
    import os, signal, sys
    from enclave_tools import Sandbox
    sb = Sandbox(image=sys.argv[1]).start()
    print(sb.container_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no cleanup: an orphan is left
    """
)


def _orphan(image: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN_MAKER, image], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    return done.stdout.strip()


def _exists(client, container_id: str) -> bool:
    return any(
        c.id == container_id for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
    )


def test_gc_removes_sandboxes_of_a_killed_owner(kernel_image, docker_engine, sandbox, capsys):
    orphan = _orphan(kernel_image)
    assert _exists(docker_engine, orphan)
    assert main(["gc"]) == 0
    assert not _exists(docker_engine, orphan)
    assert _exists(docker_engine, sandbox.container_id)  # a live owner's sandbox stays
    assert "orphaned sandbox(es) removed" in capsys.readouterr().out


def test_next_start_removes_orphans(kernel_image, docker_engine, make_sandbox):
    orphan = _orphan(kernel_image)
    labels = docker_engine.containers.get(orphan).labels
    assert labels[OWNER_PID] != str(os.getpid())
    make_sandbox().start()
    assert not _exists(docker_engine, orphan)


def test_exec_prints_text_and_saves_images(kernel_image, tmp_path, capsys):
    code = "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show(); print('drawn')"
    status = main(["exec", code, "--output-dir", str(tmp_path), "--image", kernel_image])
    out = capsys.readouterr().out
    assert status == 0
    assert "drawn" in out
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"\x89PNG")
    assert main(["exec", "1/0", "--output-dir", str(tmp_path), "--image", kernel_image]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave_tools.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_run_is_an_interactive_prompt_with_state(kernel_image, tmp_path):
    session = "x = 20\ndef double(v):\n    return 2 * v\n\nprint(double(x) + 2)\n"
    done = _cli("run", "--image", kernel_image, "--output-dir", str(tmp_path), stdin=session)
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout.splitlines()
    assert "Variables persist" in done.stderr


def test_ps_lists_and_stop_removes_a_sandbox(sandbox, docker_engine):
    listing = _cli("ps")
    assert listing.returncode == 0
    name = f"enclave-{sandbox.id}"
    line = next(row for row in listing.stdout.splitlines() if row.startswith(name))
    assert str(os.getpid()) in line and "unix socket" in line and "MiB" in line
    assert _cli("stop", name).returncode == 0
    assert not _exists(docker_engine, sandbox.container_id)
    missing = _cli("stop", "no-such-sandbox")
    assert missing.returncode == 2 and "no sandbox" in missing.stderr


def test_image_ls_shows_the_kernel_image(kernel_image):
    listing = _cli("image", "ls")
    assert listing.returncode == 0
    assert "enclave-tools/kernel:" in listing.stdout


def test_image_prune_lists_older_recipes_never_the_current_one(kernel_image, docker_engine):
    from enclave_tools.image import default_image

    old = "enclave-tools/kernel:000000000000"  # as a recipe change leaves one behind
    docker_engine.api.tag(kernel_image, *old.split(":"))
    try:
        listing = _cli("image", "prune", "--dry-run")  # dry: other images here are not ours to remove
        assert listing.returncode == 0, listing.stderr
        assert f"would remove {old}" in listing.stdout
        assert default_image() not in listing.stdout
        assert "enclave-tools/base:" not in listing.stdout
    finally:
        docker_engine.images.remove(old)
    assert docker_engine.images.get(kernel_image)  # untagging the alias left the image


def test_ctrl_c_in_run_interrupts_the_cell_and_keeps_the_session(kernel_image, docker_engine, tmp_path):
    """As in IPython: SIGINT while a cell runs interrupts that cell; the prompt, the
    sandbox and its variables live on."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave_tools.cli",
            "run",
            "--image",
            kernel_image,
            "--output-dir",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("x = 41\nimport time; open('/tmp/started', 'w').close(); time.sleep(120)\n")
        proc.stdin.flush()
        container = _cli_container(docker_engine, proc.pid)
        deadline = time.monotonic() + 120
        while container.exec_run(["test", "-f", "/tmp/started"]).exit_code != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "the cell never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate("print(x + 1)\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for leftover in docker_engine.containers.list(all=True, filters={"label": f"{OWNER_PID}={proc.pid}"}):
            leftover.remove(force=True, v=True)
    assert proc.returncode == 0, err
    assert "KeyboardInterrupt" in out
    assert "42" in out.splitlines()


def _cli_container(client, pid: int):
    """The sandbox container the CLI process ``pid`` started (waits for it to exist)."""
    deadline = time.monotonic() + 180
    while True:
        found = client.containers.list(filters={"label": f"{OWNER_PID}={pid}"})
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the CLI started no sandbox"
        time.sleep(0.2)
