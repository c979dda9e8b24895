"""Live output and the session as a notebook, against a real sandbox.

Liveness is proved without timing: the cell waits for a file that only the output callback
writes, on seeing the cell's first line. Had the output not arrived while the cell ran,
the cell would run into its time limit and the test would fail on its status."""

from __future__ import annotations

import asyncio
import json

import nbformat

from enclave_tools import Sandbox
from enclave_tools.cli import main
from enclave_tools.live import OutputEvent

WAIT_FOR_GO = """
import os, time
print('waiting for go', flush=True)
while not os.path.exists('{go}'):
    time.sleep(0.02)
print('went')
"""
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def test_output_arrives_while_the_cell_runs(sandbox):
    seen: list[OutputEvent] = []

    def on_output(event: OutputEvent) -> None:
        seen.append(event)
        if "waiting for go" in event.text:
            sandbox.write_file("go", "")  # only a live event can let the cell end

    execution = sandbox.run(WAIT_FOR_GO.format(go="go"), timeout=60, on_output=on_output)
    assert execution.status == "ok", execution.text
    assert [e.text for e in seen] == ["waiting for go\n", "went\n"]


def test_arun_delivers_plots_and_errors_live_on_the_loop(sandbox):
    async def main_() -> tuple[list[OutputEvent], object]:
        seen: list[OutputEvent] = []

        async def on_output(event: OutputEvent) -> None:
            seen.append(event)
            if "waiting for go" in event.text:
                await asyncio.to_thread(sandbox.write_file, "go-async", "")

        first = await sandbox.arun(WAIT_FOR_GO.format(go="go-async"), timeout=60, on_output=on_output)
        assert first.status == "ok", first.text
        await sandbox.arun(PLOT, on_output=on_output)
        await sandbox.arun("1/0", on_output=on_output)
        return seen, first

    seen, _first = asyncio.run(asyncio.wait_for(main_(), 120))
    kinds = [e.kind for e in seen]
    assert kinds[:2] == ["stdout", "stdout"] and "image" in kinds and kinds[-1] == "error"
    image = next(e for e in seen if e.kind == "image")
    assert image.png is not None and image.png.startswith(b"\x89PNG")
    assert "ZeroDivisionError" in seen[-1].text


def test_stream_yields_events_then_the_execution(sandbox):
    run = sandbox.stream("for i in range(3): print(i)\n'end'")
    texts = [event.text for event in run]
    assert "".join(texts[:-1]).split() == ["0", "1", "2"] and texts[-1] == "'end'"
    assert run.execution is not None and run.execution.ok


def test_the_session_exports_as_a_notebook_and_replays(sandbox, sandbox_config, tmp_path):
    sandbox.run("x = 20\nprint('set')")
    sandbox.run(PLOT)
    sandbox.run("1/0")
    sandbox.run("x + 22")
    assert [r.status for r in sandbox.history] == ["ok", "ok", "error", "ok"]
    path = sandbox.export_notebook(tmp_path / "session.ipynb")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    outputs = [cell.outputs for cell in notebook.cells]
    assert outputs[0][0].text == "set\n"
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in outputs[1])
    assert outputs[2][0].ename == "ZeroDivisionError"
    assert outputs[3][0].data["text/plain"] == "42"

    replayed = Sandbox.from_notebook(path, config=sandbox_config, stop_on_error=False)
    try:
        assert [r.status for r in replayed.history] == ["ok", "ok", "error", "ok"]
        assert replayed.run("x").text == "20"  # the state was rebuilt in a fresh kernel
    finally:
        replayed.close()
    stopped = Sandbox.from_notebook(path, config=sandbox_config)
    try:
        assert [r.status for r in stopped.history] == ["ok", "ok", "error"]  # stops at 1/0
    finally:
        stopped.close()


def test_exec_writes_a_notebook(kernel_image, tmp_path, capsys):
    target = tmp_path / "out" / "exec.ipynb"
    status = main(
        [
            "exec",
            PLOT + "\nprint('drawn')",
            "--image",
            kernel_image,
            "--output-dir",
            str(tmp_path),
            "--notebook",
            str(target),
        ]
    )
    assert status == 0
    notebook = nbformat.read(target, as_version=4)
    nbformat.validate(notebook)
    kinds = [o.output_type for o in notebook.cells[0].outputs]
    assert "display_data" in kinds and "stream" in kinds
    assert json.loads(target.read_text())["nbformat"] == 4
