"""SandboxSessions: one sandbox per session id (a conversation, a thread), with an
optional warm pool of started sandboxes and retirement of idle ones.

    sessions = SandboxSessions(warm=2, idle_ttl=1800)
    sb = sessions.get("thread-42")      # the same Sandbox for every call of thread-42
    sb.run("x = 1")
    sessions.close()                    # removes every sandbox, warm ones included

With ``keep_alive`` the sessions outlive the process, and serve a conversation from any
number of worker processes of this user: a session's sandbox id (and container name) is
derived from its key, so every worker finds the same kernel, and two racing to create it
end with one. One worker at a time is attached to a session: a worker lets go when its turn
ends (``with sessions.use(key) as sb:``, or ``sessions.detach(key)``), and another worker's
``get`` waits up to ``attach_wait`` seconds for it.

    sessions = SandboxSessions(keep_alive="30m")
    with sessions.use("thread-42") as sb:   # in whichever worker serves this turn
        sb.run("x = 1")
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from enclave_tools.backends.base import Backend, SandboxExists
from enclave_tools.backends.docker import SESSION
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError, SandboxClosed, SandboxGone
from enclave_tools.sandbox import CLOSE_TIMEOUT, Sandbox, close_sandboxes
from enclave_tools.turns import async_twin, off_loop

__all__ = ["SandboxSessions"]

log = logging.getLogger(__name__)


class SandboxSessions:
    """Hands out one :class:`Sandbox` per session id, creating it on first use.

    ``warm`` sandboxes are kept started in the background, so a new session gets a ready
    kernel at once; each one handed out is replaced. Sessions idle for longer than
    ``idle_ttl`` seconds are closed; if such a session comes back, its new sandbox's first
    result says that its state was lost. ``factory`` makes the sandboxes (default:
    ``Sandbox(config, backend=backend, **overrides)``); with a factory, pass the ``config``
    it uses too, as tools describe the sandboxes from :attr:`config`.

    With ``keep_alive``, ``backend`` (default Docker) also says where the sessions'
    sandboxes are found from another worker: this host's registry (Docker, a remote
    gateway), or the pods' labels (Kubernetes: workers on any host).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        warm: int = 0,
        idle_ttl: float | None = None,
        factory: Callable[[], Sandbox] | None = None,
        attach_wait: float = 60.0,
        backend: Backend | None = None,
        **overrides: Any,
    ) -> None:
        if warm < 0:
            raise ValueError("warm must be 0 or more")
        if idle_ttl is not None and idle_ttl <= 0:
            raise ValueError("idle_ttl must be positive, or None for no limit")
        self.warm = warm
        self.idle_ttl = idle_ttl
        self._backend = backend
        self._factory = factory or (lambda: Sandbox(config, backend=backend, **overrides))
        self._config = SandboxConfig.model_validate({**(config or SandboxConfig()).model_dump(), **overrides})
        self.attach_wait = attach_wait
        """Seconds a kept-alive session's ``get`` waits for another worker to let go."""
        if self._config.keep_alive is not None and (warm or idle_ttl):
            raise ValueError("keep_alive sessions end by their own limits: warm and idle_ttl do not apply")
        self._sessions: dict[str, Sandbox] = {}
        self._last_used: dict[str, float] = {}
        self._retired: dict[str, Sandbox] = {}  # retired for idleness: no container
        self._warming: list[Sandbox] = []  # being started by the worker
        self._ready: deque[Sandbox] = deque()
        self._starting = 0
        self._closed = False
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self.last_error: EnclaveError | None = None
        """The last error the background worker met while warming a sandbox."""
        if warm:
            self.start()  # a warm pool warms from the moment it exists

    def start(self) -> SandboxSessions:
        """Start the background worker (warming and retiring); ``get`` also starts it."""
        with self._wake:
            self._check_open()
            if self._worker is None and (self.warm or self.idle_ttl):
                self._worker = threading.Thread(target=self._work, name="enclave-sessions", daemon=True)
                self._worker.start()
        return self

    @property
    def config(self) -> SandboxConfig:
        """The settings every session's sandbox is made with (with a ``factory``: the
        settings given here, the defaults if none)."""
        return self._config

    def get(self, key: str) -> Sandbox:
        """The sandbox of session ``key``: its own if it has one, else a warm one, else new.
        A session retired for idleness gets its own sandbox back: its next result says
        that its state was lost."""
        key = str(key)
        if self._config.keep_alive is not None:
            return self._kept_alive(key)
        self.start()
        with self._wake:
            self._check_open()
            self._last_used[key] = time.monotonic()
            sandbox = self._sessions.get(key)
            if sandbox is None:
                sandbox = self._retired.pop(key, None)
                if sandbox is None:
                    sandbox = self._ready.popleft() if self._ready else self._factory()
                self._sessions[key] = sandbox
                self._wake.notify_all()
            return sandbox

    async def aget(self, key: str) -> Sandbox:
        """Async :meth:`get`. Creating a sandbox starts nothing, so this returns at once;
        with ``keep_alive`` attaching may wait, so it runs on a worker thread then."""
        if self._config.keep_alive is None:
            return self.get(key)
        return await off_loop(self.get, key)

    def release(self, key: str) -> None:
        """Close session ``key``'s sandbox; the next ``get(key)`` makes a fresh one."""
        with self._wake:
            sandbox = self._sessions.pop(str(key), None) or self._retired.pop(str(key), None)
            self._last_used.pop(str(key), None)
        if sandbox is not None:
            sandbox.close()

    arelease = async_twin(release)

    def keys(self) -> list[str]:
        """The ids of the open sessions."""
        with self._wake:
            return list(self._sessions)

    @property
    def ready(self) -> int:
        """How many warm sandboxes are waiting to be handed out."""
        return len(self._ready)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the warm pool is full (or ``timeout`` passes); return whether it is."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while len(self._ready) < self.warm and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.wait(remaining)
            return len(self._ready) >= self.warm

    def close(self) -> None:
        """Close every sandbox, warm ones included, and stop the worker. New work is
        refused in every sandbox first; then what runs is ended in all of them at once
        (within :data:`~enclave_tools.sandbox.CLOSE_TIMEOUT` seconds)."""
        with self._wake:
            self._closed = True
            sandboxes = [*self._sessions.values(), *self._ready, *self._retired.values(), *self._warming]
            if self._config.keep_alive is not None:  # they outlive these sessions: let go
                self._sessions.clear()
                for sandbox in sandboxes:
                    with contextlib.suppress(EnclaveError):
                        sandbox.detach(timeout=CLOSE_TIMEOUT)
                return
            self._sessions.clear()
            self._ready.clear()
            self._retired.clear()
            self._wake.notify_all()
            worker = self._worker
        close_sandboxes(sandboxes)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=CLOSE_TIMEOUT)

    aclose = async_twin(close)

    def __enter__(self) -> SandboxSessions:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxSessions:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __len__(self) -> int:
        return len(self._sessions)

    # -- kept-alive sessions, across processes ---------------------------------------------

    def _kept_alive(self, key: str) -> Sandbox:
        """Session ``key``'s sandbox: this process's if attached, else the one any process
        made (waiting up to ``attach_wait`` s for its worker to let go), else a new one."""
        with self._wake:
            self._check_open()
            sandbox = self._sessions.get(key)
            if sandbox is not None:
                return sandbox
        backend = self._kept_alive_backend()
        sandbox_id = backend.session_sandbox_id(key)
        with backend.creation_lock(sandbox_id, wait=self.attach_wait + self._config.startup_timeout):
            try:
                sandbox = Sandbox.connect(sandbox_id, wait=self.attach_wait, backend=backend)
            except SandboxGone:
                sandbox = self._create(key, sandbox_id)
        with self._wake:
            if self._closed:
                sandbox.detach()
                self._check_open()
            self._sessions[key] = sandbox
        return sandbox

    def _kept_alive_backend(self) -> Backend:
        if self._backend is None:
            from enclave_tools.backends.docker import DockerBackend

            self._backend = DockerBackend()
        return self._backend

    def _create(self, key: str, sandbox_id: str) -> Sandbox:
        labels = {**self._config.labels, SESSION: key[:256]}
        backend = self._kept_alive_backend()
        sandbox = Sandbox(self._config.model_copy(update={"labels": labels}), backend=backend)
        sandbox.id = sandbox_id
        try:
            return sandbox.start()
        except SandboxExists:  # made meanwhile by another process (another host, on Kubernetes)
            return Sandbox.connect(sandbox_id, wait=self.attach_wait, backend=backend)

    def detach(self, key: str) -> None:
        """Let go of kept-alive session ``key`` in this process (it keeps running; any
        worker's next ``get(key)`` attaches to it)."""
        with self._wake:
            sandbox = self._sessions.pop(str(key), None)
        if sandbox is not None:
            sandbox.detach()

    adetach = async_twin(detach)

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Sandbox]:
        """Session ``key``'s sandbox for one turn: attached on entry; on exit detached
        (kept-alive sessions) so that another worker can serve the next turn."""
        sandbox = self.get(key)
        try:
            yield sandbox
        finally:
            if self._config.keep_alive is not None:
                self.detach(key)

    # -- the background worker ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("these sessions were closed; create new SandboxSessions")

    def _work(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                need = self.warm - len(self._ready) - self._starting
                if need > 0:
                    self._starting += 1
            if need > 0:
                self._warm_one()
                continue
            self._retire_idle()
            with self._wake:
                if self._closed:
                    return
                if self.warm - len(self._ready) - self._starting <= 0:
                    self._wake.wait(self._check_every())

    def _warm_one(self) -> None:
        sandbox: Sandbox | None = None
        started = False
        try:
            with self._wake:
                if not self._closed:
                    sandbox = self._factory()
                    self._warming.append(sandbox)  # close() closes it too, even mid-start
            if sandbox is not None:
                sandbox.start()
                started = True
        except Exception as exc:  # noqa: BLE001 - the worker must live on
            if not self._closed:
                log.warning("could not warm a sandbox: %s", exc)
                self.last_error = exc if isinstance(exc, EnclaveError) else None
        with self._wake:
            self._starting -= 1
            if sandbox is not None:
                self._warming.remove(sandbox)
            keep = started and not self._closed
            if keep and sandbox is not None:
                self._ready.append(sandbox)
            self._wake.notify_all()
            if not started and not self._closed:
                self._wake.wait(5.0)  # a broken engine: back off instead of spinning
        if sandbox is not None and not keep:
            sandbox.close()  # it failed, or the sessions were closed while it started

    def _retire_idle(self) -> None:
        """Remove the containers of sessions idle past ``idle_ttl``. A session with a call
        running or waiting is never retired; nor one handed out by ``get`` since."""
        if not self.idle_ttl:
            return
        now = time.monotonic()
        with self._wake:
            idle = [
                (key, sandbox)
                for key, sandbox in self._sessions.items()
                if now - max(self._last_used.get(key, 0.0), sandbox.last_active) > self.idle_ttl
                and not sandbox.busy
            ]
        reason = (
            f"This conversation's sandbox was closed after more than {self.idle_ttl:g} s without use, "
            "and this is a new one"
        )
        for key, sandbox in idle:
            with self._wake:
                used = self._last_used.get(key, 0.0)
                if self._closed or self._sessions.get(key) is not sandbox or now - used <= self.idle_ttl:
                    continue  # handed out again meanwhile
                self._sessions.pop(key)
                self._last_used.pop(key, None)
                self._retired[key] = sandbox
            if not sandbox.retire(reason):  # a call came for it meanwhile: keep it
                with self._wake:
                    if self._retired.get(key) is sandbox and key not in self._sessions:
                        del self._retired[key]
                        self._sessions[key] = sandbox
                        self._last_used[key] = time.monotonic()

    def _check_every(self) -> float | None:
        return None if not self.idle_ttl else max(min(self.idle_ttl / 4, 30.0), 0.05)
