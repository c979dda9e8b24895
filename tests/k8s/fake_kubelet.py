"""A fake kubelet: runs each pod of the fake API server as a container on the local Docker
engine (default bridge network, so the pod IP is the container's bridge IP) and writes the
pod's status back: Pending with a waiting reason, Running with its podIP, Ready once the
readiness probe's TCP port accepts, then Failed/Succeeded when the container exits or
``activeDeadlineSeconds`` passes (reason ``DeadlineExceeded``; its current value, which a
patch may have lowered, counted from when the container started).

What it applies from the pod spec: init containers (run to completion, in order; emptyDirs
they share with the pod are host directories, the others sized tmpfs), the first
container's image (never pulled: a missing image gives ErrImagePull, then ImagePullBackOff),
env (values and secretKeyRef), secret volumes (as read-only files, group-owned by fsGroup),
runAsUser/runAsGroup, dropped capabilities, allowPrivilegeEscalation, readOnlyRootFilesystem,
memory and CPU limits, workingDir, shareProcessNamespace (as Docker's --init: a reaping PID 1).

Behaviours of a real kubelet and cluster it reproduces:

* a memory request above ``node_memory`` leaves the pod Pending with PodScheduled=False,
  reason Unschedulable, until ``node_memory`` grows (a node added by an autoscaler);
* ``medium: Memory`` emptyDirs are tmpfs sized min(sizeLimit, the memory limit): a full
  one is ENOSPC; disk emptyDirs are host directories with no size of their own, and a
  pod whose disk emptyDir holds more than its ``sizeLimit`` is evicted (phase Failed,
  reason Evicted), as the kubelet's eviction manager does;
* a pod selected by a NetworkPolicy with policyTypes Egress and no egress rule runs on an
  internal Docker network: it can be reached from the host, but reaches nothing itself;
* graceful deletion: the containers get SIGTERM, then SIGKILL after the grace period,
  and only then is the pod object removed; a forced delete (grace 0) stops them later.

It ignores runtimeClassName, nodeSelector, tolerations and probes other than tcpSocket.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

from fake_apiserver import FakeAPIServer

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ei": 2**60, "k": 10**3, "M": 10**6, "G": 10**9}


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity ('2Gi', '500m', '1') as a number."""
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_deny_egress_network(docker_client: Any, labels: dict[str, str]) -> Any:
    """An internal Docker network: its containers reach no other network (nor other
    containers' networks), and the host can still reach them."""
    name = f"fake-kubelet-deny-egress-{os.getpid()}"
    return docker_client.networks.create(name, driver="bridge", internal=True, labels=labels)


class FakeKubelet:
    """Runs the fake API server's pods on Docker; ``labels`` go on every container."""

    def __init__(
        self,
        docker_client: Any,
        labels: dict[str, str],
        node_memory: float = 16 * 2**30,
        deny_egress_network: str | None = None,
    ) -> None:
        self.docker = docker_client
        self.labels = labels
        self.node_memory = node_memory
        self.server: FakeAPIServer | None = None
        self._pods: dict[tuple[str, str], _PodRunner] = {}
        self._lock = threading.Lock()
        self._deny_network = deny_egress_network

    def deny_egress_network(self) -> str:
        """The internal Docker network that stands in for a deny-all-egress NetworkPolicy
        (made by the caller, see :func:`create_deny_egress_network`)."""
        if self._deny_network is None:
            raise RuntimeError("this FakeKubelet was given no deny_egress_network")
        return self._deny_network

    def pod_terminating(self, pod: dict[str, Any], grace: float) -> None:
        """Stop ``pod``'s containers (SIGTERM, SIGKILL after ``grace`` s), then let the API
        server remove the object."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])

        def terminate() -> None:
            with self._lock:
                runner = self._pods.pop(key, None)
            if runner is not None:
                runner.stop(grace)
            self.server.terminated(*key)

        threading.Thread(target=terminate, name=f"kubelet-terminate-{key[1]}", daemon=True).start()

    def pod_created(self, pod: dict[str, Any]) -> None:
        """Start running ``pod`` in the background."""
        runner = _PodRunner(self, pod)
        with self._lock:
            self._pods[runner.key] = runner
        runner.start()

    def pod_deleted(self, pod: dict[str, Any], notice: float = 0) -> None:
        """Stop and remove ``pod``'s container, after ``notice`` seconds (a real kubelet
        learns of a forced delete on its next sync, after the object is gone)."""
        if notice:
            time.sleep(notice)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            runner = self._pods.pop(key, None)
        if runner is not None:
            runner.stop()

    def pod_logs(self, pod: dict[str, Any], tail: int | None) -> str:
        """The container's output."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        runner = self._pods.get(key)
        if runner is None or runner.container is None:
            return ""
        try:
            return runner.container.logs(tail=tail or "all").decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - gone already
            return ""

    def container_of(self, namespace: str, name: str) -> Any:
        """The Docker container running a pod (for tests that kill it)."""
        runner = self._pods.get((namespace, name))
        return runner.container if runner else None

    def stop_all(self) -> None:
        """Remove every container this kubelet started."""
        with self._lock:
            runners, self._pods = list(self._pods.values()), {}
        for runner in runners:
            runner.stop()


class _PodRunner:
    def __init__(self, kubelet: FakeKubelet, pod: dict[str, Any]) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.container: Any = None
        self.status: dict[str, Any] = {"phase": "Pending", "conditions": []}
        self._stopped = threading.Event()
        self._dirs: list[str] = []
        self._empty_dirs: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{self.key[1]}", daemon=True)

    @property
    def server(self) -> FakeAPIServer:
        return self.kubelet.server

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = 0) -> None:
        self._stopped.set()
        self._thread.join(30)
        if grace and self.container is not None:
            try:
                self.container.stop(timeout=int(grace))
            except Exception:  # noqa: BLE001, S110 - already stopped
                pass
        self._remove_container()

    # -- status --------------------------------------------------------------------------

    def _write(self, **changes: Any) -> None:
        self.status.update(changes)
        if not self._stopped.is_set():
            self.server.set_status(*self.key, self.status)

    def _condition(self, kind: str, status: bool, reason: str = "", message: str = "") -> None:
        conditions = [c for c in self.status["conditions"] if c["type"] != kind]
        entry = {"type": kind, "status": str(status), "lastTransitionTime": _now()}
        if reason:
            entry.update(reason=reason, message=message)
        self.status["conditions"] = conditions + [entry]

    def _container_state(
        self,
        state: dict[str, Any],
        ready: bool = False,
        field: str = "containerStatuses",
        name: str | None = None,
    ) -> None:
        spec = self.pod["spec"]["containers"][0]
        ids = {"imageID": "", "containerID": f"docker://{self.container.id}" if self.container else ""}
        self.status[field] = [
            {
                "name": name or spec["name"],
                "image": spec["image"],
                "ready": ready,
                "restartCount": 0,
                "state": state,
                **ids,
            }
        ]

    # -- the pod's life ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._schedule() and self._create():
                self._watch()
        except Exception as exc:  # noqa: BLE001 - a fake kubelet reports, never crashes
            self._condition("Ready", False)
            self._write(phase="Failed", reason="FakeKubeletError", message=str(exc))

    def _schedule(self) -> bool:
        """Bind the pod once it fits the node; until then it stays Pending, Unschedulable."""
        requests = self.pod["spec"]["containers"][0].get("resources", {}).get("requests", {})
        told = False
        while parse_quantity(requests.get("memory", "0")) > self.kubelet.node_memory:
            if not told:
                self._condition(
                    "PodScheduled", False, "Unschedulable", "0/1 nodes are available: 1 Insufficient memory."
                )
                self._write()
                told = True
            if self._stopped.wait(0.2):
                return False
        self._condition("PodScheduled", True)
        self._container_state({"waiting": {"reason": "ContainerCreating"}})
        self._write()
        return True

    def _create(self) -> bool:
        from docker.errors import ImageNotFound

        spec = self.pod["spec"]
        inits, container = spec.get("initContainers") or [], spec["containers"][0]
        try:
            self.kubelet.docker.images.get(container["image"])
        except ImageNotFound:
            # A real kubelet pulls the init containers' images first, and reports them there.
            field = "initContainerStatuses" if inits else "containerStatuses"
            message = f'Failed to pull image "{container["image"]}": not found (the fake kubelet never pulls)'
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                self._container_state({"waiting": {"reason": reason, "message": message}}, field=field)
                self._write()
                if self._stopped.wait(0.5):
                    break
            return False
        for init in inits:
            if not self._run_init(spec, init):
                return False
        kwargs = self._docker_args(spec, container)
        if kwargs is None:
            return False
        self.container = self.kubelet.docker.containers.create(container["image"], **kwargs)
        if self._stopped.is_set():
            return False
        self.container.start()
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"]
        ip = next(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
        self.started = time.monotonic()
        self._container_state({"running": {"startedAt": _now()}})
        self._write(phase="Running", podIP=ip, podIPs=[{"ip": ip}], startTime=_now())
        return True

    def _run_init(self, spec: dict[str, Any], init: dict[str, Any]) -> bool:
        """Run one init container to completion; False (pod Failed) if it fails."""
        self._container_state({"waiting": {"reason": "PodInitializing"}})
        self._write()
        kwargs = self._docker_args(spec, init)
        if kwargs is None:
            return False
        kwargs.update(entrypoint=init.get("command"), command=init.get("args"))
        runner = self.kubelet.docker.containers.create(init["image"], **kwargs)
        try:
            runner.start()
            code = runner.wait(timeout=60)["StatusCode"]
            output = runner.logs(tail=5).decode("utf-8", "replace")
        finally:
            runner.remove(force=True)
        if code == 0:
            return True
        self._container_state(
            {"terminated": {"exitCode": code, "reason": "Error", "message": output}},
            field="initContainerStatuses",
            name=init["name"],
        )
        self._condition("Ready", False, "PodFailed")
        self._write(phase="Failed")
        return False

    def _docker_args(self, spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any] | None:
        pod_ctx = spec.get("securityContext") or {}
        ctx = container.get("securityContext") or {}
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            env[var["name"]] = self._secret_value(ref["name"], ref["key"]) if ref else var.get("value", "")
        volumes, tmpfs, shm = {}, {}, None
        limits = (container.get("resources") or {}).get("limits") or {}
        memory_limit = parse_quantity(limits.get("memory") or "1Ei")
        sources = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            source = sources[mount["name"]]
            if "secret" in source:
                path = self._secret_dir(source["secret"], pod_ctx.get("fsGroup"))
                if path is None:
                    return None
                volumes[path] = {"bind": mount["mountPath"], "mode": "ro"}
            elif "emptyDir" in source and self._shared_with_init(mount["name"]):
                volumes[self._empty_dir(mount["name"])] = {"bind": mount["mountPath"], "mode": "rw"}
            elif "emptyDir" in source and source["emptyDir"].get("medium") != "Memory":
                # A disk emptyDir: no size of its own; the eviction check watches its usage.
                volumes[self._empty_dir(mount["name"])] = {"bind": mount["mountPath"], "mode": "rw"}
            elif "emptyDir" in source:
                # tmpfs sized min(sizeLimit, the memory limit), as SizeMemoryBackedVolumes does.
                size = min(parse_quantity(source["emptyDir"].get("sizeLimit") or "1Ei"), memory_limit)
                if mount["mountPath"] == "/dev/shm":
                    shm = int(size)
                    continue
                owner = f",uid={uid},gid={pod_ctx.get('fsGroup', gid)}" if uid is not None else ""
                tmpfs[mount["mountPath"]] = f"rw,exec,mode=1777{owner},size={int(size)}"
        kwargs: dict[str, Any] = {
            "detach": True,
            "hostname": spec.get("hostname") or self.key[1],
            "environment": env,
            "tmpfs": tmpfs,
            "volumes": volumes,
            "labels": {**self.kubelet.labels, "io.enclave-tools.fake-pod": "/".join(self.key)},
            "network": self._network(),
            "working_dir": container.get("workingDir"),
            "read_only": bool(ctx.get("readOnlyRootFilesystem")),
            "cap_drop": (ctx.get("capabilities") or {}).get("drop") or None,
            "security_opt": ["no-new-privileges"] if ctx.get("allowPrivilegeEscalation") is False else None,
        }
        if spec.get("shareProcessNamespace"):
            kwargs["init"] = True  # the pause container as PID 1, approximated by Docker's init
        if uid is not None:
            kwargs["user"] = f"{uid}:{gid}"
        if shm:
            kwargs["shm_size"] = shm
        if "memory" in limits:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = int(parse_quantity(limits["memory"]))
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(parse_quantity(limits["cpu"]) * 1e9)
        return kwargs

    def _network(self) -> str:
        """The default bridge, or the internal network if a NetworkPolicy denies all egress."""
        labels = self.pod["metadata"].get("labels") or {}
        for policy in self.server.list("networkpolicies"):
            spec = policy.get("spec") or {}
            selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
            same_namespace = policy["metadata"].get("namespace") == self.key[0]
            if (
                same_namespace
                and all(labels.get(k) == v for k, v in selector.items())
                and "Egress" in (spec.get("policyTypes") or [])
                and not spec.get("egress")
            ):
                return self.kubelet.deny_egress_network()
        return "bridge"

    def _shared_with_init(self, volume: str) -> bool:
        inits = self.pod["spec"].get("initContainers") or []
        return any(m["name"] == volume for init in inits for m in init.get("volumeMounts") or [])

    def _empty_dir(self, volume: str) -> str:
        """A host directory standing in for an emptyDir that init containers share."""
        if volume not in self._empty_dirs:
            path = tempfile.mkdtemp(prefix="fake-kubelet-emptydir-")
            os.chmod(path, 0o777)  # as a kubelet makes an emptyDir
            self._dirs.append(path)
            self._empty_dirs[volume] = path
        return self._empty_dirs[volume]

    def _secret(self, name: str) -> dict[str, Any] | None:
        """The secret, waiting a little for it as a kubelet does (then CreateContainerConfigError)."""
        for _ in range(50):
            secret = self.server.get("secrets", self.key[0], name)
            if secret is not None or self._stopped.wait(0.1):
                return secret
        self._container_state(
            {"waiting": {"reason": "CreateContainerConfigError", "message": f'secret "{name}" not found'}}
        )
        self._write()
        return None

    def _secret_value(self, name: str, key: str) -> str:
        import base64

        secret = self._secret(name) or {"data": {}}
        return base64.b64decode(secret["data"].get(key, "")).decode()

    def _secret_dir(self, source: dict[str, Any], fs_group: int | None) -> str | None:
        import base64

        secret = self._secret(source["secretName"])
        if secret is None:
            return None
        path = tempfile.mkdtemp(prefix="fake-kubelet-secret-")
        self._dirs.append(path)
        os.chmod(path, 0o755)
        mode = source.get("defaultMode", 0o644)
        for key, value in (secret.get("data") or {}).items():
            file = os.path.join(path, key)
            with open(file, "wb") as handle:
                handle.write(base64.b64decode(value))
            if fs_group is not None and os.geteuid() == 0:
                os.chown(file, 0, fs_group)
            else:
                mode |= 0o004  # not root here: let the container's user read it
            os.chmod(file, mode)
        return path

    def _watch(self) -> None:
        """Probe readiness, then follow the container until it exits or the deadline passes."""
        container_spec = self.pod["spec"]["containers"][0]
        probe_port = ((container_spec.get("readinessProbe") or {}).get("tcpSocket") or {}).get("port")
        ready = probe_port is None
        if ready:
            self._condition("Ready", True)
            self._write()
        else:
            self._condition("Ready", False, "ContainersNotReady", "containers with unready status: [gateway]")
            self._write()
        while not self._stopped.wait(0.1):
            deadline = self._deadline()
            if deadline is not None and time.monotonic() - self.started > deadline:
                self._kill()
                self._condition("Ready", False, "PodFailed")
                self._write(
                    phase="Failed",
                    reason="DeadlineExceeded",
                    message="Pod was active on the node longer than the specified deadline",
                )
                return
            over = self._empty_dir_over_limit()
            if over:
                self._kill()
                self._container_state(
                    {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": _now()}}
                )
                self._condition("Ready", False, "PodFailed")
                self._write(phase="Failed", reason="Evicted", message=over)
                return
            self.container.reload()
            state = self.container.attrs["State"]
            if not state["Running"]:
                oom = state.get("OOMKilled")
                code = state.get("ExitCode")
                self._container_state(
                    {
                        "terminated": {
                            "exitCode": code,
                            "reason": "OOMKilled" if oom else ("Completed" if code == 0 else "Error"),
                            "finishedAt": _now(),
                        }
                    }
                )
                self._condition("Ready", False, "PodFailed")
                self._write(phase="Succeeded" if code == 0 else "Failed")
                return
            if not ready and self._port_open(probe_port):
                ready = True
                self._container_state({"running": {"startedAt": _now()}}, ready=True)
                self._condition("ContainersReady", True)
                self._condition("Ready", True)
                self._write()

    def _deadline(self) -> int | None:
        """The pod's activeDeadlineSeconds as it is now (a patch may have lowered it)."""
        pod = self.server.get("pods", *self.key)
        spec = (pod or self.pod)["spec"]
        return spec.get("activeDeadlineSeconds")

    def _empty_dir_over_limit(self) -> str:
        """The eviction message if a disk emptyDir holds more than its sizeLimit, else ''."""
        for volume in self.pod["spec"].get("volumes") or []:
            source = volume.get("emptyDir")
            path = self._empty_dirs.get(volume["name"])
            if (
                source is None
                or source.get("medium") == "Memory"
                or not source.get("sizeLimit")
                or path is None
            ):
                continue
            used = 0
            for root, _, files in os.walk(path):
                for file in files:
                    try:
                        used += os.lstat(os.path.join(root, file)).st_blocks * 512
                    except OSError:
                        pass
            if used > parse_quantity(source["sizeLimit"]):
                return (
                    f'Usage of EmptyDir volume "{volume["name"]}" exceeds the limit "{source["sizeLimit"]}". '
                )
        return ""

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.status["podIP"], port), timeout=0.5):
                return True
        except OSError:
            return False

    def _kill(self) -> None:
        try:
            self.container.kill()
        except Exception:  # noqa: BLE001, S110 - already stopped
            pass

    def _remove_container(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
