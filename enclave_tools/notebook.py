"""The session as a notebook: a run history written as a Jupyter notebook (nbformat 4.5),
and a notebook's code cells read back to replay them.

Everything a run produced came from the sandbox, so it is written in a form a notebook
may hold whatever it was: text cleaned (:func:`clean_text`), mime bundles whose values are
not what nbformat allows turned into text, counts that are not non-negative integers left
out. The notebook carries no signature, so Jupyter opens it untrusted (no script runs).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from enclave_tools.errors import InvalidInput
from enclave_tools.execution import Execution, Result, clean_text
from enclave_tools.history import RunRecord

__all__ = ["MAX_NOTEBOOK_BYTES", "code_cells", "notebook_json", "read_code_cells", "write_notebook"]

MAX_NOTEBOOK_BYTES = 256 * 2**20
"""The largest notebook file :func:`read_code_cells` reads."""

_JSON_MIME = re.compile(r"^application/(.*\+)?json$")
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
_KERNELSPEC = {"display_name": "Python 3 (enclave-tools)", "language": "python", "name": "python3"}


def notebook_json(records: Iterable[RunRecord], dropped: int = 0) -> dict[str, Any]:
    """A notebook (nbformat 4.5, as a JSON-ready dict) with one code cell per run: its
    code, outputs (text, values, plots, the error) and, in the cell's ``enclave``
    metadata, its status, start time, duration and notes."""
    cells: list[dict[str, Any]] = []
    if dropped:
        cells.append(
            _markdown(
                f"*{dropped:,} earlier runs are not shown: the session's history keeps only the latest runs.*"
            )
        )
    cells += [_code_cell(record) for record in records]
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": dict(_KERNELSPEC),
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_notebook(path: str | os.PathLike[str], notebook: dict[str, Any]) -> Path:
    """Write ``notebook`` to ``path`` (whole or not at all: a temporary file renamed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_code_cells(path: str | os.PathLike[str]) -> list[str]:
    """The source of each code cell of the notebook at ``path``, in order (empty cells
    left out). Raises :class:`InvalidInput` for a file that is not a notebook."""
    source = Path(path)
    try:
        with source.open("rb") as handle:
            data = handle.read(MAX_NOTEBOOK_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read the notebook {source}: {exc}") from exc
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise InvalidInput(f"{source} is larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB")
    try:
        notebook = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{source} is not a Jupyter notebook (not valid JSON): {exc}") from exc
    return code_cells(notebook, str(source))


def code_cells(notebook: Any, name: str = "the notebook") -> list[str]:
    """The code cells' sources of a parsed notebook (nbformat 4)."""
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise InvalidInput(f"{name} is not a Jupyter notebook (nbformat 4): it has no list of cells")
    sources = []
    for cell in notebook["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = _multiline(cell.get("source"))
        if source is None:
            raise InvalidInput(f"{name} has a code cell whose source is not text")
        if source.strip():
            sources.append(source)
    return sources


def _code_cell(record: RunRecord) -> dict[str, Any]:
    execution = record.execution
    count = execution.execution_count if execution is not None else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        count = None
    info: dict[str, Any] = {
        "status": record.status,
        "started_at": record.started_at.isoformat(),
        "duration": round(record.duration, 6),
    }
    outputs: list[dict[str, Any]] = []
    if execution is not None:
        outputs = _outputs(execution, count)
        if execution.notes:
            info["notes"] = [clean_text(note) for note in execution.notes]
            outputs.append(_stream("stderr", "".join(f"[{n}]\n" for n in info["notes"])))
    if record.failure:
        info["failure"] = clean_text(record.failure)
        outputs.append(_stream("stderr", f"[the sandbox failed: {info['failure']}]\n"))
    return {
        "cell_type": "code",
        "execution_count": count,
        "id": uuid.uuid4().hex[:12],
        "metadata": {"enclave": info},
        "outputs": outputs,
        "source": record.code,
    }


def _outputs(execution: Execution, count: int | None) -> list[dict[str, Any]]:
    outputs: list[dict[str, Any]] = []
    for kind, item in execution._transcript:
        if kind == "result" and isinstance(item, Result):
            outputs.append(_rich(item, count))
        elif kind in ("stdout", "stderr") and item:
            outputs.append(_stream(kind, str(item)))
    error = execution.error
    if error is not None:
        outputs.append(
            {
                "output_type": "error",
                "ename": clean_text(error.name),
                "evalue": clean_text(error.value),
                "traceback": clean_text(error.traceback or f"{error.name}: {error.value}").split("\n"),
            }
        )
    return outputs


def _stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": clean_text(text)}


def _rich(result: Result, count: int | None) -> dict[str, Any]:
    data = _bundle(result.data)
    metadata = _clean_json(result.metadata) if _jsonable(result.metadata) else {}
    metadata = metadata if isinstance(metadata, dict) else {}
    if result.is_main_result:
        return {"output_type": "execute_result", "execution_count": count, "data": data, "metadata": metadata}
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def _bundle(data: Any) -> dict[str, Any]:
    """A mime bundle as nbformat allows it: mime-type keys; JSON types any JSON value,
    the others text (a string or a list of strings)."""
    bundle: dict[str, Any] = {}
    for mime, value in data.items() if isinstance(data, dict) else []:
        if not isinstance(mime, str) or not _MIME.match(mime):
            continue
        if _JSON_MIME.match(mime):
            if _jsonable(value):
                bundle[mime] = _clean_json(value)
        elif isinstance(value, str):
            bundle[mime] = clean_text(value)
        elif isinstance(value, list) and all(isinstance(line, str) for line in value):
            bundle[mime] = clean_text("".join(value))
        else:
            bundle[mime] = json.dumps(value, default=str) if _jsonable(value) else repr(type(value))
    if not bundle:
        bundle["text/plain"] = "[an output with no displayable form]"
    return bundle


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _clean_json(value: Any) -> Any:
    """A JSON value with every string cleaned (no lone surrogates or controls)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): _clean_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    return value


def _markdown(text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": uuid.uuid4().hex[:12], "metadata": {}, "source": text}


def _multiline(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(value)
    return None
