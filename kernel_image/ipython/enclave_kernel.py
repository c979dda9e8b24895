"""Kernel-side classes of an enclave-tools sandbox, named in ipython_kernel_config.py.

Installed into the kernel's site-packages, so the kernel can import them by name without
anything added to the user's ``sys.path``.
"""

from __future__ import annotations

from ipykernel.iostream import OutStream

__all__ = ["QuickFlushOutStream"]


class QuickFlushOutStream(OutStream):
    """``sys.stdout`` and ``sys.stderr`` whose ``flush()`` returns at once when nothing waits.

    ipykernel's ``flush()`` always hands a task to its IOPub thread and waits for it. It runs
    four times per cell (twice around the displayed result, twice before the reply), so every
    cell paid four thread wake-ups, and on a busy machine each can wait a whole scheduler
    slice: that was most of a cell's tail latency with several sandboxes at work.

    Skipping is safe. ``flush()`` promises that what was written before it is sent before
    what the kernel sends after it. If nothing is buffered and no send is under way, the
    IOPub thread has already queued every earlier message, ahead of anything queued next.
    """

    _sending = False  # set by the IOPub thread while it turns buffers into messages

    def _flush(self) -> None:
        self._sending = True
        try:
            super()._flush()
        finally:
            self._sending = False

    def flush(self) -> None:
        """Send what is buffered, waiting for it; return at once if nothing is."""
        # Order matters: an empty buffer first, then no send under way. A send that took the
        # buffer's text before the first check is still marked as under way at the second.
        if self._buffered() or self._sending:
            super().flush()
        elif self.echo is not None:
            self.echo.flush()

    def _buffered(self) -> bool:
        with self._buffer_lock:
            return any(buffer.tell() for buffer in self._buffers.values())
