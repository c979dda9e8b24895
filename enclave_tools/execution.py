"""The result of running code: Execution, its rich Results, and the text a model reads."""

from __future__ import annotations

import base64
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Execution", "ExecutionError", "Result", "Status", "clean_text", "cut_middle"]

Status = Literal["ok", "error", "timeout", "kernel_died"]
"""``ok``; ``error`` (the code raised); ``timeout`` (stopped at the deadline);
``kernel_died`` (the kernel crashed or was restarted: its variables are gone)."""

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """``text`` as a model should read it: no ANSI escapes, no control characters,
    carriage-return progress lines collapsed to their final state."""
    text = _ANSI.sub("", text)
    text = text.replace("\r\n", "\n")
    if "\r" in text:  # a line rewritten in place shows its last state (linear time)
        text = "\n".join(_last_state(line) for line in text.split("\n"))
    return _CONTROL.sub("", text)


def _last_state(line: str) -> str:
    return next((part for part in reversed(line.split("\r")) if part), "")


def cut_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail and saying
    how much was cut."""
    if len(text) <= limit:
        return text
    head = int(limit * 0.6)
    tail = max(limit - head, 0)
    cut = len(text) - head - tail
    return (
        f"{text[:head]}\n[... {cut:,} characters cut: the output was too long; print a "
        f"smaller part of it ...]\n{text[len(text) - tail :] if tail else ''}"
    )


@dataclass
class ExecutionError:
    """An exception raised by the user's code: its name, value and a clean traceback."""

    name: str
    value: str
    traceback: str

    def __str__(self) -> str:
        return self.traceback or f"{self.name}: {self.value}"


@dataclass
class Result:
    """One rich output: an ``execute_result`` (the cell's value) or a ``display_data``.

    ``data`` is the Jupyter mime bundle; the accessors decode the common types.
    """

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    is_main_result: bool = False
    display_id: str | None = None

    @property
    def text(self) -> str | None:
        """The ``text/plain`` form, if any."""
        return self.data.get("text/plain")

    @property
    def html(self) -> str | None:
        """The ``text/html`` form, if any."""
        return self.data.get("text/html")

    @property
    def markdown(self) -> str | None:
        """The ``text/markdown`` form, if any."""
        return self.data.get("text/markdown")

    @property
    def svg(self) -> str | None:
        """The ``image/svg+xml`` form, if any."""
        return self.data.get("image/svg+xml")

    @property
    def png(self) -> bytes | None:
        """The ``image/png`` form as bytes, if any."""
        return _b64(self.data.get("image/png"))

    @property
    def jpeg(self) -> bytes | None:
        """The ``image/jpeg`` form as bytes, if any."""
        return _b64(self.data.get("image/jpeg"))

    @property
    def json(self) -> Any:
        """The ``application/json`` form, if any."""
        return self.data.get("application/json")

    def formats(self) -> list[str]:
        """The mime types this result carries."""
        return list(self.data)

    def _repr_png_(self) -> bytes | None:
        return self.png

    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def _repr_svg_(self) -> str | None:
        return self.svg

    def summary(self) -> str:
        """A one-line description for a model, for outputs that are not text."""
        kinds = [m for m in self.data if m != "text/plain"]
        size = self.metadata.get("image/png") or {}
        dims = f" {size['width']}x{size['height']}" if "width" in size and "height" in size else ""
        return f"[{', '.join(kinds) or 'output'}{dims}]"


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value)
    except ValueError:
        return None


@dataclass
class Execution:
    """What running one piece of code produced.

    ``text`` is what a model should read; everything else is the full record.
    """

    status: Status = "ok"
    stdout: str = ""
    stderr: str = ""
    results: list[Result] = field(default_factory=list)
    error: ExecutionError | None = None
    execution_count: int | None = None
    duration: float = 0.0
    state_lost: bool = False
    notes: list[str] = field(default_factory=list)
    output_limit: int = 8000
    _transcript: list[tuple[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when the code ran to the end without raising."""
        return self.status == "ok"

    @property
    def images(self) -> list[bytes]:
        """Every PNG image the code displayed, in order."""
        return [png for r in self.results if (png := r.png) is not None]

    @property
    def text(self) -> str:
        """Output, result and error as a model should read them: in order, ANSI-free,
        cut head and tail to ``output_limit`` characters with a note of the cut."""
        parts: list[str] = []
        for kind, item in self._transcript:
            if kind == "stdout":
                parts.append(item)
            elif kind == "stderr":
                parts.append(item)
            elif kind == "result":
                if item.text is not None and not (item.png or item.jpeg or item.svg):
                    parts.append(item.text if item.text.endswith("\n") else item.text + "\n")
                else:
                    parts.append(item.summary() + "\n")
        body = clean_text("".join(parts))
        if self.error is not None:
            if body and not body.endswith("\n"):
                body += "\n"
            body += clean_text(str(self.error))
        body = body.rstrip("\n")
        notes = "\n".join(f"[{note}]" for note in self.notes)
        text = cut_middle(body, self.output_limit)
        if notes:
            text = f"{text}\n{notes}" if text else notes
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the execution (images as base64); see :meth:`from_dict`."""
        index = {id(r): i for i, r in enumerate(self.results)}
        outputs = [
            {"result": index.get(id(item), -1)} if kind == "result" else {"stream": kind, "text": item}
            for kind, item in self._transcript
        ]
        return {
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "results": [
                {"data": r.data, "metadata": r.metadata, "is_main_result": r.is_main_result}
                for r in self.results
            ],
            "error": None
            if self.error is None
            else {"name": self.error.name, "value": self.error.value, "traceback": self.error.traceback},
            "execution_count": self.execution_count,
            "duration": self.duration,
            "state_lost": self.state_lost,
            "notes": list(self.notes),
            "output_limit": self.output_limit,
            "outputs": outputs,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Execution:
        """The :class:`Execution` that :meth:`to_dict` described (e.g. after a checkpoint)."""
        results = [
            Result(
                data=r.get("data") or {},
                metadata=r.get("metadata") or {},
                is_main_result=bool(r.get("is_main_result")),
            )
            for r in record.get("results") or []
        ]
        transcript: list[tuple[str, Any]] = []
        for out in record.get("outputs") or []:
            if "result" in out:
                if 0 <= out["result"] < len(results):
                    transcript.append(("result", results[out["result"]]))
            else:
                transcript.append((out.get("stream", "stdout"), str(out.get("text", ""))))
        error = record.get("error")
        return cls(
            status=record.get("status", "ok"),
            stdout=record.get("stdout", ""),
            stderr=record.get("stderr", ""),
            results=results,
            error=ExecutionError(error["name"], error["value"], error["traceback"]) if error else None,
            execution_count=record.get("execution_count"),
            duration=float(record.get("duration") or 0.0),
            state_lost=bool(record.get("state_lost")),
            notes=list(record.get("notes") or []),
            output_limit=int(record.get("output_limit") or 8000),
            _transcript=transcript,
        )

    def __str__(self) -> str:
        return self.text

    def _ipython_display_(self) -> None:
        """In a notebook: the text, then every image inline."""
        from IPython.display import Image, display

        print(self.text if self.text else f"[{self.status}, no output]")
        for png in self.images:
            display(Image(data=png, format="png"))


class OutputLog:
    """Collects one run's output in order, keeping at most ``limit`` characters of
    stream text (its head, and its tail in a ring) and counting what it drops."""

    def __init__(self, limit: int) -> None:
        self._head_budget = limit // 2
        self._tail_budget = limit - self._head_budget
        self.transcript: list[tuple[str, Any]] = []
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_chars = 0
        self.dropped = 0
        self._head_used = 0
        self.results: list[Result] = []
        self._display: dict[str, list[Result]] = {}
        self._clear_pending = False

    def stream(self, name: str, text: str) -> None:
        """Add ``text`` written to ``name`` (stdout or stderr)."""
        self._maybe_clear()
        room = self._head_budget - self._head_used
        if room > 0:
            kept = text[:room]
            self._append_head(name, kept)
            text = text[room:]
        if not text:
            return
        self._tail.append((name, text))
        self._tail_chars += len(text)
        while self._tail_chars > self._tail_budget and self._tail:
            old_name, old = self._tail[0]
            excess = self._tail_chars - self._tail_budget
            if len(old) <= excess:
                self._tail.popleft()
                self._tail_chars -= len(old)
                self.dropped += len(old)
            else:
                self._tail[0] = (old_name, old[excess:])
                self._tail_chars -= excess
                self.dropped += excess

    def _append_head(self, name: str, text: str) -> None:
        self._head_used += len(text)
        if self.transcript and self.transcript[-1][0] == name:
            self.transcript[-1] = (name, self.transcript[-1][1] + text)
        else:
            self.transcript.append((name, text))

    def result(self, result: Result) -> None:
        """Add a rich output (``execute_result`` or ``display_data``)."""
        self._maybe_clear()
        self.results.append(result)
        self.transcript.append(("result", result))
        if result.display_id:
            self._display.setdefault(result.display_id, []).append(result)

    def update_display(self, display_id: str, data: dict, metadata: dict) -> None:
        """Replace the outputs shown earlier under ``display_id``."""
        for shown in self._display.get(display_id, []):
            shown.data, shown.metadata = data, metadata

    def clear(self, wait: bool) -> None:
        """``clear_output``: forget what was shown (now, or before the next output)."""
        if wait:
            self._clear_pending = True
        else:
            self._clear_now()

    def _maybe_clear(self) -> None:
        if self._clear_pending:
            self._clear_pending = False
            self._clear_now()

    def _clear_now(self) -> None:
        self.transcript.clear()
        self.results.clear()
        self._display.clear()
        self._tail.clear()
        self._tail_chars = self._head_used = 0

    def finish(self) -> tuple[list[tuple[str, Any]], str, str]:
        """The transcript with the tail joined on, and the stdout and stderr texts."""
        transcript = list(self.transcript)
        if self.dropped:
            marker = f"\n[... {self.dropped:,} characters of output dropped ...]\n"
            name = self._tail[0][0] if self._tail else "stdout"
            transcript.append((name, marker))
        for name, text in self._tail:
            if transcript and transcript[-1][0] == name:
                transcript[-1] = (name, transcript[-1][1] + text)
            else:
                transcript.append((name, text))
        stdout = "".join(t for k, t in transcript if k == "stdout")
        stderr = "".join(t for k, t in transcript if k == "stderr")
        return transcript, stdout, stderr


def error_from_content(content: dict[str, Any]) -> ExecutionError:
    """An :class:`ExecutionError` from an ``error`` message or an error ``execute_reply``."""
    frames = content.get("traceback") or []
    if not isinstance(frames, list):
        frames = [str(frames)]
    joined = "".join(f if str(f).endswith("\n") else f"{f}\n" for f in map(str, frames))
    traceback = clean_text(joined).strip("\n")
    return ExecutionError(
        name=str(content.get("ename", "Error")),
        value=clean_text(str(content.get("evalue", ""))),
        traceback=traceback,
    )


def dumps(execution: Execution) -> str:
    """``execution`` as JSON."""
    return json.dumps(execution.to_dict())
