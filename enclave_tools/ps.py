"""``enclave-tools ps`` and ``stop``: the table of sandboxes a backend lists, and which of
them an id names. Each backend says what it knows (:meth:`Backend.describe_sandboxes`);
this module only formats it. What a backend read from a cluster or a gateway is anyone's
writing: every cell is cut short and shown with its unprintable characters as '?'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from enclave_tools.attach import MAX_REPORTED_S
from enclave_tools.backends.base import SandboxInfo
from enclave_tools.execution import one_line

__all__ = ["HEADER", "CELL_LIMIT", "duration", "matching", "rows", "table"]

HEADER = ["NAME", "SESSION", "OWNER", "AGE", "IDLE", "EXPIRES IN", "GATEWAY", "MEMORY", "STATUS"]
CELL_LIMIT = 64
"""The most characters of one cell (then '...')."""


def rows(infos: Iterable[SandboxInfo], now: float | None = None) -> list[list[str]]:
    """The table's rows: '-' where a field does not apply, '?' where it is unknown."""
    now = time.time() if now is None else now
    return [
        [
            cell(info.name),
            cell(info.session),
            cell(info.owner),
            "?" if info.created is None else duration(now - info.created),
            timing(info.idle),
            timing(info.expires_in),
            cell(info.where),
            cell(info.memory),
            cell(info.status),
        ]
        for info in infos
    ]


def cell(value: object, limit: int = CELL_LIMIT) -> str:
    """One cell: '-' for None, else the text cut to ``limit`` and printable."""
    return "-" if value is None else one_line(str(value), limit) or "-"


def timing(value: float | str | None) -> str:
    """A duration cell: seconds as a duration, a word as itself, None as '-'."""
    return cell(value) if value is None or isinstance(value, str) else duration(value)


def duration(seconds: object) -> str:
    """``seconds`` as 42s, 5m, 3h or 2d ('-' if not a finite number; at most ten years)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "-"
    seconds = min(seconds, MAX_REPORTED_S)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def matching(infos: Iterable[SandboxInfo], wanted: str) -> list[SandboxInfo]:
    """The sandboxes ``wanted`` names: by name, by sandbox id, or by a prefix of the
    backend's id (container id, pod name, kernel id)."""
    return [
        info
        for info in infos
        if wanted in (info.name, info.sandbox_id)
        or (info.container_id and info.container_id.startswith(wanted))
    ]


def table(header: list[str], body: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    return [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip()
        for row in [header, *body]
    ]
