"""What a backend is: where a sandbox's gateway comes from.

A backend starts a gateway (a container, a pod, or nothing at all for a gateway that
already runs), says how to reach it, reports whether it still runs, and removes it. It
never parses kernel messages; :class:`~enclave_tools.Sandbox` does that, the same way
whatever the backend.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from enclave_tools import registry
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import InvalidInput, SandboxGone, SandboxStartFailed
from enclave_tools.transport import Endpoint, GatewayHTTP

if TYPE_CHECKING:
    from enclave_tools.kernel import KernelClient
    from enclave_tools.registry import Record

__all__ = [
    "GATEWAY_PORT",
    "IDLE_EXIT",
    "LIFETIME_EXIT",
    "SANDBOX_UID",
    "SHARED_DIR",
    "SOCKET_NAME",
    "TOKEN_NAME",
    "AttachHold",
    "Backend",
    "ContainerState",
    "SandboxExists",
    "SandboxHandle",
    "SandboxInfo",
    "ended_because",
    "lifetime_env",
]

GATEWAY_PORT = 8888
"""The port the gateway listens on inside a container or pod (TCP transports)."""
SANDBOX_UID = 10001
"""The uid (and gid) the gateway and the kernel run as (the image's ``sandbox`` user)."""
SHARED_DIR = "/run/enclave"
"""Where the container sees its shared directory: the gateway's unix socket and the token."""
SOCKET_NAME = "gateway.sock"
"""The gateway's unix socket, in SHARED_DIR."""
TOKEN_NAME = "token"
"""The file in SHARED_DIR the gateway reads its token from (then deletes)."""


IDLE_EXIT, LIFETIME_EXIT = 80, 81
"""The gateway's exit codes when a kept-alive sandbox ended for idleness, or its lifetime."""


def ended_because(exit_code: int | None, describe: str) -> str:
    """Why a kept-alive sandbox's container stopped, in words."""
    if exit_code == IDLE_EXIT:
        return "it was not used for longer than its keep_alive limit"
    if exit_code == LIFETIME_EXIT:
        return "its lifetime was up"
    return describe


class SandboxExists(SandboxStartFailed):
    """A kept-alive sandbox of that id already runs (another process created it)."""


class AttachHold(Protocol):
    """One process's hold on a kept-alive sandbox (see :meth:`Backend.take_attach`)."""

    @property
    def held(self) -> bool:
        """Whether this process still holds it."""
        ...

    def release(self) -> None:
        """Let go (safe to call twice)."""
        ...


def lifetime_env(config: SandboxConfig, lifetime: float | None = None) -> dict[str, str]:
    """The gateway's limits for a kept-alive sandbox, as its environment (none otherwise);
    ``lifetime`` overrides the config's (a backend that caps it)."""
    if config.keep_alive is None:
        return {}
    life = config.lifetime_limit if lifetime is None else lifetime
    return {"ENCLAVE_IDLE_LIMIT": f"{config.keep_alive:g}", "ENCLAVE_LIFETIME": f"{life:g}"}


@dataclass
class SandboxHandle:
    """A started gateway: the backend's id for it and how to reach it."""

    container_id: str
    name: str
    endpoint: Endpoint
    run_dir: str | None = None
    host_port: int | None = None


@dataclass
class SandboxInfo:
    """One sandbox as ``enclave-tools ps`` lists it. None where a field does not apply
    (shown '-'); the durations may also be a word ('?': unknown, 'ended'). What a backend
    read from a cluster or a gateway is untrusted: the listing bounds and cleans it."""

    name: str
    sandbox_id: str = ""
    """The sandbox's id (``stop`` takes it), if it has one."""
    container_id: str = ""
    """The backend's id (container id, pod name, kernel id): ``stop`` takes a prefix."""
    session: str | None = None
    owner: str | None = None
    """The owner process, the attached holder, or "detached"."""
    created: float | None = None
    """Epoch seconds; None: unknown."""
    idle: float | str | None = None
    expires_in: float | str | None = None
    where: str | None = None
    """How the gateway is reached."""
    memory: str | None = None
    status: str = "?"

    @classmethod
    def of_record(cls, record: Record, now: float, **fields: Any) -> SandboxInfo:
        """A kept-alive sandbox as this host's record of it says, its state unknown;
        ``fields`` are what the backend knows besides."""
        known: dict[str, Any] = {
            "name": record.id,
            "sandbox_id": record.id,
            "container_id": record.container_id,
            "session": record.session,
            "owner": "detached",
            "created": record.created or None,
            "idle": "?",
            "expires_in": record.expires - now if record.expires else "?",
        }
        return cls(**{**known, **fields})


@dataclass
class ContainerState:
    """Whether the gateway's container (or pod) runs, and why it stopped."""

    running: bool
    exists: bool
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""

    def describe(self) -> str:
        """A sentence on how the container ended."""
        if not self.exists:
            return "the container was removed"
        if self.running:
            return "the container is running"
        why = " (out of memory)" if self.oom_killed else ""
        if self.exit_code == 137 and not self.oom_killed:
            why = " (killed)"
        return f"the container stopped with exit code {self.exit_code}{why}"


class Backend(ABC):
    """Where gateways come from. :class:`~enclave_tools.backends.docker.DockerBackend` is
    the default. A backend subclasses this: the abstract methods are the contract, the
    others have defaults that a backend overrides when it has more to do."""

    name: str = "backend"
    """A short name for messages and the keep-alive registry ("docker", "kubernetes")."""

    owns_gateway: bool = True
    """Whether the gateway goes with its sandbox (a container or pod the backend made).
    False for a gateway that outlives it: then the sandbox deletes its kernel on close."""

    can_attach: bool = False
    """Whether :meth:`attach` works: a kept-alive sandbox can be reached again from
    another process (``keep_alive``, ``Sandbox.connect``)."""

    @abstractmethod
    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Start a gateway for ``config`` (building or fetching what it needs, with
        progress) and return how to reach it; raise an EnclaveError if it cannot."""

    def ready(self, handle: SandboxHandle, config: SandboxConfig) -> None:  # noqa: B027 (optional hook)
        """Called once the kernel answers and before any user code runs: apply what would
        have slowed the start (the Docker backend's CPU quota). Default: nothing."""

    @abstractmethod
    def state(self, handle: SandboxHandle) -> ContainerState:
        """Whether the gateway still runs."""

    @abstractmethod
    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> ContainerState:
        """Wait up to ``timeout`` seconds for the gateway to stop; return its state."""

    @abstractmethod
    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """The last lines the gateway printed (for error messages); may be empty."""

    @abstractmethod
    def remove(self, handle: SandboxHandle) -> None:
        """Remove the gateway and everything the backend made for it."""

    def reap_orphans(self, on_removed: Callable[[str], None] | None = None) -> int:
        """Remove gateways whose owner is gone (and kept-alive sandboxes that expired);
        return how many. ``on_removed`` is told what each removal was, in a few words (a
        name). Default: none to reap."""
        return 0

    # -- enclave-tools ps / stop ---------------------------------------------------------

    def describe_sandboxes(self) -> list[SandboxInfo]:
        """The sandboxes this backend can see, for ``enclave-tools ps``. Default: the
        kept-alive sandboxes this host user's registry records for this backend (the
        default record store), their state unknown."""
        now = time.time()
        return [
            SandboxInfo.of_record(record, now) for record in registry.records() if record.backend == self.name
        ]

    def stop_sandbox(self, info: SandboxInfo) -> None:
        """End the sandbox ``info`` describes (one :meth:`describe_sandboxes` listed), whoever
        is attached to it, and forget its record. Default: reach it through its record and
        :meth:`remove` it."""
        if not info.sandbox_id:
            raise InvalidInput(f"{info.name} has no sandbox id: the {self.name} backend cannot stop it")
        record = self.load_record(info.sandbox_id)
        try:
            self.remove(self.attach(record))
        except SandboxGone:
            pass  # ended already: only its record is left
        self.forget_record(record.id)

    # -- kept-alive sandboxes (see enclave_tools.attach) ---------------------------------
    # Where a kept-alive sandbox's record lives, and how one process at a time is attached
    # to it. The defaults are this host user's private registry (registry.py: 0600 records,
    # flocks); a backend whose sandboxes are reachable from other hosts keeps both with
    # the sandbox instead (the Kubernetes backend: pod labels, annotations and a Secret).

    def attach(self, record: Record) -> SandboxHandle:
        """The handle of the kept-alive sandbox ``record`` describes (see :attr:`can_attach`);
        raises :class:`SandboxGone` if it has ended."""
        raise SandboxStartFailed(
            f"keep_alive and Sandbox.connect are not available for the {self.name} backend; "
            "create a new Sandbox there instead"
        )

    def session_sandbox_id(self, key: str) -> str:
        """The id of session ``key``'s kept-alive sandbox (the same in every process that
        may reach it). Default: derived from this host user and the key."""
        return registry.session_sandbox_id(key)

    def load_record(self, sandbox_id: str) -> Record:
        """The record of kept-alive sandbox ``sandbox_id``; raises :class:`SandboxGone` if
        there is none (for this backend)."""
        record = registry.load(sandbox_id)
        if record.backend != self.name:
            raise SandboxGone(
                f"sandbox {sandbox_id} was made by the {record.backend} backend, not {self.name}"
            )
        return record

    def save_record(self, record: Record) -> None:
        """Write ``record`` where :meth:`load_record` finds it."""
        registry.save(record)

    def forget_record(self, sandbox_id: str) -> None:
        """Forget the record of ``sandbox_id`` (its sandbox was removed)."""
        registry.remove(sandbox_id)

    def take_attach(self, sandbox_id: str, wait: float) -> AttachHold:
        """Attach this process to ``sandbox_id``, waiting up to ``wait`` seconds for another
        holder to let go; raises :class:`~enclave_tools.errors.SandboxInUse` if it does not.
        Default: an exclusive ``flock`` (freed by the kernel when the process dies)."""
        return registry.attach(sandbox_id, wait)

    def creation_lock(self, sandbox_id: str, wait: float) -> AbstractContextManager[None]:
        """Held while one process looks for, or creates, ``sandbox_id`` (SandboxSessions);
        a backend whose create fails on a name clash (:class:`SandboxExists`) needs none."""
        return registry.creation_lock(sandbox_id, wait)

    def kept_alive_started(self, handle: SandboxHandle, kernel: KernelClient, config: SandboxConfig) -> None:  # noqa: B027
        """A kept-alive sandbox's kernel has started, no user code has run: set up what ends
        it with no client left. Default: nothing (the gateway's own deadline does)."""

    def check_attached(self, record: Record, kernel: KernelClient) -> None:  # noqa: B027
        """Called once a connecting process reaches ``record``'s kernel: raise
        :class:`SandboxGone` if it turns out to have ended. Default: nothing to check."""

    def remove_expired(self, record: Record) -> None:
        """``record``'s sandbox turned out to be gone: remove what is left of it (only if it
        has provably ended) and forget the record."""
        self.forget_record(record.id)

    def apply_limits(
        self,
        handle: SandboxHandle,
        http: GatewayHTTP,
        kernel: KernelClient,
        idle: float | None,
        lifetime: float | None,
    ) -> Any:
        """Give the running sandbox a new idle limit and/or ``lifetime`` more seconds from
        now; return its limits as the sandbox reports them (untrusted: the caller cleans
        them). Default: the gateway's ``/api/enclave/lifetime``."""
        return http.json(
            "POST", "/api/enclave/lifetime", {"idle_limit": idle, "lifetime": lifetime}, timeout=10
        )

    def read_limits(self, handle: SandboxHandle, http: GatewayHTTP) -> Any:
        """The sandbox's limits as it reports them, without counting as use (untrusted)."""
        return http.json("GET", "/api/enclave/lifetime", timeout=3)
