"""Kept-alive sandboxes: detach, connect, lifetimes (what the Sandbox façade's keep-alive
methods do).

A sandbox made with ``keep_alive`` has no owner process: it ends itself when it has not been
used for ``keep_alive`` seconds or its ``lifetime`` is up, and its backend ends it too (a
deadline of its own, and ``gc``). Its record says how to reach it again; one process at a
time is attached to it. Where the record lives and what "attached" means is the backend's
business (:class:`~enclave_tools.backends.base.Backend`: ``load_record``, ``save_record``,
``take_attach``): this host user's private registry by default, the pod itself on
Kubernetes. This module only drives them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from enclave_tools import registry
from enclave_tools.backends.base import AttachHold, Backend, SandboxHandle
from enclave_tools.checks import check_wait
from enclave_tools.config import SandboxConfig, seconds_in
from enclave_tools.errors import (
    EnclaveError,
    InvalidInput,
    SandboxClosed,
    SandboxDied,
    SandboxGone,
    SandboxStartFailed,
)
from enclave_tools.kernel import KernelClient
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP

if TYPE_CHECKING:
    from enclave_tools.sandbox import Sandbox

__all__ = ["clean_limits", "connect", "detach", "forget", "set_timeout", "started"]

log = logging.getLogger(__name__)

LIMIT_KEYS = ("idle_limit", "lifetime", "age", "idle", "expires_in")
MAX_REPORTED_S = 10 * 365 * 86400.0
"""The largest number of seconds a sandbox's reported limits are taken to hold."""


def clean_limits(raw: Any) -> dict[str, float | None]:
    """A sandbox's reported limits (untrusted: the gateway runs next to the code) as finite
    seconds in [0, ten years], or None where a value is missing or not a number."""
    source = raw if isinstance(raw, dict) else {}
    cleaned: dict[str, float | None] = {}
    for key in LIMIT_KEYS:
        value = source.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            cleaned[key] = None
        else:
            cleaned[key] = min(max(float(value), 0.0), MAX_REPORTED_S)
    return cleaned


def connect(
    cls: type[Sandbox],
    sandbox_id: str,
    wait: float,
    backend: Backend | None,
    progress: Callable[[str], None] | None,
) -> Sandbox:
    """:meth:`Sandbox.connect`."""
    from enclave_tools.backends.docker import DockerBackend

    backend = backend or DockerBackend()
    if not backend.can_attach:
        raise SandboxStartFailed(
            f"Sandbox.connect is not available for the {backend.name} backend; "
            "create a new Sandbox there instead"
        )
    wait = check_wait(wait, "wait") or 0.0
    registry.check_id(sandbox_id)
    backend.load_record(sandbox_id)  # SandboxGone at once, before waiting for a holder
    attached = backend.take_attach(sandbox_id, wait)
    try:
        # Read again now that no one else holds it: the last holder may have changed it.
        return _attach_to(cls, backend.load_record(sandbox_id), backend, attached, progress)
    except BaseException:
        attached.release()
        raise


def _attach_to(
    cls: type[Sandbox],
    record: registry.Record,
    backend: Backend,
    attached: AttachHold,
    progress: Callable[[str], None] | None,
) -> Sandbox:
    from enclave_tools import sandbox as sandbox_module

    try:
        handle = backend.attach(record)
    except SandboxGone:
        backend.remove_expired(record)  # only what provably ended; see each backend
        raise
    sandbox = cls(SandboxConfig.model_validate(record.config), backend=backend, progress=progress)
    sandbox.id = record.id
    http = GatewayHTTP(handle.endpoint)
    kernel = KernelClient(http)
    kernel.kernel_id = record.kernel_id or None
    timeout = sandbox.config.startup_timeout
    try:
        if record.kernel_id and kernel.model() is not None:
            kernel.connect(timeout=timeout)
            try:
                backend.check_attached(record, kernel)
            except SandboxGone:
                backend.remove_expired(record)
                raise
        elif backend.owns_gateway:  # the kernel was replaced (or never recorded): a new one
            kernel.start(timeout=timeout)
            if record.kernel_id:
                sandbox.mark_state_lost("The sandbox's kernel had ended while no process was attached")
            record.kernel_id = kernel.kernel_id or ""
            backend.save_record(record)
        else:  # the kernel is the sandbox
            backend.remove_expired(record)
            raise SandboxGone(f"sandbox {record.id} is gone: its kernel no longer exists on the gateway")
    except CONNECT_ERRORS as exc:
        kernel.disconnect()
        http.close()
        raise SandboxGone(f"sandbox {record.id} cannot be reached: {exc}") from None
    except BaseException:
        kernel.disconnect()
        http.close()
        raise
    sandbox._handle, sandbox._http, sandbox._kernel = handle, http, kernel
    sandbox._attached = attached
    sandbox_module._live.add(sandbox)  # at this process's exit it is detached again
    return sandbox


def detach(sandbox: Sandbox, timeout: float | None) -> None:
    """:meth:`Sandbox.detach`."""
    from enclave_tools import sandbox as sandbox_module

    if sandbox.config.keep_alive is None:
        raise InvalidInput(
            "only a sandbox made with keep_alive can be detached, e.g. Sandbox(keep_alive='30m'); "
            "use close() to end this one"
        )
    timeout = check_wait(timeout, "timeout")
    if sandbox._handle is None and not sandbox._closed:
        sandbox.start()
    turn = sandbox._enter()
    try:
        if not sandbox._turns.wait(turn, timeout):
            sandbox._turns.abandon(turn)
            raise SandboxClosed(f"a call was still running after {timeout:g} s; the sandbox was not detached")
        with sandbox._lock:
            kernel, http = sandbox._kernel, sandbox._http
            sandbox._handle = sandbox._kernel = sandbox._http = None
            sandbox._closed = sandbox._detached = True
    finally:
        sandbox._turns.leave(turn)
    sandbox._turns.close(
        SandboxClosed(
            "this sandbox was detached from this process; "
            f"use Sandbox.connect({sandbox.id!r}) to run code in it"
        )
    )
    if kernel is not None:
        kernel.disconnect()
    if http is not None:
        http.close()
    attached, sandbox._attached = sandbox._attached, None
    if attached is not None:
        attached.release()
    sandbox_module._live.discard(sandbox)


def set_timeout(
    sandbox: Sandbox, keep_alive: str | float | None, lifetime: str | float | None
) -> dict[str, Any]:
    """:meth:`Sandbox.set_timeout`."""
    if sandbox.config.keep_alive is None:
        raise InvalidInput("only a sandbox made with keep_alive has limits to change")
    try:
        idle = None if keep_alive is None else seconds_in(keep_alive)
        life = None if lifetime is None else seconds_in(lifetime)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    sandbox.start()
    handle, http, kernel = sandbox._handle, sandbox._http, sandbox._kernel
    if handle is None or http is None or kernel is None:
        raise (
            sandbox._closed_error("before its limits were changed")
            if sandbox._closed
            else SandboxDied("the sandbox stopped; the next run starts a new one")
        )
    try:
        limits = clean_limits(sandbox._backend.apply_limits(handle, http, kernel, idle, life))
    except CONNECT_ERRORS as exc:
        raise sandbox._died_or(exc) from exc
    update = {k: v for k, v in (("keep_alive", idle), ("lifetime", life)) if v is not None}
    sandbox.config = sandbox.config.model_copy(update=update)
    try:
        record = sandbox._backend.load_record(sandbox.id)
        record.config = sandbox.config.model_dump(mode="json")
        if life is not None:
            record.expires = time.time() + life
        sandbox._backend.save_record(record)
    except EnclaveError as exc:
        log.debug("could not update the record of %s: %s", sandbox.id, exc)
    return limits


def started(sandbox: Sandbox, handle: SandboxHandle, kernel: KernelClient) -> None:
    """A kept-alive sandbox has started (no user code has run yet): attach this process to
    it and record it."""
    from enclave_tools.backends.docker import SESSION

    if sandbox.config.keep_alive is None:
        return
    backend = sandbox._backend
    if not backend.can_attach:
        raise SandboxStartFailed(f"keep_alive is not available for the {backend.name} backend")
    backend.kept_alive_started(handle, kernel, sandbox.config)
    if sandbox._attached is not None and not sandbox._attached.held:
        sandbox._attached.release()  # a hold on the replaced container, lost with it
        sandbox._attached = None
    if sandbox._attached is None:
        sandbox._attached = backend.take_attach(sandbox.id, 0.0)
    now = time.time()
    backend.save_record(
        registry.Record(
            id=sandbox.id,
            backend=backend.name,
            container_id=handle.container_id,
            name=handle.name,
            token=handle.endpoint.token,
            kernel_id=kernel.kernel_id or "",
            run_dir=handle.run_dir,
            unix_path=handle.endpoint.unix_path,
            port=handle.host_port,
            session=sandbox.config.labels.get(SESSION),
            created=now,
            config=sandbox.config.model_dump(mode="json"),
            expires=now + (sandbox.config.lifetime_limit or 0.0),
        )
    )


def forget(sandbox: Sandbox) -> None:
    """A kept-alive sandbox's container was removed: forget its record and, once the
    sandbox is closed, let go of it."""
    if sandbox.config.keep_alive is None:
        return
    try:
        sandbox._backend.forget_record(sandbox.id)
    except EnclaveError as exc:
        log.debug("could not remove the record of %s: %s", sandbox.id, exc)
    if sandbox._closed:
        attached, sandbox._attached = sandbox._attached, None
        if attached is not None:
            attached.release()
