"""KubernetesBackend: one pod per sandbox, a warm pool with atomic claims, a reaper."""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from enclave_tools.backends.base import Backend, SandboxHandle
from enclave_tools.backends.kubernetes.manifests import (
    EGRESS,
    EXPIRES,
    GATEWAY_PORT,
    MANAGED_BY,
    MANAGER,
    OWNER,
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
    POOL,
    POOL_KEY,
    SANDBOX,
    _label_value,
    default_owner,
    network_policy_manifest,
    pod_manifest,
    pool_key,
)
from enclave_tools.backends.kubernetes.portforward import PortForwardEndpoint
from enclave_tools.backends.kubernetes.status import (
    PodState,
    _check_start,
    _orphaned,
    _pending_reason,
    _ready,
    _terminal,
    pod_state,
)
from enclave_tools.backends.owner import this_owner
from enclave_tools.backends.remote import endpoint_from_url
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import SandboxStartFailed
from enclave_tools.transport import Endpoint

log = logging.getLogger(__name__)

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


class KubernetesBackend(Backend):
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
        host, pid, started = this_owner()
        return {OWNER_HOST: host, OWNER_PID: pid, OWNER_START: started}

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


def _api_reason(exc: Any) -> str:
    try:
        return f"{exc.status} {json.loads(exc.body).get('message')}"
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"
