"""Files in and out of a sandbox through the gateway's file API, streamed and bounded.

Reads never hold more than the limit in memory; downloads go to a temporary file beside
the target and replace it only when complete, so a failed copy leaves nothing half-written.
The gateway refuses anything but a regular file and anything over ``max_bytes``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from enclave_tools.errors import FileTransferError
from enclave_tools.transport import GatewayHTTP, quote_path

__all__ = ["NO_FILE_API", "read_bytes", "download_to", "upload_from"]

NO_FILE_API = (
    "this gateway has no file API (/api/enclave/files): it is a stock Jupyter Kernel or "
    "Enterprise Gateway. Use the enclave-tools kernel image, or move data with code."
)


def _url(remote: str, limit: int | None = None) -> str:
    query = f"path={quote_path(remote)}"
    return (
        f"/api/enclave/files?{query}&max_bytes={limit}"
        if limit is not None
        else f"/api/enclave/files?{query}"
    )


def read_bytes(http: GatewayHTTP, remote: str, limit: int, timeout: float) -> bytes:
    """The contents of ``remote`` (at most ``limit`` bytes, else :class:`FileTransferError`)."""
    sink = io.BytesIO()
    status, body = http.stream_to("GET", _url(remote, limit), sink, limit, timeout)
    _check(status, body, 200, f"cannot read {remote!r} in the sandbox", limit)
    return sink.getvalue()


def download_to(http: GatewayHTTP, remote: str, target: Path, limit: int, timeout: float) -> Path:
    """Copy ``remote`` to the local ``target`` (at most ``limit`` bytes); return ``target``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise FileTransferError(f"cannot write {str(target)!r} on this machine: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as sink:
            status, body = http.stream_to(
                "GET", _url(remote, limit), _LocalSink(sink, target), limit, timeout
            )
        _check(status, body, 200, f"cannot read {remote!r} in the sandbox", limit)
        os.replace(partial, target)
    except OSError as exc:
        raise FileTransferError(f"cannot write {str(target)!r} on this machine: {exc.strerror}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def upload_from(http: GatewayHTTP, remote: str, body: bytes | BinaryIO, size: int, timeout: float) -> None:
    """Write ``body`` (``size`` bytes) to ``remote`` in the sandbox."""
    status, data = http.request(
        "PUT", _url(remote), body, timeout=timeout, headers={"Content-Length": str(size)}
    )
    _check(status, data, 201, f"cannot write {remote!r} in the sandbox", None)


class _LocalSink:
    """A file sink whose write errors (a full disk) name the local target."""

    def __init__(self, handle: BinaryIO, target: Path) -> None:
        self._handle, self._target = handle, target

    def write(self, data: bytes) -> Any:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise FileTransferError(
                f"cannot write {str(self._target)!r} on this machine: {exc.strerror}"
            ) from exc


def _check(status: int, body: bytes, expected: int, failure: str, limit: int | None) -> None:
    if status == expected:
        return
    answer = _answer(body)
    if status == 404 and answer is None:  # the route is missing, not the file
        raise FileTransferError(NO_FILE_API)
    reason = str((answer or {}).get("reason") or body[:200].decode("utf-8", "replace"))[:500]
    if status == 413 and limit is not None:
        size = (answer or {}).get("size")
        what = f"it is {size:,} bytes" if isinstance(size, int) else "it is too large"
        raise FileTransferError(f"{failure}: {what}; the limit is {limit:,} bytes (SandboxConfig.file_limit)")
    raise FileTransferError(f"{failure}: {reason}")


def _answer(body: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) else None
