"""The in-kernel watchdog of a kept-alive sandbox on a remote gateway.

A remote gateway is not ours: nothing but the kernel itself can end it when no client is
left. So a kept-alive sandbox's kernel gets, before any user code runs, a daemon thread
that makes the kernel exit once it has not run a cell for the idle limit (a running cell
is use) or once its lifetime is up. It works on any IPython kernel (no gateway endpoint
needed). The gateway then restarts the kernel fresh under the same id (its restarter
does that for any kernel that exits), with no state and no watchdog: a connect finds no
watchdog, says the sandbox has ended and deletes the kernel; ``gc`` deletes it too.

What hostile code in that kernel can do: stop its own watchdog (it runs in the same
process) and so keep its own kernel alive, until the host's deadline (``gc`` deletes
kernels past their record's lifetime, or idle longer than their limit as the gateway
reports it) or the gateway's own culling. Nothing in one kernel reaches another's.
"""

from __future__ import annotations

from typing import Any

from enclave_tools.errors import GatewayError
from enclave_tools.kernel import KernelClient

__all__ = ["ALIVE", "alive", "describe", "install", "run_quietly", "set_limits"]

ALIVE = "enclave-watchdog-alive"
_TIMEOUT = 30.0

_INSTALL = """
def _enclave_watchdog_install(idle, lifetime):
    import json, os, sys, threading, time

    class Watchdog:
        def __init__(self):
            self.idle, self.lifetime = idle, lifetime
            self.started = self.last = self.life_from = time.monotonic()
            self.busy = 0
            self.thread = threading.Thread(target=self.watch, name="enclave-watchdog", daemon=True)

        def pre(self, *_):
            self.busy += 1
            self.last = time.monotonic()

        def post(self, *_):
            self.busy = max(self.busy - 1, 0)
            self.last = time.monotonic()

        def set(self, idle=None, lifetime=None):
            if idle is not None:
                self.idle = idle
            if lifetime is not None:
                self.lifetime, self.life_from = lifetime, time.monotonic()
            return self.describe()

        def describe(self):
            now = time.monotonic()
            ends = [self.last + self.idle - now] if self.idle is not None else []
            if self.lifetime is not None:
                ends.append(self.life_from + self.lifetime - now)
            return json.dumps({
                "idle_limit": self.idle, "lifetime": self.lifetime, "age": now - self.started,
                "idle": 0.0 if self.busy else now - self.last,
                "expires_in": min(ends) if ends else None,
            })

        def watch(self):
            while True:
                time.sleep(1)
                now = time.monotonic()
                if self.lifetime is not None and now - self.life_from >= self.lifetime:
                    os._exit(81)
                if self.idle is not None and not self.busy and now - self.last >= self.idle:
                    os._exit(80)

    dog = Watchdog()
    shell = get_ipython()
    shell.events.register("pre_run_cell", dog.pre)
    shell.events.register("post_run_cell", dog.post)
    dog.thread.start()
    sys.__enclave_watchdog__ = dog

_enclave_watchdog_install(__IDLE__, __LIFETIME__)
del _enclave_watchdog_install
print("__ALIVE__")
"""

_CHECK = (
    "print(getattr(__import__('sys'), '__enclave_watchdog__', None) is not None "
    "and __import__('sys').__enclave_watchdog__.thread.is_alive() and '__ALIVE__')"
)
_SET = "print(__import__('sys').__enclave_watchdog__.set(__IDLE__, __LIFETIME__))"
_DESCRIBE = "print(__import__('sys').__enclave_watchdog__.describe())"


def _fill(code: str, idle: float | None = None, lifetime: float | None = None) -> str:
    """``code`` with its placeholders filled (numbers or None only: nothing else is spliced in)."""
    for value in (idle, lifetime):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError("a limit is a number of seconds")
    return (
        code.replace("__IDLE__", repr(None if idle is None else float(idle)))
        .replace("__LIFETIME__", repr(None if lifetime is None else float(lifetime)))
        .replace("__ALIVE__", ALIVE)
    )


def run_quietly(kernel: KernelClient, code: str, timeout: float = _TIMEOUT) -> str:
    """Run enclave-tools' own ``code`` in the kernel (not in its history) and return its
    stdout; GatewayError if it fails or does not answer within ``timeout`` seconds."""
    call = kernel.execute_quietly(code)
    try:
        if not kernel.wait(call, timeout):
            raise GatewayError(f"the kernel did not answer enclave-tools' own cell within {timeout:g} s")
    finally:
        kernel.forget(call)
    execution = call.execution()
    if execution.status != "ok":
        raise GatewayError(f"enclave-tools' own cell failed in the kernel ({execution.status})")
    return execution.stdout.strip()


def install(kernel: KernelClient, idle: float | None, lifetime: float | None) -> None:
    """Start the watchdog in the kernel (before any user code runs)."""
    if run_quietly(kernel, _fill(_INSTALL, idle, lifetime)) != ALIVE:
        raise GatewayError("the kernel did not start enclave-tools' watchdog")


def alive(kernel: KernelClient) -> bool:
    """Whether the kernel still runs its watchdog (False: it was restarted, fresh)."""
    return run_quietly(kernel, _fill(_CHECK)) == ALIVE


def set_limits(kernel: KernelClient, idle: float | None, lifetime: float | None) -> Any:
    """Change the watchdog's limits; its report (untrusted JSON)."""
    from enclave_tools.protocol import loads_bounded

    return loads_bounded(run_quietly(kernel, _fill(_SET, idle, lifetime)) or "null")


def describe(kernel: KernelClient) -> Any:
    """The watchdog's report (untrusted JSON), without changing anything."""
    from enclave_tools.protocol import loads_bounded

    return loads_bounded(run_quietly(kernel, _DESCRIBE) or "null")
