"""A sandbox's run history: every run's code, outputs, status and timings, bounded.

:class:`RunHistory` keeps the latest runs within :data:`HISTORY_RUNS` runs and
:data:`HISTORY_BYTES` bytes (code, text output and rich outputs); older runs are dropped
whole and counted. :mod:`enclave_tools.notebook` writes it as a Jupyter notebook.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from enclave_tools.execution import Execution, bundle_size

__all__ = ["HISTORY_BYTES", "HISTORY_RUNS", "RunHistory", "RunRecord"]

HISTORY_RUNS = 500
"""The most runs a sandbox's history keeps."""

HISTORY_BYTES = 128 * 2**20
"""The most bytes (code, text and rich outputs) a sandbox's history keeps; the latest run
is kept even if it alone is larger (its rich outputs are bounded by ``result_limit``)."""


@dataclass
class RunRecord:
    """One run: its code, what it produced, and when.

    ``execution`` is None when the sandbox itself failed (``status == "sandbox_error"``;
    ``failure`` says how)."""

    code: str
    execution: Execution | None
    started_at: datetime
    duration: float
    failure: str | None = None

    @property
    def status(self) -> str:
        """The execution's status, or ``sandbox_error``."""
        return self.execution.status if self.execution is not None else "sandbox_error"

    @property
    def size(self) -> int:
        """Bytes this record counts against :data:`HISTORY_BYTES` (approximate)."""
        size = len(self.code) + len(self.failure or "") + 256
        execution = self.execution
        if execution is not None:
            size += len(execution.stdout) + len(execution.stderr)
            size += sum(bundle_size(r.data, r.metadata) for r in execution.results)
            if execution.error is not None:
                size += len(execution.error.traceback) + len(execution.error.value)
        return size


class RunHistory:
    """The latest runs of a sandbox, oldest first (a sequence of :class:`RunRecord`);
    :attr:`dropped` counts the runs dropped to stay within its bounds."""

    def __init__(self, max_runs: int = HISTORY_RUNS, max_bytes: int = HISTORY_BYTES) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.dropped = 0
        self._records: deque[tuple[RunRecord, int]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, record: RunRecord) -> None:
        """Keep ``record``, dropping the oldest runs past the bounds."""
        size = record.size
        with self._lock:
            self._records.append((record, size))
            self._bytes += size
            while len(self._records) > 1 and (
                len(self._records) > self.max_runs or self._bytes > self.max_bytes
            ):
                _old, old_size = self._records.popleft()
                self._bytes -= old_size
                self.dropped += 1

    def record(
        self,
        code: str,
        execution: Execution | None,
        started: float,
        duration: float,
        failure: str | None = None,
    ) -> None:
        """Keep one run that started at ``started`` (``time.time()``)."""
        when = datetime.fromtimestamp(started, tz=UTC)
        self.add(RunRecord(code, execution, when, duration, failure))

    def clear(self) -> None:
        """Forget every run."""
        with self._lock:
            self._records.clear()
            self._bytes = 0
            self.dropped = 0

    def runs(self) -> list[RunRecord]:
        """The runs kept, oldest first."""
        with self._lock:
            return [record for record, _size in self._records]

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.runs())

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> RunRecord:
        return self.runs()[index]

    def __repr__(self) -> str:
        return f"<RunHistory {len(self)} runs, {self.dropped} dropped>"
