"""Closing sandboxes: many at once (:func:`close_sandboxes`), and every one still open at
the interpreter's exit (kept-alive ones are detached instead: they outlive this process by
design).

A sandbox is :func:`track`-ed from the moment it starts a container or attaches to one
until it is closed or detached. This module sees sandboxes only through :class:`Closable`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Protocol

from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError
from enclave_tools.turns import WORKERS

__all__ = ["CLOSE_GRACE", "CLOSE_TIMEOUT", "Closable", "close_sandboxes", "track", "untrack"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0
"""Seconds :meth:`Sandbox.close <enclave_tools.sandbox.Sandbox.close>` takes at most (plus
the engine's own time to remove the container), even with a cell running and a gateway
that answers nothing."""
CLOSE_GRACE = 2.0
"""Seconds a running cell gets to stop after close's interrupt, before its connection is cut."""


class Closable(Protocol):
    """What closing needs of a sandbox (a :class:`~enclave_tools.sandbox.Sandbox`)."""

    id: str
    config: SandboxConfig

    def close(self) -> None: ...
    def detach(self, timeout: float | None = None) -> None: ...
    def _refuse_new_work(self) -> None: ...


_live: weakref.WeakSet[Closable] = weakref.WeakSet()


def track(sandbox: Closable) -> None:
    """From now on, the interpreter's exit closes (or detaches) ``sandbox``."""
    _live.add(sandbox)


def untrack(sandbox: Closable) -> None:
    """``sandbox`` was closed or detached: nothing is left to do at exit."""
    _live.discard(sandbox)


def close_sandboxes(sandboxes: Iterable[Closable], timeout: float = CLOSE_TIMEOUT) -> None:
    """Close many sandboxes at once: first refuse new work in every one, then end what
    runs in all of them in parallel. Returns within about ``timeout`` seconds (plus the
    engine's time to remove the containers)."""
    todo = list(sandboxes)
    for sandbox in todo:
        sandbox._refuse_new_work()
    done: list[threading.Event] = []
    for sandbox in todo:
        finished = threading.Event()

        def close(sandbox: Closable = sandbox, finished: threading.Event = finished) -> None:
            try:
                sandbox.close()
            except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
                log.warning("closing sandbox %s failed: %s", sandbox.id, exc)
            finally:
                finished.set()

        WORKERS.submit(close)
        done.append(finished)
    deadline = time.monotonic() + timeout + 5.0  # + the engine's removal
    for finished in done:
        finished.wait(max(deadline - time.monotonic(), 0.0))


@atexit.register
def _close_all() -> None:
    """At interpreter exit, close every sandbox still open, within :data:`CLOSE_TIMEOUT`;
    kept-alive ones are detached instead (they outlive this process by design)."""
    live = list(_live)
    for sandbox in live:
        if sandbox.config.keep_alive is not None:
            try:
                sandbox.detach(timeout=CLOSE_TIMEOUT)
            except EnclaveError as exc:
                log.debug("detaching sandbox %s at exit failed: %s", sandbox.id, exc)
    close_sandboxes([sb for sb in live if sb.config.keep_alive is None])
