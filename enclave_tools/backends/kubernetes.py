"""Sandboxes as Kubernetes pods: one pod per sandbox, running the same kernel image.

Needs the ``kubernetes`` extra (``pip install "enclave-tools[kubernetes]"``)::

    from enclave_tools import Sandbox
    from enclave_tools.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(namespace="sandboxes", image="registry.example/enclave-kernel:1")
    with Sandbox(backend=backend) as sb:
        sb.run("1 + 1")

What a pod gets (see :func:`pod_manifest`): the per-sandbox token in a Secret, mounted as a
file (never on a command line); requests = limits from :class:`SandboxConfig`; non-root, no
privilege escalation, every capability dropped, a read-only root filesystem; no
service-account token; ``activeDeadlineSeconds`` as a server-side lifetime, so a crashed
client cannot leak running pods; labels naming the owner and the sandbox.

How the host reaches the gateway (``connect``):

* ``"pod_ip"``: straight to the pod IP (the client runs inside the cluster);
* ``"port_forward"``: through the API server's port-forward (a laptop, CI);
* ``"url"``: a ``url_template`` such as ``"https://{name}.sandboxes.example"`` (fields:
  ``name``, ``namespace``, ``pod_ip``, ``sandbox_id``);
* ``"auto"`` (default): ``"pod_ip"`` inside a cluster, ``"port_forward"`` outside.

Exception tree mapping: a pod that cannot start (image pull errors, unschedulable, a failed
container) raises :class:`SandboxStartFailed`; a pod deleted or past its deadline is reported
"not running", so the Sandbox raises :class:`SandboxDied` as it does on Docker.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from enclave_tools.backends.base import ContainerState, SandboxHandle
from enclave_tools.backends.docker import process_start_time
from enclave_tools.backends.remote import endpoint_from_url
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import SandboxStartFailed
from enclave_tools.transport import Endpoint

__all__ = ["KubernetesBackend", "PodState", "PortForwardEndpoint", "pod_manifest"]

log = logging.getLogger(__name__)

PREFIX = "io.enclave-tools/"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "enclave-tools"
SANDBOX = PREFIX + "sandbox"
OWNER = PREFIX + "owner"
POOL = PREFIX + "pool"
POOL_KEY = PREFIX + "pool-key"
EGRESS = PREFIX + "egress"
EXPIRES = PREFIX + "expires-at"
OWNER_HOST = PREFIX + "owner-host"
OWNER_PID = PREFIX + "owner-pid"
OWNER_START = PREFIX + "owner-start"
GATEWAY_PORT = 8888
SANDBOX_UID = 10001
TOKEN_DIR = "/run/enclave"
SECRET_DIR = "/run/enclave-secret"
NETWORK_POLICY = "enclave-tools-deny-egress"
START_FAILURES = {
    "ErrImagePull": "the image could not be pulled",
    "ImagePullBackOff": "the image could not be pulled",
    "InvalidImageName": "the image name is invalid",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "the container's configuration is invalid",
    "CreateContainerError": "the container could not be created",
    "RunContainerError": "the container could not be run",
}
_RETRYABLE = {429, 500, 502, 503, 504}


def _k8s() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise SandboxStartFailed(
            "the Kubernetes backend needs the 'kubernetes' package: "
            'pip install "enclave-tools[kubernetes]"'
        ) from exc
    return kubernetes


def quantity(size: str) -> str:
    """A SandboxConfig size ('2g', '512m', '100') as a Kubernetes quantity ('2Gi', '512Mi')."""
    unit = size[-1].lower()
    if unit in "kmg":
        return f"{size[:-1]}{unit.upper()}i"
    return size.rstrip("bB")


def _label_value(text: str) -> str:
    """``text`` as a valid label value (63 chars of [A-Za-z0-9._-], alphanumeric ends)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:63]
    return cleaned.strip("._-") or "unknown"


def default_owner() -> str:
    """``user.host`` of this process, as a label value."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return _label_value(f"{user}.{socket.gethostname()}")


def pool_key(config: SandboxConfig, image: str, extra: dict[str, Any]) -> str:
    """A short hash of everything in a pod that depends on the config, so that a sandbox only
    takes a warm pod made for the same settings."""
    wanted = {"config": config.model_dump(mode="json", exclude={"timeout", "labels"}),
              "image": image, **extra}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def pod_manifest(
    config: SandboxConfig,
    *,
    name: str,
    image: str,
    secret: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    max_lifetime: int,
    runtime_class: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Pod for one sandbox, as a plain dict (``overrides`` is merged in last, so a cluster
    admin can add nodeSelector, tolerations, imagePullSecrets...)."""
    limits = {"cpu": f"{int(config.cpus * 1000)}m", "memory": quantity(config.memory)}
    env = [
        {"name": "ENCLAVE_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
        {"name": "ENCLAVE_KERNEL_ENV", "value": ",".join(config.env)},
        *({"name": key, "value": value} for key, value in config.env.items()),
    ]

    def scratch(name: str, size: str, **more: str) -> dict[str, Any]:
        return {"name": name, "emptyDir": {"sizeLimit": quantity(size), **more}}

    hardened = {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True, "runAsNonRoot": True, "privileged": False,
    }
    resources = {"requests": dict(limits), "limits": limits}

    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": max_lifetime,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostname": "sandbox",
        # The pause container becomes PID 1 and reaps zombies (Docker's --init); with the
        # gateway as PID 1, kernel restarts fail now and then.
        "shareProcessNamespace": True,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID, "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The token reaches the gateway as a file it deletes once read, as on Docker: an
        # init container copies it out of the (read-only) Secret volume into memory, and
        # the gateway's container never mounts the Secret.
        "initContainers": [{
            "name": "token",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["cp", f"{SECRET_DIR}/token", f"{TOKEN_DIR}/token"],
            "resources": resources,
            "securityContext": hardened,
            "volumeMounts": [
                {"name": "token-secret", "mountPath": SECRET_DIR, "readOnly": True},
                {"name": "token", "mountPath": TOKEN_DIR},
            ],
        }],
        "containers": [{
            "name": "gateway",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "gateway", "containerPort": GATEWAY_PORT}],
            "env": env,
            "workingDir": config.workdir,
            "resources": resources,
            "securityContext": hardened,
            # The gateway's HTTP API wants the token, so the kubelet probes the port; the
            # client then checks that the gateway answers before it uses the pod.
            "readinessProbe": {"tcpSocket": {"port": GATEWAY_PORT}, "periodSeconds": 1},
            "volumeMounts": [
                {"name": "token", "mountPath": TOKEN_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "home", "mountPath": "/home/sandbox"},
                {"name": "workspace", "mountPath": config.workdir},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
        }],
        "volumes": [
            {"name": "token-secret", "secret": {"secretName": secret, "defaultMode": 0o440}},
            scratch("token", "1m", medium="Memory"),
            scratch("tmp", config.tmp_size),
            scratch("home", "64m"),
            scratch("workspace", config.workspace_size),
            scratch("shm", config.shm_size, medium="Memory"),
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }
    return _merge(pod, overrides or {})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` deep-merged into ``base`` (dicts merge, anything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def network_policy_manifest() -> dict[str, Any]:
    """A NetworkPolicy denying all egress to sandbox pods made with ``network='none'``."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, "labels": {MANAGED_BY: MANAGER}},
        "spec": {"podSelector": {"matchLabels": {MANAGED_BY: MANAGER, EGRESS: "deny"}},
                 "policyTypes": ["Egress"], "egress": []},
    }


@dataclass
class PodState(ContainerState):
    """A sandbox pod's state, described in pod terms."""

    reason: str = ""

    def describe(self) -> str:
        """A sentence on how the pod ended."""
        if not self.exists:
            return "its pod was deleted"
        if self.running:
            return "its pod is running"
        if self.reason == "DeadlineExceeded":
            return "its pod reached its time limit (activeDeadlineSeconds) and was stopped"
        if self.oom_killed:
            return "its pod ran out of memory"
        if self.exit_code is not None:
            return f"its pod's container stopped with exit code {self.exit_code}"
        return f"its pod is not running ({self.reason or self.error or 'unknown reason'})"


@dataclass(frozen=True)
class PortForwardEndpoint(Endpoint):
    """An endpoint reached through the API server's port-forward to a pod."""

    pod: str = ""
    namespace: str = ""
    api: Any = field(default=None, compare=False, repr=False)

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new stream to the pod's gateway port (one port-forward per connection)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        try:
            forward = portforward(self.api.connect_get_namespaced_pod_portforward, self.pod,
                                  self.namespace, ports=str(GATEWAY_PORT))
        except ApiException as exc:
            raise ConnectionError(f"port-forward to pod {self.pod} failed: {exc.reason}") from exc
        sock = forward.socket(GATEWAY_PORT)
        sock = getattr(sock, "_socket", sock)  # newer clients wrap the real socket
        sock.settimeout(timeout)
        return sock

    @property
    def netloc(self) -> str:
        """The ``Host`` header value."""
        return f"{self.pod}:{GATEWAY_PORT}"

    def describe(self) -> str:
        """Where it is, for messages."""
        return f"port-forward to {self.namespace}/{self.pod}:{GATEWAY_PORT}"


class KubernetesBackend:
    """Runs each sandbox in its own pod (see the module docstring).

    ``api_client`` (a ``kubernetes.client.ApiClient``) or ``context`` (a kubeconfig context)
    say which cluster; by default the in-cluster config, else the current kubeconfig context.
    ``image`` overrides ``SandboxConfig.image`` (a cluster pulls from a registry; the
    default image is built locally). ``max_lifetime`` seconds become the pod's
    ``activeDeadlineSeconds``. ``pool_size`` warm pods wait, per config, to be claimed.
    ``network_policy=True`` makes sure the default-deny egress NetworkPolicy exists.
    """

    name = "kubernetes"

    def __init__(
        self,
        namespace: str = "default",
        *,
        api_client: Any = None,
        context: str | None = None,
        image: str | None = None,
        connect: str = "auto",
        url_template: str | None = None,
        runtime_class: str | None = None,
        max_lifetime: int = 3600,
        pool_size: int = 0,
        owner: str | None = None,
        network_policy: bool = False,
        pod_overrides: dict[str, Any] | None = None,
        verify: bool | str = True,
    ) -> None:
        if connect not in ("auto", "pod_ip", "port_forward", "url"):
            raise ValueError("connect must be 'auto', 'pod_ip', 'port_forward' or 'url'")
        if (connect == "url") != bool(url_template):
            raise ValueError("connect='url' goes with a url_template, and only then")
        self.namespace = namespace
        self.image = image
        self.url_template = url_template
        self.runtime_class = runtime_class
        self.max_lifetime = max_lifetime
        self.pool_size = pool_size
        self.owner = _label_value(owner) if owner else default_owner()
        self.network_policy = network_policy
        self.pod_overrides = pod_overrides or {}
        self.verify = verify
        self._api_client = api_client
        self._context = context
        self._connect = connect
        self._in_cluster = False
        self._policy_done = False
        self._lock = threading.Lock()

    # -- the API ------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """The CoreV1Api (configured on first use)."""
        k8s = _k8s()
        with self._lock:
            if self._api_client is None:
                try:
                    k8s.config.load_incluster_config()
                    self._in_cluster = True
                    self._api_client = k8s.client.ApiClient()
                except k8s.config.ConfigException:
                    self._api_client = k8s.config.new_client_from_config(context=self._context)
        return k8s.client.CoreV1Api(self._api_client)

    @property
    def connect_mode(self) -> str:
        """How the host reaches a pod: 'pod_ip', 'port_forward' or 'url'."""
        if self._connect != "auto":
            return self._connect
        self.api  # noqa: B018 - loads the config, which tells whether we run in a cluster
        return "pod_ip" if self._in_cluster else "port_forward"

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method`` with its answer as plain JSON, retried on 429 and 5xx."""
        from kubernetes.client.exceptions import ApiException

        for pause in (0.1, 0.3, 0.9, None):
            try:
                response = method(*args, _preload_content=False, **kwargs)
                return json.loads(response.data or b"null")
            except ApiException as exc:
                if exc.status not in _RETRYABLE or pause is None:
                    raise
                log.debug("Kubernetes API answered %s; retrying", exc.status)
                time.sleep(pause)
        raise AssertionError("unreachable")

    # -- the Backend protocol ---------------------------------------------------------

    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Claim a warm pod or create one, wait until it is Ready, return how to reach it."""
        from kubernetes.client.exceptions import ApiException

        self.reap_orphans_quietly()
        try:
            self._ensure_network_policy()
            pod = self._claim(config, sandbox_id) if self.pool_size else None
            if pod is None:
                pod = self._create(config, sandbox_id, idle=False)
        except ApiException as exc:
            raise SandboxStartFailed(f"the Kubernetes API refused the sandbox pod: {_api_reason(exc)}") from exc
        name = pod["metadata"]["name"]
        try:
            if self.pool_size:
                self._refill_quietly(config)  # the new idle pods start while we wait for ours
            pod = self._wait_ready(name, config.startup_timeout)
            token = self._token(pod)
            endpoint = self._endpoint(pod, token, sandbox_id)
        except BaseException:
            self._delete(name)
            raise
        return SandboxHandle(name, f"{self.namespace}/{name}", endpoint)

    def state(self, handle: SandboxHandle) -> PodState:
        """The pod's state now; an API that does not answer is "still running" (unknown is
        not dead)."""
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self._call(self.api.read_namespaced_pod, handle.container_id, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return PodState(running=False, exists=False)
            return PodState(running=True, exists=True, error=_api_reason(exc))
        return pod_state(pod)

    def wait_stopped(self, handle: SandboxHandle, timeout: float) -> PodState:
        """Wait up to ``timeout`` seconds for the pod to stop; return its state then."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(handle)
            if not state.running or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)

    def logs(self, handle: SandboxHandle, lines: int = 30) -> str:
        """The last lines the gateway printed."""
        try:
            response = self.api.read_namespaced_pod_log(
                handle.container_id, self.namespace, container="gateway", tail_lines=lines,
                _preload_content=False,
            )
            return response.data.decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - best effort, for error messages
            return ""

    def remove(self, handle: SandboxHandle) -> None:
        """Delete the pod and its Secret."""
        self._delete(handle.container_id)

    def reap_orphans(self) -> int:
        """Delete this backend's pods that ended (deadline, crash), passed their expiry, or
        whose owner process on this host is gone; return how many."""
        removed = 0
        listing = self._call(self.api.list_namespaced_pod, self.namespace,
                             label_selector=f"{MANAGED_BY}={MANAGER}")
        for pod in listing.get("items", []):
            if _orphaned(pod):
                self._delete(pod["metadata"]["name"])
                removed += 1
        return removed

    def reap_orphans_quietly(self) -> None:
        """:meth:`reap_orphans`, never failing a start because of it."""
        try:
            self.reap_orphans()
        except Exception as exc:  # noqa: BLE001 - cleanup must never break a start
            log.debug("reaping orphan pods failed: %s", exc)

    # -- warm pool ----------------------------------------------------------------------

    def fill_pool(self, config: SandboxConfig) -> int:
        """Create idle pods for ``config`` until ``pool_size`` wait; return how many were made."""
        selector = f"{MANAGED_BY}={MANAGER},{POOL}=idle,{POOL_KEY}={self._pool_key(config)}"
        idle = self._call(self.api.list_namespaced_pod, self.namespace, label_selector=selector)
        waiting = [p for p in idle.get("items", []) if not _terminal(p)]
        made = 0
        for _ in range(self.pool_size - len(waiting)):
            self._create(config, secrets.token_hex(6), idle=True)
            made += 1
        return made

    def _refill_quietly(self, config: SandboxConfig) -> None:
        try:
            self.fill_pool(config)
        except Exception as exc:  # noqa: BLE001 - a short pool must never fail a start
            log.warning("could not refill the warm pool: %s", exc)

    def drain_pool(self) -> int:
        """Delete every idle pod of this owner; return how many."""
        selector = f"{MANAGED_BY}={MANAGER},{POOL}=idle,{OWNER}={self.owner}"
        idle = self._call(self.api.list_namespaced_pod, self.namespace, label_selector=selector)
        for pod in idle.get("items", []):
            self._delete(pod["metadata"]["name"])
        return len(idle.get("items", []))

    def _claim(self, config: SandboxConfig, sandbox_id: str) -> dict[str, Any] | None:
        """Take one idle, ready pod for ``config``: a patch under the pod's resourceVersion,
        so two clients never take the same pod (the loser gets 409 and tries the next)."""
        selector = f"{MANAGED_BY}={MANAGER},{POOL}=idle,{POOL_KEY}={self._pool_key(config)}"
        idle = self._call(self.api.list_namespaced_pod, self.namespace, label_selector=selector)
        candidates = sorted(idle.get("items", []), key=lambda p: not _ready(p))
        for pod in candidates:
            if _terminal(pod):
                continue
            claimed = self.try_claim(pod, sandbox_id)
            if claimed is not None:
                return claimed
        return None

    def try_claim(self, pod: dict[str, Any], sandbox_id: str) -> dict[str, Any] | None:
        """Claim ``pod`` as its ``resourceVersion`` says it was; None if another client won."""
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        patch = {"metadata": {
            "resourceVersion": meta["resourceVersion"],
            "labels": {POOL: "claimed", SANDBOX: sandbox_id, OWNER: self.owner},
            "annotations": self._owner_annotations(),
        }}
        try:
            return self._call(self.api.patch_namespaced_pod, meta["name"], self.namespace, patch)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise

    def _pool_key(self, config: SandboxConfig) -> str:
        return pool_key(config, self._image(config), {
            "runtime_class": self.runtime_class, "overrides": self.pod_overrides,
            "max_lifetime": self.max_lifetime,
        })

    # -- internals ----------------------------------------------------------------------

    def _image(self, config: SandboxConfig) -> str:
        if self.image or config.image:
            return self.image or config.image
        from enclave_tools.image import default_image

        return default_image()

    def _owner_annotations(self) -> dict[str, str]:
        pid = os.getpid()
        return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(pid), OWNER_START: process_start_time(pid) or ""}

    def _create(self, config: SandboxConfig, sandbox_id: str, *, idle: bool) -> dict[str, Any]:
        """Create the Secret and the Pod of one sandbox (or one idle pool pod). Names are
        unique per pod: a replacement must not wait for its predecessor to terminate."""
        name = f"enclave-{sandbox_id}-{secrets.token_hex(3)}"
        labels = {
            **{key: _label_value(value) for key, value in config.labels.items()},
            MANAGED_BY: MANAGER, SANDBOX: sandbox_id, OWNER: self.owner,
            EGRESS: "allow" if config.egress else "deny",
        }
        if self.pool_size:
            labels.update({POOL: "idle" if idle else "claimed", POOL_KEY: self._pool_key(config)})
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {MANAGED_BY: MANAGER, SANDBOX: sandbox_id}},
            "stringData": {"token": secrets.token_urlsafe(32)},
        }
        self._call(self.api.create_namespaced_secret, self.namespace, secret)
        expires = (datetime.now(UTC) + timedelta(seconds=self.max_lifetime)).isoformat(timespec="seconds")
        manifest = pod_manifest(
            config, name=name, image=self._image(config), secret=name, labels=labels,
            annotations={**self._owner_annotations(), EXPIRES: expires}, max_lifetime=self.max_lifetime,
            runtime_class=self.runtime_class, overrides=self.pod_overrides,
        )
        try:
            pod = self._call(self.api.create_namespaced_pod, self.namespace, manifest)
        except BaseException:
            self._delete_secret(name)
            raise
        # The Secret goes with its pod, whoever deletes the pod (the garbage collector).
        owner_ref = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
        try:
            self._call(self.api.patch_namespaced_secret, name, self.namespace,
                       {"metadata": {"ownerReferences": [owner_ref]}})
        except Exception as exc:  # noqa: BLE001 - explicit delete and the reaper remain
            log.debug("could not tie secret %s to its pod: %s", name, exc)
        return pod

    def _wait_ready(self, name: str, timeout: float) -> dict[str, Any]:
        """Watch the pod until its Ready condition is true; raise SandboxStartFailed when it
        cannot start, is deleted, or is not ready within ``timeout`` seconds."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout
        pod = self._read(name)
        while True:
            if _check_start(pod):
                return pod
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxStartFailed(
                    f"pod {self.namespace}/{name} was not ready within {timeout:.0f} s "
                    f"({_pending_reason(pod)})"
                )
            try:
                for event in watch.Watch().stream(
                    self.api.list_namespaced_pod, self.namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=pod["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, math.ceil(remaining)),
                ):
                    if event["type"] == "DELETED":
                        raise SandboxStartFailed(f"pod {self.namespace}/{name} was deleted while starting")
                    pod = event["raw_object"]
                    if _check_start(pod):
                        return pod
            except ApiException as exc:
                if exc.status != 410 and exc.status not in _RETRYABLE:
                    raise SandboxStartFailed(
                        f"watching pod {self.namespace}/{name} failed: {_api_reason(exc)}"
                    ) from exc
                log.debug("watch of %s ended with %s; reading the pod again", name, exc.status)
            pod = self._read(name)

    def _read(self, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self.api.read_namespaced_pod, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SandboxStartFailed(f"pod {self.namespace}/{name} was deleted while starting") from exc
            raise SandboxStartFailed(f"reading pod {self.namespace}/{name} failed: {_api_reason(exc)}") from exc

    def _token(self, pod: dict[str, Any]) -> str:
        import base64

        secret_name = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if v["name"] == "token-secret")
        secret = self._call(self.api.read_namespaced_secret, secret_name, self.namespace)
        return base64.b64decode(secret["data"]["token"]).decode()

    def _endpoint(self, pod: dict[str, Any], token: str, sandbox_id: str) -> Endpoint:
        name, pod_ip = pod["metadata"]["name"], pod["status"].get("podIP", "")
        mode = self.connect_mode
        if mode == "pod_ip":
            return Endpoint(token=token, host=pod_ip, port=GATEWAY_PORT)
        if mode == "port_forward":
            return PortForwardEndpoint(token=token, pod=name, namespace=self.namespace, api=self.api)
        url = self.url_template.format(name=name, namespace=self.namespace, pod_ip=pod_ip,
                                       sandbox_id=sandbox_id)
        return endpoint_from_url(url, token, self.verify)

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(self.api.delete_namespaced_pod, name, self.namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete pod %s: %s", name, _api_reason(exc))
        self._delete_secret(name)

    def _delete_secret(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(self.api.delete_namespaced_secret, name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete secret %s: %s", name, _api_reason(exc))

    def _ensure_network_policy(self) -> None:
        if not self.network_policy or self._policy_done:
            return
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(client.NetworkingV1Api(self._api_client).create_namespaced_network_policy,
                       self.namespace, network_policy_manifest())
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._policy_done = True


# -- reading pod status -------------------------------------------------------------------


def _conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}


def _ready(pod: dict[str, Any]) -> bool:
    return _conditions(pod).get("Ready", {}).get("status") == "True"


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def _check_start(pod: dict[str, Any]) -> bool:
    """Whether the pod is ready; raises SandboxStartFailed if it never will be."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    if _ready(pod) and status.get("podIP"):
        return True
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if reason in START_FAILURES:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            raise SandboxStartFailed(f"pod {name} cannot start: {START_FAILURES[reason]} ({reason}{detail})")
        code = (state.get("terminated") or {}).get("exitCode")
        if code:
            raise SandboxStartFailed(
                f"pod {name} cannot start: its container {container.get('name')!r} exited with code {code}"
            )
    scheduled = _conditions(pod).get("PodScheduled", {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        raise SandboxStartFailed(f"pod {name} cannot be scheduled: {scheduled.get('message', '')}")
    if _terminal(pod):
        raise SandboxStartFailed(f"pod {name} stopped while starting: {pod_state(pod).describe()}")
    return False


def _pending_reason(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    return waiting.get("reason") or status.get("reason") or f"phase {status.get('phase', 'unknown')}"


def pod_state(pod: dict[str, Any]) -> PodState:
    """A pod's status as a PodState."""
    status = pod.get("status") or {}
    running_container = "running" in (_container_status(pod).get("state") or {})
    if status.get("phase") == "Running" and running_container and not pod["metadata"].get("deletionTimestamp"):
        return PodState(running=True, exists=True)
    terminated = (_container_status(pod).get("state") or {}).get("terminated") or {}
    return PodState(
        running=False, exists=True, exit_code=terminated.get("exitCode"),
        oom_killed=terminated.get("reason") == "OOMKilled",
        error=status.get("message", ""), reason=status.get("reason", ""),
    )


def _orphaned(pod: dict[str, Any]) -> bool:
    if _terminal(pod):
        return True
    notes = pod["metadata"].get("annotations") or {}
    try:
        if datetime.fromisoformat(notes[EXPIRES]) < datetime.now(UTC):
            return True
    except (KeyError, ValueError):
        pass
    if notes.get(OWNER_HOST) != socket.gethostname():
        return False  # another machine's pod: its deadline ends it
    try:
        pid = int(notes.get(OWNER_PID, ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        pass
    return bool(notes.get(OWNER_START)) and notes[OWNER_START] != process_start_time(pid)


def _api_reason(exc: Any) -> str:
    try:
        return f"{exc.status} {json.loads(exc.body).get('message')}"
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"
