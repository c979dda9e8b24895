"""What a backend is: where a sandbox's gateway comes from.

A backend starts a gateway (a container, a pod, or nothing at all for a gateway that
already runs), says how to reach it, reports whether it still runs, and removes it. It
never parses kernel messages; :class:`~enclave_tools.Sandbox` does that, the same way
whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from enclave_tools.config import SandboxConfig
from enclave_tools.transport import Endpoint

__all__ = ["Backend", "ContainerState", "SandboxHandle"]


@dataclass
class SandboxHandle:
    """A started gateway: the backend's id for it and how to reach it."""

    container_id: str
    name: str
    endpoint: Endpoint
    run_dir: str | None = None
    host_port: int | None = None


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


@runtime_checkable
class Backend(Protocol):
    """Where gateways come from. :class:`~enclave_tools.backends.docker.DockerBackend` is
    the default; any object with these methods will do."""

    name: str

    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Start a gateway for ``config`` (building or fetching what it needs, with
        progress) and return how to reach it; raise an EnclaveError if it cannot."""

    def state(self, handle: SandboxHandle) -> ContainerState:
        """Whether the gateway still runs."""

    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> ContainerState:
        """Wait up to ``timeout`` seconds for the gateway to stop; return its state."""

    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """The last lines the gateway printed (for error messages); may be empty."""

    def remove(self, handle: SandboxHandle) -> None:
        """Remove the gateway and everything the backend made for it."""

    def reap_orphans(self) -> int:
        """Remove gateways whose owner is gone; return how many."""

    # Optional: ready(handle, config), called once the kernel answers and before any user
    # code runs, applies limits that would slow the start (the Docker backend's CPU quota).
