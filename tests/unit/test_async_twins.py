"""Every blocking public method of Sandbox and SandboxSessions has an async twin, made by
one mechanism (turns.async_twin / off_loop), which never blocks the event loop."""

from __future__ import annotations

import asyncio
import inspect
import threading

from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions
from enclave_tools.turns import Turn, async_twin

SANDBOX_BLOCKING = [
    "start",
    "close",
    "run",
    "interrupt",
    "restart",
    "read_file",
    "write_file",
    "upload",
    "download",
    "detach",
    "set_timeout",
    "connect",
]
SESSIONS_BLOCKING = ["get", "close", "release", "detach"]


def test_every_blocking_method_has_an_async_twin():
    for cls, names in ((Sandbox, SANDBOX_BLOCKING), (SandboxSessions, SESSIONS_BLOCKING)):
        for name in names:
            twin = getattr(cls, f"a{name}", None)
            assert twin is not None and inspect.iscoroutinefunction(twin), f"{cls.__name__}.a{name}"
            assert twin.__doc__, f"{cls.__name__}.a{name} has no docstring"


async def test_a_twin_runs_the_subclass_method_off_the_event_loop():
    class Counter:
        def work(self, n: int) -> tuple[int, str]:
            return n, threading.current_thread().name

        awork = async_twin(work)

    class Doubled(Counter):
        def work(self, n: int) -> tuple[int, str]:
            return 2 * n, threading.current_thread().name

    value, thread = await Doubled().awork(21)
    assert value == 42 and thread != threading.current_thread().name


async def test_arestart_waits_for_the_running_call_without_blocking_the_loop():
    restarted = threading.Event()

    class Kernel:
        connected = True

        def restart(self, timeout: float) -> None:
            restarted.set()

    sandbox = Sandbox()
    sandbox._handle = object()  # type: ignore[assignment]  # "started"; never reached
    sandbox._kernel = Kernel()  # type: ignore[assignment]
    running = Turn()
    sandbox._turns.enter(running)
    restart = asyncio.ensure_future(sandbox.arestart())
    await asyncio.sleep(0)  # the loop runs on while arestart waits for its turn
    assert not restart.done() and not restarted.is_set()
    sandbox._turns.leave(running)
    await asyncio.wait_for(restart, 10)
    assert restarted.is_set()
    sandbox._handle = sandbox._kernel = None  # nothing to remove
