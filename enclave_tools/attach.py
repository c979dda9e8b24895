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
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from enclave_tools import registry
from enclave_tools.backends.base import AttachHold, Backend, SandboxHandle
from enclave_tools.backends.docker import SESSION
from enclave_tools.checks import check_wait
from enclave_tools.config import SandboxConfig, seconds_in
from enclave_tools.errors import (
    EnclaveError,
    InvalidInput,
    SandboxClosed,
    SandboxGone,
    SandboxStartFailed,
)
from enclave_tools.kernel import KernelClient, is_kernel_id
from enclave_tools.transport import CONNECT_ERRORS, GatewayHTTP
from enclave_tools.turns import Turn

__all__ = ["Attached", "Kept", "clean_limits", "connect", "detach", "forget", "set_timeout", "started"]

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


class Kept(Protocol):
    """What detach and set_timeout need of a kept-alive sandbox (a
    :class:`~enclave_tools.sandbox.Sandbox`, which owns its own state changes)."""

    id: str
    config: SandboxConfig
    _backend: Backend

    def start(self) -> object: ...
    def _running(self, when: str) -> tuple[SandboxHandle, GatewayHTTP, KernelClient]: ...
    def _died_or(self, exc: BaseException, turn: Turn | None = None) -> EnclaveError: ...
    def _let_go(self, timeout: float | None, why: SandboxClosed) -> None: ...


@dataclass
class Attached:
    """A kept-alive sandbox this process is now attached to: what
    :meth:`Sandbox.connect <enclave_tools.sandbox.Sandbox.connect>` makes a sandbox from."""

    id: str
    config: SandboxConfig
    backend: Backend
    handle: SandboxHandle
    http: GatewayHTTP
    kernel: KernelClient
    hold: AttachHold
    lost: str | None = None
    """Why the kernel's state is gone, if it is (its kernel was replaced)."""

    def let_go(self) -> None:
        """Disconnect and let go of the hold (no sandbox was made from it)."""
        self.kernel.disconnect()
        self.http.close()
        self.hold.release()


def connect(sandbox_id: str, wait: float, backend: Backend) -> Attached:
    """Attach to the kept-alive sandbox ``sandbox_id`` (see :meth:`Sandbox.connect
    <enclave_tools.sandbox.Sandbox.connect>`)."""
    if not backend.can_attach:
        raise SandboxStartFailed(
            f"Sandbox.connect is not available for the {backend.name} backend; "
            "create a new Sandbox there instead"
        )
    wait = check_wait(wait, "wait") or 0.0
    registry.check_id(sandbox_id)
    backend.load_record(sandbox_id)  # SandboxGone at once, before waiting for a holder
    hold = backend.take_attach(sandbox_id, wait)
    try:
        # Read again now that no one else holds it: the last holder may have changed it.
        return _attach_to(backend.load_record(sandbox_id), backend, hold)
    except BaseException:
        hold.release()
        raise


def _attach_to(record: registry.Record, backend: Backend, hold: AttachHold) -> Attached:
    config = _checked(record)
    try:
        handle = backend.attach(record)
    except SandboxGone:
        backend.remove_expired(record)  # only what provably ended; see each backend
        raise
    http = GatewayHTTP(handle.endpoint)
    kernel = KernelClient(http)
    kernel.kernel_id = record.kernel_id or None
    timeout = config.startup_timeout
    lost = None
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
                lost = "The sandbox's kernel had ended while no process was attached"
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
    return Attached(record.id, config, backend, handle, http, kernel, hold, lost)


def _checked(record: registry.Record) -> SandboxConfig:
    """The config of ``record``, once its kernel id and config are well-formed (a pod's
    annotations may have been written by anyone who may patch it); SandboxGone otherwise."""
    damaged = f"the record of sandbox {record.id} is damaged"
    if record.kernel_id and not is_kernel_id(record.kernel_id):
        raise SandboxGone(f"{damaged} (its kernel id is not one); the sandbox cannot be reached")
    try:
        config = SandboxConfig.model_validate(record.config)
    except ValidationError as exc:
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) or "config" for e in exc.errors()}))
        raise SandboxGone(f"{damaged} (its config: {fields[:200]}); the sandbox cannot be reached") from None
    if config.keep_alive is None:  # else this process's exit would end it
        raise SandboxGone(f"{damaged} (its config has no keep_alive); the sandbox cannot be reached")
    return config


def detach(sandbox: Kept, timeout: float | None) -> None:
    """:meth:`Sandbox.detach <enclave_tools.sandbox.Sandbox.detach>`."""
    if sandbox.config.keep_alive is None:
        raise InvalidInput(
            "only a sandbox made with keep_alive can be detached, e.g. Sandbox(keep_alive='30m'); "
            "use close() to end this one"
        )
    timeout = check_wait(timeout, "timeout")
    sandbox._let_go(
        timeout,
        SandboxClosed(
            "this sandbox was detached from this process; "
            f"use Sandbox.connect({sandbox.id!r}) to run code in it"
        ),
    )


def set_timeout(
    sandbox: Kept, keep_alive: str | float | None, lifetime: str | float | None
) -> dict[str, Any]:
    """:meth:`Sandbox.set_timeout <enclave_tools.sandbox.Sandbox.set_timeout>`."""
    if sandbox.config.keep_alive is None:
        raise InvalidInput("only a sandbox made with keep_alive has limits to change")
    try:
        idle = None if keep_alive is None else seconds_in(keep_alive)
        life = None if lifetime is None else seconds_in(lifetime)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    sandbox.start()
    handle, http, kernel = sandbox._running("before its limits were changed")
    backend = sandbox._backend
    try:
        limits = clean_limits(backend.apply_limits(handle, http, kernel, idle, life))
    except CONNECT_ERRORS as exc:
        raise sandbox._died_or(exc) from exc
    update = {k: v for k, v in (("keep_alive", idle), ("lifetime", life)) if v is not None}
    sandbox.config = sandbox.config.model_copy(update=update)
    try:
        record = backend.load_record(sandbox.id)
        record.config = sandbox.config.model_dump(mode="json")
        if life is not None:
            record.expires = time.time() + life
        backend.save_record(record)
    except EnclaveError as exc:
        log.debug("could not update the record of %s: %s", sandbox.id, exc)
    return limits


def started(
    sandbox_id: str,
    config: SandboxConfig,
    backend: Backend,
    handle: SandboxHandle,
    kernel: KernelClient,
    hold: AttachHold | None,
) -> AttachHold | None:
    """A sandbox has started (no user code has run yet); if it is kept alive, attach this
    process to it and record it. Returns the hold the sandbox keeps from now on (``hold``,
    the one it had, if still good; None if not kept alive)."""
    if config.keep_alive is None:
        return hold
    if not backend.can_attach:
        raise SandboxStartFailed(f"keep_alive is not available for the {backend.name} backend")
    backend.kept_alive_started(handle, kernel, config)
    if hold is not None and not hold.held:
        hold.release()  # a hold on the replaced container, lost with it
        hold = None
    taken = hold is None
    if hold is None:
        hold = backend.take_attach(sandbox_id, 0.0)
    try:
        _record_started(sandbox_id, config, backend, handle, kernel)
    except BaseException:
        if taken:
            hold.release()  # the sandbox never learns of it
        raise
    return hold


def _record_started(
    sandbox_id: str, config: SandboxConfig, backend: Backend, handle: SandboxHandle, kernel: KernelClient
) -> None:
    now = time.time()
    backend.save_record(
        registry.Record(
            id=sandbox_id,
            backend=backend.name,
            container_id=handle.container_id,
            name=handle.name,
            token=handle.endpoint.token,
            kernel_id=kernel.kernel_id or "",
            run_dir=handle.run_dir,
            unix_path=handle.endpoint.unix_path,
            port=handle.host_port,
            session=config.labels.get(SESSION),
            created=now,
            config=config.model_dump(mode="json"),
            expires=now + (config.lifetime_limit or 0.0),
        )
    )


def forget(sandbox_id: str, config: SandboxConfig, backend: Backend) -> None:
    """A sandbox's container was removed: if it was kept alive, forget its record."""
    if config.keep_alive is None:
        return
    try:
        backend.forget_record(sandbox_id)
    except EnclaveError as exc:
        log.debug("could not remove the record of %s: %s", sandbox_id, exc)
