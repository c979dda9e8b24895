"""The result of running code: Execution, its rich Results, and the text a model reads."""

from __future__ import annotations

import base64
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Execution",
    "ExecutionError",
    "Result",
    "Status",
    "clean_text",
    "cut_middle",
    "for_model",
    "one_line",
]

Status = Literal["ok", "error", "timeout", "kernel_died"]
"""``ok``; ``error`` (the code raised); ``timeout`` (stopped at the deadline);
``kernel_died`` (the kernel crashed or was restarted: its variables are gone)."""

_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI (7- or 8-bit): colours, cursor moves
    # OSC, DCS, SOS, PM, APC strings (7- or 8-bit): titles, hyperlinks, device requests.
    # An unterminated one ends at the line's end, so it cannot swallow the rest.
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"  # other escapes: two bytes, or with intermediates (ESC ( B)
)
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 controls but \t and \n; DEL; all of C1
    "\u202a-\u202e\u2066-\u2069"  # bidi embeddings, overrides and isolates
    "\ud800-\udfff]"  # lone surrogates: no encoder takes them
)
# The bidi *marks* (U+200E, U+200F, U+061C) stay: they cannot reorder a span of text, and
# right-to-left prose needs them. The embeddings, overrides and isolates can make text
# display in an order other than the one it is read in ("Trojan Source").


def clean_text(text: str) -> str:
    """``text`` safe for a model or a terminal: no ANSI escape sequences (7- or 8-bit), no
    control characters but newline and tab, no bidi overrides or isolates, no lone
    surrogates; carriage-return progress lines collapsed to their final state."""
    if not isinstance(text, str):
        text = str(text)
    text = _ANSI.sub("", text)
    text = text.replace("\r\n", "\n")
    if "\r" in text:  # a line rewritten in place shows its last state (linear time)
        text = "\n".join(_last_state(line) for line in text.split("\n"))
    return _UNSAFE.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    return "\ufffd" if "\ud800" <= match.group() <= "\udfff" else ""


def for_model(text: str, limit: int) -> str:
    """``text`` as a model (or a terminal) may read it: cleaned (see :func:`clean_text`)
    and cut to about ``limit`` characters, head and tail, with a note of the cut."""
    return cut_middle(clean_text(text), limit)


def one_line(text: str, limit: int = 64) -> str:
    """``text`` that anyone may have written (a pod's annotation, a gateway's answer) fit
    for one line of a message or one cell of a table: every character that is not
    printable (controls, escapes, newlines, bidi overrides) shown as '?', cut to ``limit``
    characters with '...'."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _last_state(line: str) -> str:
    return next((part for part in reversed(line.split("\r")) if part), "")


def cut_middle(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail and saying
    how much was cut."""
    limit = max(int(limit), 0)
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

    ``data`` is the Jupyter mime bundle; the accessors decode the common types. The kernel
    makes the bundle, so it may be anything: the accessors never raise, and a form that is
    not what its mime type says reads as absent (text forms are turned into text).
    """

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    is_main_result: bool = False
    display_id: str | None = None
    _decoded: dict[str, tuple[Any, bytes | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "data":  # new data (an update_display): decoded images are stale
            object.__setattr__(self, "_decoded", {})
        object.__setattr__(self, name, value)

    def _get(self, mime: str) -> Any:
        return self.data.get(mime) if isinstance(self.data, dict) else None

    def has(self, mime: str) -> bool:
        """Whether the bundle carries ``mime`` at all (without decoding it)."""
        return self._get(mime) is not None

    @property
    def text(self) -> str | None:
        """The ``text/plain`` form, if any."""
        return _as_text(self._get("text/plain"))

    @property
    def html(self) -> str | None:
        """The ``text/html`` form, if any."""
        return _as_text(self._get("text/html"))

    @property
    def markdown(self) -> str | None:
        """The ``text/markdown`` form, if any."""
        return _as_text(self._get("text/markdown"))

    @property
    def svg(self) -> str | None:
        """The ``image/svg+xml`` form, if any."""
        return _as_text(self._get("image/svg+xml"))

    @property
    def png(self) -> bytes | None:
        """The ``image/png`` form as bytes, if any (decoded once, then kept)."""
        return self._image("image/png")

    @property
    def jpeg(self) -> bytes | None:
        """The ``image/jpeg`` form as bytes, if any (decoded once, then kept)."""
        return self._image("image/jpeg")

    def _image(self, mime: str) -> bytes | None:
        value = self._get(mime)
        cached = self._decoded.get(mime)
        if cached is not None and cached[0] is value:
            return cached[1]
        decoded = _b64(value)
        self._decoded[mime] = (value, decoded)
        return decoded

    @property
    def json(self) -> Any:
        """The ``application/json`` form, if any."""
        return self._get("application/json")

    def formats(self) -> list[str]:
        """The mime types this result carries."""
        return [str(mime) for mime in self.data] if isinstance(self.data, dict) else []

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
        kinds = [m for m in self.formats() if m != "text/plain"]
        size = self.metadata.get("image/png") if isinstance(self.metadata, dict) else None
        dims = ""
        if isinstance(size, dict):
            width, height = size.get("width"), size.get("height")
            if _is_number(width) and _is_number(height):
                dims = f" {width}x{height}"
        return f"[{', '.join(kinds) or 'output'}{dims}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_text(value: Any) -> str | None:
    """A mime bundle's text form as one string: a string as it is, a list of strings
    joined (nbformat's multi-line form), anything else as JSON; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        return repr(type(value))


def _b64(value: Any) -> bytes | None:
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        value = "".join(value)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value)
    except ValueError:  # binascii.Error, or a non-ASCII string
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
        """Every PNG image the code displayed, in order (each decoded once, then kept)."""
        return [png for r in self.results if (png := r.png) is not None]

    @property
    def text(self) -> str:
        """Output, result and error as a model should read them: in order, cleaned (see
        :func:`for_model`), cut head and tail to ``output_limit`` characters with a note
        of the cut, then the notes."""
        parts: list[str] = []
        for kind, item in self._transcript:
            if kind == "result":
                parts.append(_result_line(item))
            else:
                parts.append(item if isinstance(item, str) else str(item))
        body = "".join(parts)
        if self.error is not None:
            if body and not body.endswith("\n"):
                body += "\n"
            body += str(self.error)
        text = for_model(body, self.output_limit).rstrip("\n")
        notes = "\n".join(f"[{clean_text(str(note))}]" for note in self.notes)
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
        """The :class:`Execution` that :meth:`to_dict` described (e.g. after a checkpoint).
        A record in another shape gives what could be read of it, never an exception."""
        record = record if isinstance(record, dict) else {}
        results = [
            Result(
                data=r.get("data") or {},
                metadata=r.get("metadata") or {},
                is_main_result=bool(r.get("is_main_result")),
            )
            for r in _list(record.get("results"))
            if isinstance(r, dict)
        ]
        transcript: list[tuple[str, Any]] = []
        for out in _list(record.get("outputs")):
            if not isinstance(out, dict):
                continue
            if "result" in out:
                index = out["result"]
                if isinstance(index, int) and 0 <= index < len(results):
                    transcript.append(("result", results[index]))
            else:
                stream = "stderr" if out.get("stream") == "stderr" else "stdout"
                transcript.append((stream, _str(out.get("text"))))
        error = record.get("error")
        status = record.get("status")
        try:
            output_limit = int(record.get("output_limit") or 8000)
            duration = float(record.get("duration") or 0.0)
        except (TypeError, ValueError, OverflowError):
            output_limit, duration = 8000, 0.0
        count = record.get("execution_count")
        return cls(
            status=status if status in ("ok", "error", "timeout", "kernel_died") else "error",
            stdout=_str(record.get("stdout")),
            stderr=_str(record.get("stderr")),
            results=results,
            error=ExecutionError(
                _str(error.get("name")), _str(error.get("value")), _str(error.get("traceback"))
            )
            if isinstance(error, dict)
            else None,
            execution_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
            duration=duration,
            state_lost=bool(record.get("state_lost")),
            notes=[_str(note) for note in _list(record.get("notes"))],
            output_limit=max(output_limit, 0),
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


def _result_line(result: Result) -> str:
    """A rich output as a line of :attr:`Execution.text`: its text, unless it is an image."""
    text = result.text
    if text is not None and not any(result.has(m) for m in ("image/png", "image/jpeg", "image/svg+xml")):
        return text if text.endswith("\n") else text + "\n"
    return result.summary() + "\n"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else (_as_text(value) or "")


RICH_LIMIT = 64 * 2**20
"""Default bytes of rich output (mime bundles) kept per run."""

BUNDLE_OVERHEAD = 512
"""Bytes counted for each kept bundle beyond its data: the objects that hold it."""


def bundle_size(data: Any, metadata: Any = None) -> int:
    """The bytes a mime bundle counts against the rich-output limit: the UTF-8 size of
    its keys and string values, the JSON size of other values, plus a fixed overhead.
    A bundle that cannot be measured counts as too large to keep."""
    try:
        return BUNDLE_OVERHEAD + _encoded_size(data) + _encoded_size(metadata)
    except (ValueError, TypeError, RecursionError):
        return 2**62


def _encoded_size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(_encoded_size(str(key)) + _encoded_size(item) for key, item in value.items())
    return len(json.dumps(value))


class OutputLog:
    """Collects one run's output in order, keeping at most ``limit`` characters of
    stream text (its head, and its tail in a ring) and counting what it drops, and at
    most ``rich_limit`` bytes of rich outputs (see :func:`bundle_size`): a bundle that
    would go past it is dropped whole and counted."""

    def __init__(self, limit: int, rich_limit: int = RICH_LIMIT) -> None:
        self.rich_limit = rich_limit
        self.rich_kept = 0  # bytes of the bundles kept now
        self.rich_dropped = 0  # bundles (and display updates) dropped
        self.rich_dropped_bytes = 0
        self._sizes: dict[int, int] = {}  # id(result) -> its size, for kept results
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

    def result(self, result: Result) -> bool:
        """Add a rich output (``execute_result`` or ``display_data``); return whether it
        was kept (False: it would have gone past the rich-output limit)."""
        self._maybe_clear()
        size = bundle_size(result.data, result.metadata)
        if self.rich_kept + size > self.rich_limit:
            self._drop(size)
            return False
        self.rich_kept += size
        self._sizes[id(result)] = size
        self.results.append(result)
        self.transcript.append(("result", result))
        if result.display_id:
            self._display.setdefault(result.display_id, []).append(result)
        return True

    def _drop(self, size: int) -> None:
        self.rich_dropped += 1
        self.rich_dropped_bytes += size

    def update_display(self, display_id: str, data: Any, metadata: Any) -> None:
        """Replace the outputs shown earlier under ``display_id`` (unless the new data
        would go past the rich-output limit: then the update is dropped and counted)."""
        shown = self._display.get(display_id, [])
        if not shown:
            return
        size = bundle_size(data, metadata)
        freed = sum(self._sizes.get(id(result), 0) for result in shown)
        if self.rich_kept - freed + size * len(shown) > self.rich_limit:
            self._drop(size)
            return
        self.rich_kept += size * len(shown) - freed
        for result in shown:
            self._sizes[id(result)] = size
            result.data, result.metadata = data, metadata

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
        self._sizes.clear()
        self.rich_kept = 0
        self._tail.clear()
        self._tail_chars = self._head_used = 0

    def rich_note(self) -> str | None:
        """What was dropped for the rich-output limit, for the model; None if nothing."""
        if not self.rich_dropped:
            return None
        outputs = "rich outputs" if self.rich_dropped != 1 else "rich output"
        were = "were" if self.rich_dropped != 1 else "was"
        return (
            f"{self.rich_dropped:,} {outputs} ({_megabytes(self.rich_dropped_bytes)}) {were} "
            f"dropped: the per-run limit is {_megabytes(self.rich_limit)} of images, HTML and "
            "other rich output. Show fewer or smaller outputs, or save them to files."
        )

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


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB" if size < 2**60 else "an unmeasurable size"


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
