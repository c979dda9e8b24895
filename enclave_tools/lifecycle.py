"""A sandbox's container, up and down: start it, wait until its gateway answers, start a
kernel, make it ready (:func:`launch`); disconnect and remove it (:func:`take_down`).

Backend-neutral: what a start or a removal means is the backend's
(:class:`~enclave_tools.backends.base.Backend`); the :class:`~enclave_tools.sandbox.Sandbox`
decides when, and keeps what :func:`launch` brings up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from enclave_tools.backends.base import Backend, SandboxHandle
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import GatewayUnreachable, SandboxStartFailed
from enclave_tools.execution import for_model
from enclave_tools.kernel import KernelClient
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP

__all__ = ["START_CHECKS_S", "last_output", "launch", "take_down", "wait_ready"]

START_CHECKS_S = (1.0, 2.0, 4.0)
"""While the gateway starts, the pauses between asking the backend whether its container
still runs (the last one repeats): an API call each, whose answer only matters for a start
that fails."""

Keep = Callable[[SandboxHandle, GatewayHTTP, KernelClient], None]


def launch(
    backend: Backend,
    config: SandboxConfig,
    sandbox_id: str,
    progress: Callable[[str], None] | None,
    check_open: Callable[[], None],
    keep: Keep,
) -> None:
    """Start a container for ``sandbox_id``, wait for its gateway, start a kernel and make
    the container ready (no user code has run yet), then hand all three to ``keep``. If any
    step fails (``check_open`` raises when the sandbox was closed meanwhile, ``keep`` may
    refuse), the container is removed."""
    handle = backend.start(config, sandbox_id, progress=progress)
    try:
        check_open()
        http = GatewayHTTP(handle.endpoint)
        wait_ready(backend, handle, http, config, check_open)
        kernel = KernelClient(http)
        kernel.start(timeout=config.startup_timeout)
        backend.ready(handle, config)
        keep(handle, http, kernel)
    except BaseException:
        backend.remove(handle)
        raise


def wait_ready(
    backend: Backend,
    handle: SandboxHandle,
    http: GatewayHTTP,
    config: SandboxConfig,
    check_open: Callable[[], None],
) -> None:
    """Wait until the gateway answers ``GET /api``; SandboxStartFailed if its container
    stops or ``config.startup_timeout`` passes first."""
    deadline = time.monotonic() + config.startup_timeout
    checks = 0
    next_check = time.monotonic() + START_CHECKS_S[0]
    pause = 0.005
    while True:
        check_open()
        try:
            status, _ = http.request("GET", "/api", timeout=5)
            if status == 200:
                return
            raise SandboxStartFailed(f"the gateway answered {status} to the readiness check")
        except (GatewayUnreachable, *CONNECT_ERRORS):
            pass
        now = time.monotonic()
        if now >= next_check:
            state = backend.state(handle)
            if not state.running:
                raise SandboxStartFailed(
                    f"the sandbox's gateway did not start: {state.describe()}.\n"
                    f"Its last output:\n{last_output(backend, handle, config)}"
                )
            checks += 1
            next_check = now + START_CHECKS_S[min(checks, len(START_CHECKS_S) - 1)]
        if now >= deadline:
            raise SandboxStartFailed(
                f"the gateway did not answer within {config.startup_timeout:.0f} s.\n"
                f"Its last output:\n{last_output(backend, handle, config)}"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 0.05)


def last_output(backend: Backend, handle: SandboxHandle, config: SandboxConfig, lines: int = 30) -> str:
    """The container's last ``lines`` of output, cleaned and cut for a model."""
    return for_model(backend.logs(handle, lines), config.output_limit)


def take_down(
    backend: Backend, handle: SandboxHandle | None, http: GatewayHTTP | None, kernel: KernelClient | None
) -> None:
    """Let go of the kernel and the connection, and remove the container (each if given)."""
    if kernel is not None:
        if backend.owns_gateway:
            kernel.disconnect()  # the gateway goes with its container
        else:
            kernel.shutdown(timeout=5)  # the gateway outlives us: delete our kernel
    if http is not None:
        http.close()
    if handle is not None:
        backend.remove(handle)
