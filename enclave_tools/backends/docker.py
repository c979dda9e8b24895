"""Containers from the local Docker engine: start one hardened sandbox container, watch
it, remove it, and reap the ones whose owner process is gone.

The host shares one directory with each container (``gw``, at /run/enclave inside): the
token goes in as a file, the gateway's unix socket comes out. The gateway, running as the
sandbox's uid, must write there while it starts; :meth:`DockerBackend.ready` then takes
that right away for good, before any user code runs (see :func:`lock_shared_dir`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from docker.errors import APIError, DockerException, NotFound
from docker.types import LogConfig, Ulimit

from enclave_tools._docker import docker_client
from enclave_tools._fs import remove_tree
from enclave_tools.backends.base import (
    GATEWAY_PORT,
    IDLE_EXIT,
    LIFETIME_EXIT,
    SANDBOX_UID,
    SHARED_DIR,
    SOCKET_NAME,
    TOKEN_NAME,
    Backend,
    ContainerState,
    SandboxExists,
    SandboxHandle,
    SandboxInfo,
    ended_because,
    lifetime_env,
)
from enclave_tools.backends.owner import Owner, OwnerCheck
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import (
    DockerUnavailable,
    EnclaveError,
    GatewayError,
    SandboxGone,
    SandboxStartFailed,
)
from enclave_tools.image.derived import ensure_sandbox_image
from enclave_tools.transport import Endpoint

__all__ = [
    "IDLE_EXIT",
    "LIFETIME_EXIT",
    "ContainerState",
    "DockerBackend",
    "LABEL",
    "SandboxExists",
    "SandboxHandle",
    "ended_because",
]

log = logging.getLogger(__name__)

LABEL = "io.enclave-tools.sandbox"
OWNER_PID = "io.enclave-tools.owner-pid"
OWNER_START = "io.enclave-tools.owner-start"
OWNER_HOST = "io.enclave-tools.owner-host"
OWNER_BOOT = "io.enclave-tools.owner-boot"
OWNER_PID_NS = "io.enclave-tools.owner-pid-ns"
CREATED = "io.enclave-tools.created"
KEEP_ALIVE = "io.enclave-tools.keep-alive"
"""On a kept-alive sandbox (it has no owner labels): the reaper judges it by its expiry
(the gateway exits when it is up) rather than by an owner process."""
SESSION = "io.enclave-tools.session"
"""The session id of a kept-alive sandbox made by SandboxSessions."""
RUN_DIR = "io.enclave-tools.run-dir"
SHARED_NAME = "gw"
"""The run directory's subdirectory that the container sees at SHARED_DIR."""
OWNER_FILE = "owner.json"
"""The run directory's record of its owner (out of the container's reach), for reap_run_dirs."""
RUN_DIR_GRACE_S = 3600.0
"""How old a run directory without an owner record (an older version's) must be before
reap_run_dirs may take it: its container was created seconds after it, so by then one of
this engine's containers names it or none ever will again."""
DEADLINE_GRACE_S = 60.0
"""Seconds past a kept-alive sandbox's recorded lifetime before gc removes it while it
still runs (its gateway should have ended it by then)."""
CPU_PERIOD_US = 100_000
"""The CFS period of the CPU limit (Docker's default); the quota is cpus times this."""


def limits_fixed_at_create(runtime: str | None) -> bool:
    """Whether ``runtime`` cannot change a running container's limits (``docker update``):
    gVisor's runsc (registered as "runsc", "runsc-kvm", "gvisor", ...) cannot."""
    return runtime is not None and any(name in runtime.lower() for name in ("runsc", "gvisor"))


@dataclass(frozen=True)
class SandboxSummary:
    """A sandbox container as Docker's container list shows it (one API call for them all,
    where ``containers.list`` inspects each one)."""

    id: str
    name: str
    labels: dict[str, str]
    status: str

    @classmethod
    def from_list_entry(cls, entry: dict[str, Any]) -> SandboxSummary:
        """From one entry of ``GET /containers/json``."""
        names = entry.get("Names") or [""]
        return cls(
            id=str(entry.get("Id", "")),
            name=str(names[0]).lstrip("/"),
            labels=dict(entry.get("Labels") or {}),
            status=str(entry.get("State", "")),
        )


def _owner_of(labels: dict[str, str]) -> Owner:
    return Owner(
        labels.get(OWNER_HOST, ""),
        labels.get(OWNER_PID, ""),
        labels.get(OWNER_START, ""),
        labels.get(OWNER_BOOT, ""),
        labels.get(OWNER_PID_NS, ""),
    )


def _owner_alive(labels: dict[str, str], check: OwnerCheck | None = None) -> bool:
    """Whether the owner recorded in a container's labels may still run (see owner.py)."""
    return (check or OwnerCheck()).alive(_owner_of(labels))


class DockerBackend(Backend):
    """Starts sandbox containers on the local Docker engine."""

    name = "docker"
    can_attach = True

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
        return base_url.startswith("http+docker://localhost") or base_url.startswith(
            "http+docker://localunixsocket"
        )

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
        image_id = ensure_sandbox_image(self.client, config, progress)
        token = secrets.token_urlsafe(32)

        transport = self.transport_for(config)
        if transport == "tcp" and not config.egress:
            raise SandboxStartFailed(
                "network='none' needs transport='unix' (a Linux Docker engine on this machine): "
                "with no network the gateway cannot publish a port. Use network='bridge' to "
                "allow egress, or run on a local Linux engine."
            )
        name = f"enclave-{sandbox_id}"
        owner = Owner.current()
        labels = {
            LABEL: "1",
            RUN_DIR: "",
            **self._ownership_labels(owner, config),
            CREATED: datetime.now(UTC).isoformat(timespec="seconds"),
            **config.labels,
        }
        # The token travels as a file in a directory shared with this host user only;
        # the gateway reads and deletes it at start. (An environment variable would stay
        # readable in /proc/1/environ by the sandboxed code.)
        run_dir = tempfile.mkdtemp(prefix=f"enclave-{sandbox_id}-")  # 0700: private to us
        shared = os.path.join(run_dir, SHARED_NAME)
        try:
            _write_owner_record(run_dir, owner)
            os.mkdir(shared)
            # Writable by the container's user (another uid) until ready() locks it: the
            # gateway deletes the token and binds its socket here, and nothing else runs yet.
            os.chmod(shared, 0o777)
            token_path = os.path.join(shared, TOKEN_NAME)
            with open(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as handle:
                handle.write(token)
        except OSError as exc:
            remove_tree(run_dir)
            raise SandboxStartFailed(
                f"could not prepare the sandbox's run directory {run_dir}: {exc}"
            ) from exc
        env = {
            "ENCLAVE_TOKEN_FILE": f"{SHARED_DIR}/{TOKEN_NAME}",
            "ENCLAVE_KERNEL_ENV": ",".join(config.env),
            **config.env,
            **lifetime_env(config),
        }
        tmpfs = {
            "/tmp": f"rw,nosuid,nodev,size={config.tmp_size},mode=1777",
            "/home/sandbox": f"rw,nosuid,nodev,size=64m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
            config.workdir: f"rw,nosuid,nodev,exec,size={config.workspace_size},"
            f"uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755",
        }
        # The low-level API: ``containers.create`` would inspect the new container
        # afterwards, an API call per start that nothing here reads.
        host_config: dict[str, Any] = dict(
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
            binds={shared: {"bind": SHARED_DIR, "mode": "rw"}},
        )
        create: dict[str, Any] = dict(
            name=name,
            hostname="sandbox",
            labels=labels,
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            working_dir=config.workdir,
            environment=env,
            volumes=[SHARED_DIR],
            detach=True,
            use_config_proxy=False,
        )
        if config.runtime:
            host_config["runtime"] = config.runtime
        if limits_fixed_at_create(config.runtime):
            host_config["cpu_quota"] = int(config.cpus * CPU_PERIOD_US)  # ready() cannot set it later
        labels[RUN_DIR] = run_dir
        if transport == "unix":
            env["ENCLAVE_UNIX_SOCKET"] = f"{SHARED_DIR}/{SOCKET_NAME}"
            host_config["network_mode"] = "none"
        else:
            host_config["network_mode"] = config.network
            host_config["port_bindings"] = {f"{GATEWAY_PORT}/tcp": ("127.0.0.1", None)}
            create["ports"] = [(GATEWAY_PORT, "tcp")]
            create["networking_config"] = {config.network: None}
        try:
            create["host_config"] = self.client.api.create_host_config(**host_config)
            container_id = self._create(image_id, name, config, create)
        except APIError as exc:
            remove_tree(run_dir)
            if exc.status_code == 409 and config.keep_alive is not None:
                raise SandboxExists(f"a sandbox named {name} already exists") from exc
            raise SandboxStartFailed(
                f"Docker could not create the sandbox container: {exc.explanation or exc}"
            ) from exc
        except DockerException as exc:
            remove_tree(run_dir)
            raise DockerUnavailable(f"Docker failed while creating the sandbox: {exc}") from exc
        try:
            self.client.api.start(container_id)
        except DockerException as exc:
            self.remove_container(container_id, run_dir)
            raise SandboxStartFailed(f"Docker could not start the sandbox container: {exc}") from exc
        if transport == "unix":
            endpoint = Endpoint(token=token, unix_path=os.path.join(shared, SOCKET_NAME))
            return SandboxHandle(container_id, name, endpoint, run_dir)
        try:
            port = self._published_port(container_id)
        except SandboxStartFailed:
            self.remove_container(container_id, run_dir)
            raise
        return SandboxHandle(container_id, name, Endpoint(token=token, port=port), run_dir, port)

    # -- kept-alive sandboxes --------------------------------------------------------------

    @staticmethod
    def _ownership_labels(owner: Owner, config: SandboxConfig) -> dict[str, str]:
        """The owner's labels, or none for a kept-alive sandbox: it outlives its maker, and
        the reaper judges it by its expiry instead."""
        if config.keep_alive is not None:
            return {KEEP_ALIVE: "1"}
        return {
            OWNER_PID: owner.pid,
            OWNER_START: owner.started,
            OWNER_HOST: owner.host,
            OWNER_BOOT: owner.boot_id,
            OWNER_PID_NS: owner.pid_namespace,
        }

    def _create(self, image_id: str, name: str, config: SandboxConfig, create: dict[str, Any]) -> str:
        """Create the container and return its id; a kept-alive one whose name is held by an
        ended container of the same id (expired, not yet reaped) takes the name over."""
        try:
            return str(self.client.api.create_container(image_id, **create)["Id"])
        except APIError as exc:
            if exc.status_code != 409 or config.keep_alive is None or not self._remove_ended(name):
                raise
            return str(self.client.api.create_container(image_id, **create)["Id"])

    def remove_ended(self, name: str) -> bool:
        """Remove the kept-alive container ``name`` (a name or id) if it has stopped, with
        its run directory if that is one of ours; return whether it is gone. Any other
        container (running, or not a kept-alive sandbox) is left alone."""
        return self._remove_ended(name)

    def _remove_ended(self, name: str) -> bool:
        """Remove the kept-alive container ``name`` if it has stopped; return whether it did."""
        try:
            attrs = self.client.api.inspect_container(name)
        except NotFound:
            return True
        labels = attrs.get("Config", {}).get("Labels") or {}
        if labels.get(KEEP_ALIVE) != "1" or attrs.get("State", {}).get("Running"):
            return False
        self.remove_container(attrs["Id"], _safe_run_dir(labels.get(RUN_DIR)))
        return True

    def remove_expired(self, record: Any) -> None:
        """``record``'s sandbox is gone: if its container has stopped, remove it as gc
        would, trusting no path or id the record holds (remove_ended takes only a stopped
        kept-alive sandbox, and only a run directory of ours); forget the record."""
        # state() reads only the id, the name and run_dir: a handle with no endpoint is enough
        gone = SandboxHandle(record.container_id, record.name, None, record.run_dir)  # type: ignore[arg-type]
        if not self.state(gone).running:
            self.remove_ended(record.container_id)
            self.forget_record(record.id)

    def attach(self, record: Any) -> SandboxHandle:
        """A handle on the running kept-alive sandbox of ``record`` (a registry.Record),
        after checking what a connecting process must not take on trust: the container is
        a kept-alive sandbox and runs, the run directory and its shared directory are this
        user's and private (locked), and the socket is a socket of the sandbox's uid, which
        the endpoint is then pinned to. Raises SandboxGone when it has ended."""
        try:
            attrs = self.client.api.inspect_container(record.container_id)
        except NotFound:
            raise SandboxGone(f"sandbox {record.id} is gone: its container was removed") from None
        except DockerException as exc:
            raise DockerUnavailable(f"Docker failed while looking for sandbox {record.id}: {exc}") from exc
        labels = attrs.get("Config", {}).get("Labels") or {}
        if labels.get(KEEP_ALIVE) != "1" or labels.get(RUN_DIR) != (record.run_dir or ""):
            raise SandboxGone(f"sandbox {record.id} is gone: its container is not the one recorded")
        state = attrs.get("State", {})
        if not state.get("Running"):
            described = ContainerState(
                False, True, state.get("ExitCode"), bool(state.get("OOMKilled"))
            ).describe()
            raise SandboxGone(
                f"sandbox {record.id} has ended: {ended_because(state.get('ExitCode'), described)}"
            )
        if record.unix_path:
            endpoint = Endpoint(token=record.token, unix_path=self._checked_socket(record))
            try:
                endpoint.pin()
            except (OSError, GatewayError) as exc:
                raise SandboxGone(
                    f"sandbox {record.id} cannot be reached: its socket is gone ({exc})"
                ) from None
            return SandboxHandle(attrs["Id"], attrs.get("Name", "").lstrip("/"), endpoint, record.run_dir)
        port = _port_of(attrs)
        return SandboxHandle(
            attrs["Id"],
            attrs.get("Name", "").lstrip("/"),
            Endpoint(token=record.token, port=port),
            record.run_dir,
            port,
        )

    def _checked_socket(self, record: Any) -> str:
        run_dir = _safe_run_dir(record.run_dir)
        if run_dir is None:
            raise SandboxGone(f"sandbox {record.id}'s run directory {record.run_dir!r} is not one of ours")
        shared = os.path.join(run_dir, SHARED_NAME)
        for path in (run_dir, shared):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                raise SandboxGone(f"sandbox {record.id} cannot be reached: {path} is gone") from None
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise SandboxStartFailed(
                    f"sandbox {record.id}'s directory {path} is not private to this user; refusing to connect"
                )
        sock = os.path.join(shared, SOCKET_NAME)
        try:
            info = os.lstat(sock)
        except FileNotFoundError:
            raise SandboxGone(f"sandbox {record.id} cannot be reached: its socket is gone") from None
        if not stat.S_ISSOCK(info.st_mode) or (info.st_uid != SANDBOX_UID and not self._remapped_uids()):
            raise SandboxStartFailed(f"{sock} is not the sandbox's socket; refusing to connect")
        return sock

    def ready(self, handle: SandboxHandle, config: SandboxConfig) -> None:
        """Lock the shared directory and apply the CPU limit meant for user code; called
        once the gateway answers and the kernel exists, before any user code runs."""
        self.lock(handle)
        self._limit_cpu(handle, config)

    def lock(self, handle: SandboxHandle) -> None:
        """Take the container's write access to the shared directory away, check that
        only the gateway's socket is there, and pin the endpoint to that socket."""
        try:
            if handle.run_dir:
                lock_shared_dir(
                    os.path.join(handle.run_dir, SHARED_NAME),
                    handle.endpoint.unix_path is not None,
                    self._remapped_uids,
                )
            handle.endpoint.pin()
        except OSError as exc:
            raise SandboxStartFailed(f"could not lock the sandbox's shared directory: {exc}") from exc

    def _remapped_uids(self) -> bool:
        """Whether the engine maps container uids to others on the host (userns-remap,
        rootless): then the socket's owner on the host is not SANDBOX_UID."""
        try:
            options = self.client.info().get("SecurityOptions") or []
        except DockerException:
            return False
        return any("name=userns" in option or "name=rootless" in option for option in options)

    def _limit_cpu(self, handle: SandboxHandle, config: SandboxConfig) -> None:
        if limits_fixed_at_create(config.runtime):
            return  # under gVisor the quota was set at create: runsc cannot update it
        try:
            self.client.api.update_container(
                handle.container_id, cpu_period=CPU_PERIOD_US, cpu_quota=int(config.cpus * CPU_PERIOD_US)
            )
        except DockerException as exc:
            raise SandboxStartFailed(f"Docker could not set the sandbox's CPU limit: {exc}") from exc

    def _published_port(self, container_id: str) -> int:
        for _ in range(50):
            attrs = self.client.api.inspect_container(container_id)
            port = _port_of(attrs)
            if port is not None:
                return port
            if attrs.get("State", {}).get("Status") not in ("created", "running"):
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
        """Force-remove a container (and volumes), ignoring one that is already gone, and
        its run directory (whatever the sandbox left there)."""
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except DockerException as exc:
            if "already in progress" not in str(exc):
                log.warning("could not remove container %s: %s", container_id[:12], exc)
        remove_tree(run_dir)

    def list_sandboxes(self) -> list[Any]:
        """Every container enclave-tools created on this engine."""
        return self.client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)

    def describe_sandboxes(self) -> list[SandboxInfo]:
        """Every container enclave-tools created on this engine, whoever owns it, running
        or stopped: its owner pid (or "detached"), how the host reaches it, its memory in
        use, and, for a running kept-alive one, its idle time and time left as its
        gateway reports them (reading them is not use)."""
        infos = []
        for container in self.list_sandboxes():
            labels = container.labels or {}
            port = _port_of(container.attrs)
            info = SandboxInfo(
                name=container.name,
                sandbox_id=container.name.removeprefix("enclave-"),
                container_id=container.id,
                created=_epoch(labels.get(CREATED)),
                where=f"127.0.0.1:{port}" if port else "unix socket",
                memory=self._memory(container) if container.status == "running" else None,
                status=container.status,
            )
            if labels.get(KEEP_ALIVE) == "1":
                info.session = labels.get(SESSION)
                info.owner = "detached"
                if container.status == "running":
                    info.idle, info.expires_in = self._kept_alive_times(container.name)
                else:
                    info.expires_in = "ended"
            else:
                info.owner = labels.get(OWNER_PID, "?") + ("" if _owner_alive(labels) else " (gone)")
            infos.append(info)
        return infos

    @staticmethod
    def _memory(container: Any) -> str | None:
        try:
            stats = container.stats(stream=False, one_shot=True)
            return f"{stats['memory_stats'].get('usage', 0) / 2**20:.0f} MiB"
        except Exception:  # noqa: BLE001 - informational column
            return None

    def _kept_alive_times(self, name: str) -> tuple[float | str | None, float | str | None]:
        """A kept-alive sandbox's idle time and time left, from its gateway; '?' if this
        user holds no record of it or it does not answer."""
        from enclave_tools import registry
        from enclave_tools.attach import clean_limits
        from enclave_tools.transport import GatewayHTTP

        try:
            handle = self.attach(registry.load(name.removeprefix("enclave-")))
            http = GatewayHTTP(handle.endpoint)
            try:
                limits = clean_limits(self.read_limits(handle, http))  # the gateway's word: bounded
            finally:
                http.close()
            return limits["idle"], limits["expires_in"]
        except (EnclaveError, OSError, AttributeError, TypeError, ValueError):
            return "?", "?"

    def stop_sandbox(self, info: SandboxInfo) -> None:
        """Remove the container (kept alive or not, whoever owns it), its run directory,
        and this user's record of it."""
        from enclave_tools import registry

        try:
            labels = (
                self.client.api.inspect_container(info.container_id).get("Config", {}).get("Labels") or {}
            )
        except NotFound:
            labels = {}
        self.remove_container(info.container_id, _safe_run_dir(labels.get(RUN_DIR)))
        with contextlib.suppress(EnclaveError):  # not a sandbox id: nothing recorded
            registry.remove(info.name.removeprefix("enclave-"))

    def sandbox_summaries(self) -> list[SandboxSummary]:
        """Every container enclave-tools created on this engine, in one API call."""
        entries = self.client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        return [SandboxSummary.from_list_entry(entry) for entry in entries]

    def reap_orphans_quietly(self) -> None:
        """:meth:`reap_orphans`, never failing a start because of it."""
        try:
            self.reap_orphans()
        except Exception as exc:  # noqa: BLE001 - cleanup must never break a start
            log.debug("reaping orphans failed: %s", exc)

    def reap_orphans(
        self,
        on_removed: Callable[[str], None] | None = None,
        on_dir_removed: Callable[[str], None] | None = None,
    ) -> int:
        """Remove sandboxes whose owner is provably gone (see owner.py: an owner in
        another PID namespace, or on another machine, is presumed alive), and kept-alive
        ones that ended or are past their recorded lifetime, then run directories left
        without a container (:meth:`reap_run_dirs`; ``on_dir_removed`` is told of each,
        else ``on_removed``); return how many sandboxes were removed. ``on_removed`` gets
        each removed container's name."""
        removed = 0
        gone: set[str] = set()
        check = OwnerCheck()
        listed_at = time.time()
        containers = self.sandbox_summaries()
        for container in containers:
            labels = container.labels or {}
            if labels.get(KEEP_ALIVE) == "1":
                if container.status not in ("exited", "dead") and not self._past_deadline(container.id):
                    continue  # judged by its expiry: the gateway ends it when it is up
            elif _owner_alive(labels, check):
                continue
            self.remove_container(container.id, _safe_run_dir(labels.get(RUN_DIR)))
            gone.add(container.id)
            removed += 1
            if on_removed:
                on_removed(container.name)
        if on_dir_removed is None and on_removed is not None:
            tell = on_removed
            on_dir_removed = lambda path: tell(f"run directory {path}")  # noqa: E731
        self.reap_run_dirs(on_dir_removed, check, containers)
        running = {c.id for c in containers if c.status not in ("exited", "dead") and c.id not in gone}
        self.reap_records(running, listed_at)
        return removed

    def _past_deadline(self, container_id: str) -> bool:
        """Whether this user's record of the kept-alive container says its lifetime ended
        more than DEADLINE_GRACE_S ago: the host's backstop, should its gateway (next to
        the sandbox's code) not have ended it."""
        from enclave_tools import registry

        with contextlib.suppress(OSError, EnclaveError):
            for record in registry.records():
                if record.backend == self.name and record.container_id == container_id:
                    return bool(record.expires) and time.time() > record.expires + DEADLINE_GRACE_S
        return False

    def reap_records(self, running: set[str], listed_at: float) -> None:
        """Forget this user's kept-alive records whose container no longer runs (of the
        ``running`` ids listed at ``listed_at``; records written since are left alone)."""
        from enclave_tools import registry

        try:
            for record in registry.records():
                if (
                    record.backend == self.name
                    and record.created < listed_at
                    and record.container_id not in running
                ):
                    registry.remove(record.id)
            registry.prune_locks()
        except (OSError, EnclaveError) as exc:
            log.debug("pruning sandbox records failed: %s", exc)

    def reap_run_dirs(
        self,
        on_removed: Callable[[str], None] | None = None,
        check: OwnerCheck | None = None,
        containers: list[SandboxSummary] | None = None,
    ) -> int:
        """Remove this user's run directories in the temp dir that no container of this
        engine names (of ``containers``, else all) and whose owner is provably gone (or,
        for a directory without an owner record, that are older than RUN_DIR_GRACE_S);
        return how many."""
        check = check or OwnerCheck()
        containers = self.sandbox_summaries() if containers is None else containers
        named = {c.labels.get(RUN_DIR) for c in containers}
        removed = 0
        for path in _run_dirs():
            if path in named or not _run_dir_abandoned(path, check):
                continue
            if not remove_tree(path):
                removed += 1
                if on_removed:
                    on_removed(path)
        return removed


def lock_shared_dir(
    shared: str, expect_socket: bool, remapped_uids: Callable[[], bool] = lambda: False
) -> None:
    """Make ``shared`` (the directory the container sees at SHARED_DIR) 0700, owned by
    this host user, so the container's uid can no longer create, remove or rename anything
    in it; then check that it holds the gateway's socket and nothing else.

    Sound because, once it is locked, nothing in the container can reach it: the
    container's processes run as SANDBOX_UID with no capability (cap_drop ALL,
    no-new-privileges, so no CAP_DAC_OVERRIDE or CAP_FOWNER, and they do not own the
    directory to chmod it back); permissions are checked on every create, unlink and
    rename, so a descriptor opened earlier does not help; the gateway's cwd is the
    workspace, not this directory; and the gateway is not dumpable, so its listening
    socket cannot be taken (pidfd_getfd, /proc/PID/fd), only abandoned by killing it,
    which stops the container. Before the lock only our gateway has run (the kernel runs
    user code only after ready()), and it leaves nothing here but its socket: it deletes
    the token file before it binds. Raises SandboxStartFailed if the directory is not as
    expected.
    """
    if os.getuid() == SANDBOX_UID:
        log.warning(
            "this user's uid is the sandbox's (%d): the sandbox can undo the lock on %s", SANDBOX_UID, shared
        )
    info = os.lstat(shared)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SandboxStartFailed(f"the sandbox's shared directory {shared} is not this user's directory")
    os.chmod(shared, 0o700)
    try:
        os.unlink(os.path.join(shared, TOKEN_NAME))  # normally gone: the gateway deletes it
    except FileNotFoundError:
        pass
    present = set(os.listdir(shared))
    expected = {SOCKET_NAME} if expect_socket else set()
    if present != expected:
        raise SandboxStartFailed(
            f"the sandbox's shared directory holds {sorted(present)}, not {sorted(expected)}: "
            "something other than its gateway wrote there"
        )
    if expect_socket:
        sock = os.lstat(os.path.join(shared, SOCKET_NAME))
        if not stat.S_ISSOCK(sock.st_mode):
            raise SandboxStartFailed(f"{shared}/{SOCKET_NAME} is not a socket")
        if sock.st_uid != SANDBOX_UID and not remapped_uids():
            raise SandboxStartFailed(
                f"{shared}/{SOCKET_NAME} belongs to uid {sock.st_uid}, not the sandbox's uid {SANDBOX_UID}"
            )


def _port_of(attrs: dict[str, Any]) -> int | None:
    bindings = (attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{GATEWAY_PORT}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _epoch(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _safe_run_dir(path: str | None) -> str | None:
    """Only our own temporary directories are ever removed."""
    if (
        path
        and os.path.basename(path).startswith("enclave-")
        and os.path.dirname(path) == tempfile.gettempdir()
    ):
        return path
    return None


def _write_owner_record(run_dir: str, owner: Owner) -> None:
    with open(
        os.open(os.path.join(run_dir, OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w"
    ) as out:
        json.dump(owner.__dict__, out)


def _read_owner_record(run_dir: str) -> Owner | None:
    try:
        fd = os.open(os.path.join(run_dir, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd) as handle:
            fields = json.loads(handle.read(4096))
        return Owner(**{key: str(fields[key]) for key in Owner.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_dirs() -> list[str]:
    """This user's directories in the temp dir that look like run directories: named
    enclave-*, holding only ``gw`` and an owner record."""
    found = []
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith("enclave-"):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            names = set(os.listdir(entry.path)) if stat.S_ISDIR(info.st_mode) else set()
        except OSError:
            continue
        if info.st_uid == os.getuid() and names and names <= {SHARED_NAME, OWNER_FILE}:
            found.append(entry.path)
    return found


def _run_dir_abandoned(path: str, check: OwnerCheck) -> bool:
    owner = _read_owner_record(path)
    if owner is not None:
        return not check.alive(owner)
    try:
        return time.time() - os.lstat(path).st_mtime > RUN_DIR_GRACE_S
    except OSError:
        return False
