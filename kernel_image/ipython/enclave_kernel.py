"""Kernel-side classes of an enclave-tools sandbox, named in ipython_kernel_config.py.

Installed into the kernel's site-packages, so the kernel can import them by name without
anything added to the user's ``sys.path``.
"""

from __future__ import annotations

from ipykernel.iostream import OutStream
from ipykernel.ipkernel import IPythonKernel
from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.events import EventManager
from traitlets import Type

__all__ = ["EnclaveKernel", "InterruptibleShell", "QuickFlushOutStream"]

BEFORE_CODE_EVENTS = frozenset({"pre_execute", "pre_run_cell"})
"""The IPython events whose callbacks run after the kernel said a cell began (its
``execute_input``) and before the cell's code."""


class InterruptibleEvents(EventManager):
    """IPython's event callbacks, except that an interrupt during those that run before a
    cell's code ends the cell instead of being swallowed.

    IPython catches ``KeyboardInterrupt`` from every callback, prints it and carries on. An
    interrupt that lands while the callbacks before a cell run (the warning registry's reset,
    the display publisher's, matplotlib's) was lost: the code then ran on as if never
    interrupted, and the host, which interrupts as soon as the code has begun, waited out
    the whole time limit. Here it goes on up, and IPython reports it as the cell's
    ``KeyboardInterrupt``; the other events are IPython's own."""

    def trigger(self, event: str, *args: object, **kwargs: object) -> None:
        if event not in BEFORE_CODE_EVENTS:
            super().trigger(event, *args, **kwargs)
            return
        for func in self.callbacks[event][:]:
            try:
                func(*args, **kwargs)
            except Exception:  # as IPython's own: say so and go on; an interrupt goes up
                if self.print_on_error:
                    print(
                        f"Error in callback {func} (for {event}), with arguments args {args},kwargs {kwargs}:"
                    )  # noqa: E501 - IPython's words
                self.shell.showtraceback()


class InterruptibleShell(ZMQInteractiveShell):
    """The kernel's shell, with :class:`InterruptibleEvents`."""

    def init_events(self) -> None:
        super().init_events()
        self.events.__class__ = InterruptibleEvents  # keeps what IPython registered


class EnclaveKernel(IPythonKernel):
    """ipykernel's IPython kernel with :class:`InterruptibleShell`."""

    shell_class = Type(InterruptibleShell)


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
