"""The run history and the notebook written from it: valid nbformat whatever the kernel
sent, bounded, and read back for a replay."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import nbformat
import pytest

from enclave_tools.errors import InvalidInput
from enclave_tools.execution import Execution, ExecutionError, Result
from enclave_tools.history import RunHistory
from enclave_tools.notebook import notebook_json, read_code_cells, write_notebook

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()


def execution_with(*outputs: tuple[str, object], **fields: object) -> Execution:
    results = [item for kind, item in outputs if kind == "result"]
    return Execution(results=results, _transcript=list(outputs), **fields)  # type: ignore[arg-type]


def write_and_validate(history: RunHistory, path: Path) -> dict:
    write_notebook(path, notebook_json(history.runs(), history.dropped))
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_session_becomes_a_valid_notebook_with_outputs_and_plots(tmp_path: Path):
    history = RunHistory()
    plot = Result(data={"image/png": PNG, "text/plain": "<Figure>"})
    value = Result(data={"text/plain": "42"}, is_main_result=True)
    history.record(
        "x = 21\nprint('hi')", execution_with(("stdout", "hi\n"), execution_count=1), time.time(), 0.1
    )
    history.record(
        "plt.plot([1]); plt.show()", execution_with(("result", plot), execution_count=2), time.time(), 0.2
    )
    history.record("x * 2", execution_with(("result", value), execution_count=3), time.time(), 0.01)
    history.record(
        "1/0",
        execution_with(
            status="error",
            execution_count=4,
            error=ExecutionError("ZeroDivisionError", "division by zero", "Traceback ..."),
        ),
        time.time(),
        0.01,
    )
    history.record("while True: pass", None, time.time(), 3.0, failure="the sandbox died: OOM")
    notebook = write_and_validate(history, tmp_path / "s.ipynb")
    cells = notebook["cells"]
    assert [c["source"] for c in cells][:3] == ["x = 21\nprint('hi')", "plt.plot([1]); plt.show()", "x * 2"]
    assert cells[0]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    assert cells[1]["outputs"][0]["output_type"] == "display_data"
    assert cells[1]["outputs"][0]["data"]["image/png"] == PNG
    assert cells[2]["outputs"][0]["output_type"] == "execute_result" and cells[2]["execution_count"] == 3
    assert cells[3]["outputs"][0]["ename"] == "ZeroDivisionError"
    assert cells[4]["metadata"]["enclave"]["status"] == "sandbox_error"
    assert "OOM" in cells[4]["outputs"][0]["text"]


def test_whatever_the_kernel_sent_the_notebook_is_valid(tmp_path: Path):
    hostile = Result(
        data={
            "not a mime": "x",
            "text/html": {"a": 1},  # not text
            "text/plain": ["line\ud800", 3],
            "application/json": {"k": float("nan")},
            "application/vnd.x+json": {"ok": ["\x1b[31m"]},
            "image/png": "\x00\u202e",
        },
        metadata={"bad": {1, 2}},
        is_main_result=True,
    )
    history = RunHistory()
    history.record(
        "display()",
        execution_with(
            ("result", hostile),
            ("stdout", "\ud800\x1b]0;title\x07ok\r\n"),
            execution_count=-5,
            notes=["note \x1b[2J"],
        ),
        time.time(),
        0.0,
    )
    notebook = write_and_validate(history, tmp_path / "h.ipynb")
    cell = notebook["cells"][0]
    assert cell["execution_count"] is None
    data = cell["outputs"][0]["data"]
    assert "not a mime" not in data and "application/json" not in data
    assert data["application/vnd.x+json"] == {"ok": [""]}
    assert cell["outputs"][1]["text"] == "\ufffdok\n"


def test_the_history_keeps_the_latest_runs_within_its_bounds(tmp_path: Path):
    history = RunHistory(max_runs=3, max_bytes=10_000)
    for i in range(5):
        history.record(f"x = {i}", Execution(), time.time(), 0.0)
    assert [r.code for r in history] == ["x = 2", "x = 3", "x = 4"] and history.dropped == 2
    history.record("big", Execution(stdout="y" * 20_000), time.time(), 0.0)
    assert [r.code for r in history] == ["big"]  # the latest run is kept even when large
    notebook = write_and_validate(history, tmp_path / "b.ipynb")
    assert "5 earlier runs" in notebook["cells"][0]["source"]


def test_code_cells_are_read_back_for_a_replay(tmp_path: Path):
    history = RunHistory()
    for code in ("a = 1", "b = a + 1", "b"):
        history.record(code, Execution(), time.time(), 0.0)
    path = tmp_path / "r.ipynb"
    write_and_validate(history, path)
    assert read_code_cells(path) == ["a = 1", "b = a + 1", "b"]
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# title"),
            nbformat.v4.new_code_cell(["x = 1\n", "y = 2"]),
            nbformat.v4.new_code_cell("  "),
        ]
    )
    nbformat.write(nb, tmp_path / "j.ipynb")
    assert read_code_cells(tmp_path / "j.ipynb") == ["x = 1\ny = 2"]


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"cells": [{"cell_type": "code", "source": 5}]}'])
def test_a_file_that_is_not_a_notebook_is_refused_clearly(tmp_path: Path, content: bytes):
    path = tmp_path / "bad.ipynb"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match="notebook|source"):
        read_code_cells(path)
    with pytest.raises(InvalidInput, match="cannot read"):
        read_code_cells(tmp_path / "missing.ipynb")
