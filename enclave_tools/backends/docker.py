"""Containers from the local Docker engine: start one hardened sandbox container, watch
it, remove it, and reap the ones whose owner process is gone."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, Callable

from docker.errors import APIError, DockerException, NotFound
from docker.types import LogConfig, Ulimit

from enclave_tools._docker import docker_client
from enclave_tools.backends.base import ContainerState, SandboxHandle
from enclave_tools.backends.owner import owner_alive, this_owner
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import DockerUnavailable, SandboxStartFailed
from enclave_tools.image import ensure_image
from enclave_tools.transport import Endpoint

__all__ = ["ContainerState", "DockerBackend", "LABEL", "SandboxHandle"]

log = logging.getLogger(__name__)

LABEL = "io.enclave-tools.sandbox"
OWNER_PID = "io.enclave-tools.owner-pid"
OWNER_START = "io.enclave-tools.owner-start"
OWNER_HOST = "io.enclave-tools.owner-host"
CREATED = "io.enclave-tools.created"
RUN_DIR = "io.enclave-tools.run-dir"
SANDBOX_UID = 10001
GATEWAY_PORT = 8888
SHARED_DIR = "/run/enclave"
SOCKET_NAME = "gateway.sock"
TOKEN_NAME = "token"
CPU_PERIOD_US = 100_000
"""The CFS period of the CPU limit (Docker's default); the quota is cpus times this."""


def limits_fixed_at_create(runtime: str | None) -> bool:
    """Whether ``runtime`` cannot change a running container's limits (``docker update``):
    gVisor's runsc (registered as "runsc", "runsc-kvm", "gvisor", ...) cannot."""
    return runtime is not None and any(name in runtime.lower() for name in ("runsc", "gvisor"))


def _owner_alive(labels: dict[str, str]) -> bool:
    return owner_alive(labels.get(OWNER_HOST), labels.get(OWNER_PID), labels.get(OWNER_START))


class DockerBackend:
    """Starts sandbox containers on the local Docker engine."""

    name = "docker"

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        """The docker client (connected lazily)."""
        if self._client is None:
            self._client = docker_client()
        return self._client

    def is_local_linux(self) -> bool:
        """Whether the engine runs on this Linux machine (so a unix socket can be shared)."""
        if not sys.platform.startswith("linux"):
            return False
        base_url = getattr(self.client.api, "base_url", "")
        return base_url.startswith("http+docker://localhost") or base_url.startswith("http+docker://localunixsocket")

    def transport_for(self, config: SandboxConfig) -> str:
        """'unix' or 'tcp' for ``config``."""
        if config.transport != "auto":
            return config.transport
        return "unix" if self.is_local_linux() else "tcp"

    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Create and start one container (building the image first if needed, never
        pulling one); return how to reach its gateway."""
        self.reap_orphans_quietly()
        image_id = ensure_image(self.client, config.image, build=config.build_image, progress=progress)
        token = secrets.token_urlsafe(32)

        transport = self.transport_for(config)
        if transport == "tcp" and not config.egress:
            raise SandboxStartFailed(
                "network='none' needs transport='unix' (a Linux Docker engine on this machine): "
                "with no network the gateway cannot publish a port. Use network='bridge' to "
                "allow egress, or run on a local Linux engine."
            )
        name = f"enclave-{sandbox_id}"
        host, pid, started = this_owner()
        labels = {
            LABEL: "1",
            RUN_DIR: "",
            OWNER_PID: pid,
            OWNER_START: started,
            OWNER_HOST: host,
            CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **config.labels,
        }
        # The token travels as a file in a directory shared with this host user only;
        # the gateway reads and deletes it at start. (An environment variable would stay
        # readable in /proc/1/environ by the sandboxed code.)
        run_dir = tempfile.mkdtemp(prefix=f"enclave-{sandbox_id}-")  # 0700: private to us
        shared = os.path.join(run_dir, "gw")
        os.mkdir(shared)
        os.chmod(shared, 0o777)  # the container's user deletes the token, makes the socket
        token_path = os.path.join(shared, TOKEN_NAME)
        with open(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as handle:
            handle.write(token)
        env = {
            "ENCLAVE_TOKEN_FILE": f"{SHARED_DIR}/{TOKEN_NAME}",
            "ENCLAVE_KERNEL_ENV": ",".join(config.env),
            **config.env,
        }
        tmpfs = {
            "/tmp": f"rw,nosuid,nodev,size={config.tmp_size},mode=1777",
            "/home/sandbox": f"rw,nosuid,nodev,size=64m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
            config.workdir: f"rw,nosuid,nodev,exec,size={config.workspace_size},"
            f"uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755",
        }
        kwargs: dict[str, Any] = dict(
            detach=True,
            name=name,
            hostname="sandbox",
            labels=labels,
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            working_dir=config.workdir,
            environment=env,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs=tmpfs,
            shm_size=config.shm_size,
            mem_limit=config.memory,
            memswap_limit=config.memory,
            # No CPU quota while our gateway and kernel boot (they overlap instead of
            # sharing one CPU: a quarter off the cold start); ready() sets config.cpus
            # before any user code runs.
            cpu_period=CPU_PERIOD_US,
            pids_limit=config.pids_limit,
            ulimits=[Ulimit(name="nofile", soft=4096, hard=4096), Ulimit(name="core", soft=0, hard=0)],
            init=True,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            use_config_proxy=False,
            volumes={shared: {"bind": SHARED_DIR, "mode": "rw"}},
        )
        if config.runtime:
            kwargs["runtime"] = config.runtime
        if limits_fixed_at_create(config.runtime):
            kwargs["cpu_quota"] = int(config.cpus * CPU_PERIOD_US)  # ready() cannot set it later
        labels[RUN_DIR] = run_dir
        if transport == "unix":
            env["ENCLAVE_UNIX_SOCKET"] = f"{SHARED_DIR}/{SOCKET_NAME}"
            kwargs["network_mode"] = "none"
        else:
            kwargs["network"] = config.network
            kwargs["ports"] = {f"{GATEWAY_PORT}/tcp": ("127.0.0.1", None)}
        try:
            container = self.client.containers.create(image_id, **kwargs)
        except APIError as exc:
            _remove_dir(run_dir)
            raise SandboxStartFailed(f"Docker could not create the sandbox container: {exc.explanation or exc}") from exc
        except DockerException as exc:
            _remove_dir(run_dir)
            raise DockerUnavailable(f"Docker failed while creating the sandbox: {exc}") from exc
        try:
            container.start()
        except DockerException as exc:
            self.remove_container(container.id, run_dir)
            raise SandboxStartFailed(f"Docker could not start the sandbox container: {exc}") from exc
        if transport == "unix":
            endpoint = Endpoint(token=token, unix_path=os.path.join(shared, SOCKET_NAME))
            return SandboxHandle(container.id, name, endpoint, run_dir)
        try:
            port = self._published_port(container)
        except SandboxStartFailed:
            self.remove_container(container.id, run_dir)
            raise
        return SandboxHandle(container.id, name, Endpoint(token=token, port=port), run_dir, port)

    def ready(self, handle: SandboxHandle, config: SandboxConfig) -> None:
        """Apply the CPU limit meant for user code; the sandbox runs none before this."""
        # Under gVisor the quota was set at create (start()): runsc cannot update it.
        if not limits_fixed_at_create(config.runtime):
            try:
                self.client.api.update_container(
                    handle.container_id, cpu_period=CPU_PERIOD_US, cpu_quota=int(config.cpus * CPU_PERIOD_US)
                )
            except DockerException as exc:
                raise SandboxStartFailed(f"Docker could not set the sandbox's CPU limit: {exc}") from exc

    def _published_port(self, container: Any) -> int:
        for _ in range(50):
            container.reload()
            bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{GATEWAY_PORT}/tcp")
            if bindings:
                for binding in bindings:
                    if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                        return int(binding["HostPort"])
            if container.status not in ("created", "running"):
                break
            time.sleep(0.02)
        raise SandboxStartFailed("Docker did not publish the gateway port on 127.0.0.1")

    def state(self, handle: SandboxHandle) -> ContainerState:
        """What Docker says about the container now."""
        try:
            attrs = self.client.api.inspect_container(handle.container_id)
        except NotFound:
            return ContainerState(running=False, exists=False)
        except DockerException as exc:
            return ContainerState(running=False, exists=True, error=str(exc))
        state = attrs.get("State", {})
        return ContainerState(
            running=bool(state.get("Running")),
            exists=True,
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error", ""),
        )

    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> ContainerState:
        """Wait up to ``timeout`` seconds for the container to stop (a killed container
        can still report "running" for a moment); return its state then."""
        try:
            self.client.api.wait(handle.container_id, timeout=timeout)
        except Exception:  # noqa: BLE001 - still running, or already gone
            pass
        return self.state(handle)

    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """The last lines the container printed."""
        try:
            return self.client.api.logs(handle.container_id, tail=lines).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - best effort, for error messages
            return ""

    def remove(self, handle: SandboxHandle) -> None:
        """Remove the container and its private directory."""
        self.remove_container(handle.container_id, handle.run_dir)

    def remove_container(self, container_id: str, run_dir: str | None) -> None:
        """Force-remove a container (and volumes); ignore one that is already gone."""
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except DockerException as exc:
            if "already in progress" not in str(exc):
                log.warning("could not remove container %s: %s", container_id[:12], exc)
        _remove_dir(run_dir)

    def list_sandboxes(self) -> list[Any]:
        """Every container enclave-tools created on this engine."""
        return self.client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)

    def reap_orphans_quietly(self) -> None:
        """:meth:`reap_orphans`, never failing a start because of it."""
        try:
            self.reap_orphans()
        except Exception as exc:  # noqa: BLE001 - cleanup must never break a start
            log.debug("reaping orphans failed: %s", exc)

    def reap_orphans(self, on_removed: Callable[[Any], None] | None = None) -> int:
        """Remove sandboxes whose owner process on this host is gone; return how many."""
        removed = 0
        for container in self.list_sandboxes():
            labels = container.labels or {}
            if _owner_alive(labels):
                continue
            self.remove_container(container.id, _safe_run_dir(labels.get(RUN_DIR)))
            removed += 1
            if on_removed:
                on_removed(container)
        return removed


def _safe_run_dir(path: str | None) -> str | None:
    """Only our own temporary directories are ever removed."""
    if path and os.path.basename(path).startswith("enclave-") and os.path.dirname(path) == tempfile.gettempdir():
        return path
    return None


def _remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
