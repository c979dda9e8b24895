"""KubernetesBackend: one pod per sandbox, a warm pool with atomic claims, a reaper.

The API calls (timeouts, retries, error mapping) live in ``api.py``, the warm pool in
``pool.py``, the egress policy in ``network.py``; this module is the Backend protocol.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enclave_tools.backends.base import (
    AttachHold,
    Backend,
    SandboxExists,
    SandboxHandle,
    SandboxInfo,
    ended_because,
)
from enclave_tools.backends.kubernetes import keepalive
from enclave_tools.backends.kubernetes.api import (
    RETRYABLE,
    WATCH_SLACK,
    KubeApi,
    api_exception,
    api_reason,
    connection_errors,
    k8s,
)
from enclave_tools.backends.kubernetes.keepalive import (
    LEASE_S,
    MAX_LEASE_S,
    check_lease,
    holder_identity,
    is_kept_alive,
    pod_name,
)
from enclave_tools.backends.kubernetes.listing import pod_info
from enclave_tools.backends.kubernetes.manifests import (
    CONFIG,
    CREATE_ID,
    DELETE_GRACE,
    EGRESS,
    EXPIRES,
    GATEWAY_PORT,
    HELD_UNTIL,
    HOLDER,
    KEEP_ALIVE,
    MANAGED_BY,
    MANAGER,
    OWNER,
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
    POOL,
    POOL_KEY,
    SAFE_TO_EVICT,
    SANDBOX,
    _label_value,
    default_owner,
    pod_manifest,
    pool_key,
)
from enclave_tools.backends.kubernetes.network import EgressGuard, policy_mode
from enclave_tools.backends.kubernetes.pool import WarmPool
from enclave_tools.backends.kubernetes.portforward import PortForwardEndpoint
from enclave_tools.backends.kubernetes.status import (
    PodState,
    _check_start,
    _orphaned,
    _pending_reason,
    _ready,
    _terminal,
    pod_state,
    terminating,
)
from enclave_tools.backends.owner import this_owner
from enclave_tools.backends.remote import endpoint_from_url
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import InvalidInput, SandboxGone, SandboxStartFailed
from enclave_tools.registry import Record
from enclave_tools.transport import Endpoint, GatewayHTTP

if TYPE_CHECKING:
    from enclave_tools.kernel import KernelClient

log = logging.getLogger(__name__)

DEADLINE_SLACK = 60
"""Seconds a kept-alive pod's activeDeadlineSeconds exceeds its lifetime: the gateway's
own deadline (counted from its start, after the pod's) ends it first."""
NETWORKS = ("none", "bridge")
"""``SandboxConfig.network`` values a pod can honour: no egress, or egress."""


def unsupported(config: SandboxConfig) -> list[str]:
    """What in ``config`` a pod cannot honour, one sentence each (empty if all is fine)."""
    defaults = SandboxConfig.model_fields
    problems = []
    if config.network not in NETWORKS:
        problems.append(
            f"network={config.network!r} is a Docker network; "
            "pods take 'none' (no egress) or 'bridge' (egress)"
        )
    if config.runtime:
        problems.append(
            f"runtime={config.runtime!r} is a Docker runtime; pass KubernetesBackend(runtime_class=...)"
        )
    if config.transport == "unix":
        problems.append(
            "transport='unix' needs a local Docker engine; a pod is reached over TCP (leave it 'auto')"
        )
    if config.pids_limit != defaults["pids_limit"].default:
        problems.append("pids_limit has no pod field; the node's kubelet sets it (podPidsLimit)")
    return problems


class KubernetesBackend(Backend):
    """Runs each sandbox in its own pod (see the package docstring).

    ``api_client`` (a ``kubernetes.client.ApiClient``) or ``context`` (a kubeconfig context)
    say which cluster; by default the in-cluster config, else the current kubeconfig context.
    ``image`` overrides ``SandboxConfig.image`` (a cluster pulls from a registry; the
    default image is built locally). ``max_lifetime`` seconds become the pod's
    ``activeDeadlineSeconds``. ``pool_size`` warm pods wait, per config, to be claimed.
    ``network_policy`` says how ``network="none"`` is enforced: ``"ensure"`` (default)
    creates the default-deny egress NetworkPolicy if it is missing and refuses to start
    when it cannot; ``"require"`` only checks that an admin applied it; ``"off"`` warns
    that egress is open.

    Kept-alive sandboxes (``keep_alive``; ``Sandbox.connect``, ``SandboxSessions``) live
    in the cluster, not on this host: see :mod:`.keepalive`. ``attach_lease`` is how many
    seconds an attached process's claim lasts unless it renews it (every third; at most
    600 s).
    """

    name = "kubernetes"
    can_attach = True

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
        network_policy: bool | str = "ensure",
        pod_overrides: dict[str, Any] | None = None,
        verify: bool | str = True,
        attach_lease: float = LEASE_S,
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
        self.owner = _label_value(owner) if owner else default_owner()
        self.network_policy = policy_mode(network_policy)
        self.pod_overrides = pod_overrides or {}
        self.verify = verify
        self.kube = KubeApi(api_client, context)
        self.pool = WarmPool(self.kube, namespace, self.owner, pool_size)
        self._egress = EgressGuard(self.kube, namespace, self.network_policy)
        self._connect = connect
        self.attach_lease = check_lease(attach_lease)
        self.holder = holder_identity()
        """Who this process is in the ``attached-by`` annotation of a kept-alive pod."""

    @property
    def pool_size(self) -> int:
        """Idle pods kept warm per configuration."""
        return self.pool.size

    @property
    def api(self) -> Any:
        """The CoreV1Api on the shared client (configured on first use)."""
        return self.kube.core

    @property
    def connect_mode(self) -> str:
        """How the host reaches a pod: 'pod_ip', 'port_forward' or 'url'."""
        if self._connect != "auto":
            return self._connect
        self.kube.client  # noqa: B018 - loads the config, which tells whether we run in a cluster
        return "pod_ip" if self.kube.in_cluster else "port_forward"

    # -- the Backend protocol ---------------------------------------------------------

    def start(
        self, config: SandboxConfig, sandbox_id: str, progress: Callable[[str], None] | None = None
    ) -> SandboxHandle:
        """Claim a warm pod or create one, wait until it is Ready, return how to reach it."""
        problems = unsupported(config)
        if problems:
            raise SandboxStartFailed(
                "the Kubernetes backend cannot honour this config: " + "; ".join(problems)
            )
        ApiException = api_exception()
        self.reap_orphans_quietly()
        try:
            if not config.egress:
                self._egress.check()
            pooled = self.pool_size and config.keep_alive is None  # a kept-alive pod is made for it
            pod = (
                self.pool.claim(self._pool_key(config), sandbox_id, self._owner_annotations())
                if pooled
                else None
            )
            if pod is None:
                pod = (
                    self._create_kept(config, sandbox_id)
                    if config.keep_alive is not None
                    else self._create(config, sandbox_id, idle=False)
                )
        except ApiException as exc:
            raise SandboxStartFailed(
                f"the Kubernetes API refused the sandbox pod: {api_reason(exc)}"
            ) from exc
        except connection_errors() as exc:  # no answer within the client-side timeouts, after retries
            raise SandboxStartFailed(f"the Kubernetes API did not answer: {exc}") from exc
        name = pod["metadata"]["name"]
        try:
            if pooled:
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
        ApiException = api_exception()
        try:
            pod = self.kube.call(self.api.read_namespaced_pod, handle.container_id, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return PodState(running=False, exists=False)
            return PodState(running=True, exists=True, error=api_reason(exc))
        except Exception as exc:  # noqa: BLE001 - a connection that failed or timed out
            return PodState(running=True, exists=True, error=f"the API did not answer: {exc}")
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
                handle.container_id,
                self.namespace,
                container="gateway",
                tail_lines=lines,
                _preload_content=False,
                _request_timeout=self.kube.timeouts,
            )
            return response.data.decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - best effort, for error messages
            return ""

    def remove(self, handle: SandboxHandle) -> None:
        """Delete the pod (with a short grace period) and its Secret."""
        self._delete(handle.container_id)

    def reap_orphans(self, on_removed: Callable[[str], None] | None = None) -> int:
        """Delete this backend's pods that ended (deadline, crash), passed their expiry, or
        whose owner process on this host is gone; return how many (``on_removed`` gets
        each pod's name)."""
        removed = 0
        for pod in self._managed_pods():
            if _orphaned(pod) and not terminating(pod):
                self._delete(pod["metadata"]["name"])
                removed += 1
                if on_removed:
                    on_removed(pod["metadata"]["name"])
        return removed

    def describe_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox pod in the namespace, whoever made it, read from its labels,
        annotations and status (see listing.py)."""
        now = time.time()
        return [pod_info(pod, now) for pod in self._managed_pods()]

    def stop_sandbox(self, info: SandboxInfo) -> None:
        """Delete the pod (whoever is attached) and its Secret; the pod is the record."""
        self._delete(info.container_id, strict=True)

    def _managed_pods(self) -> list[dict[str, Any]]:
        """The pods of enclave-tools in the namespace; SandboxStartFailed if the API refuses
        or does not answer."""
        ApiException = api_exception()
        try:
            listing = self.kube.call(
                self.api.list_namespaced_pod, self.namespace, label_selector=f"{MANAGED_BY}={MANAGER}"
            )
        except ApiException as exc:
            raise SandboxStartFailed(
                f"listing the pods of namespace {self.namespace} failed: {api_reason(exc)}"
            ) from exc
        except connection_errors() as exc:
            raise SandboxStartFailed(f"the Kubernetes API did not answer: {exc}") from exc
        items = listing.get("items") if isinstance(listing, dict) else None
        return [pod for pod in items or [] if isinstance(pod, dict)]

    def reap_orphans_quietly(self) -> None:
        """:meth:`reap_orphans`, never failing a start because of it."""
        try:
            self.reap_orphans()
        except Exception as exc:  # noqa: BLE001 - cleanup must never break a start
            log.debug("reaping orphan pods failed: %s", exc)

    # -- kept-alive sandboxes (see keepalive.py) -----------------------------------------

    def session_sandbox_id(self, key: str) -> str:
        """Session ``key``'s sandbox id in this namespace, the same on every host."""
        return keepalive.session_sandbox_id(self.namespace, key)

    def _kept_pod(self, sandbox_id: str) -> dict[str, Any]:
        """The kept-alive pod of ``sandbox_id``; SandboxGone if there is none."""
        ApiException = api_exception()
        name = pod_name(sandbox_id)
        try:
            pod = self.kube.call(self.api.read_namespaced_pod, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SandboxGone(
                    f"sandbox {sandbox_id} is gone: there is no pod {self.namespace}/{name} (it ended and "
                    "was removed, or was never kept alive in this namespace). Create a new Sandbox."
                ) from None
            raise SandboxStartFailed(
                f"reading pod {self.namespace}/{name} failed: {api_reason(exc)}"
            ) from exc
        except connection_errors() as exc:
            raise SandboxStartFailed(f"the Kubernetes API did not answer: {exc}") from exc
        if not is_kept_alive(pod, sandbox_id):
            raise SandboxGone(
                f"sandbox {sandbox_id} is gone: pod {self.namespace}/{name} is not a kept-alive sandbox"
            )
        return pod

    def load_record(self, sandbox_id: str) -> Record:
        """The record of ``sandbox_id``, read from its pod (labels and annotations; no token)."""
        return keepalive.record_of(self._kept_pod(sandbox_id), sandbox_id, self.namespace)

    def save_record(self, record: Record) -> None:
        """Write ``record`` into its pod's annotations (the kernel id, the config and the
        expiry; never the token, which stays in the Secret)."""
        self.kube.call(
            self.api.patch_namespaced_pod,
            pod_name(record.id),
            self.namespace,
            {"metadata": {"annotations": keepalive.record_annotations(record)}},
        )

    def forget_record(self, sandbox_id: str) -> None:
        """Nothing to do: the pod is the record, and it was deleted."""

    def take_attach(self, sandbox_id: str, wait: float) -> AttachHold:
        """Claim the pod for this process (``attached-by``, compare-and-swap on its
        resourceVersion, renewed while held), waiting up to ``wait`` seconds."""
        try:
            return keepalive.take(self.kube, self.namespace, sandbox_id, self.holder, wait, self.attach_lease)
        except connection_errors() as exc:
            raise SandboxStartFailed(f"the Kubernetes API did not answer: {exc}") from exc

    def creation_lock(self, sandbox_id: str, wait: float) -> AbstractContextManager[None]:
        """None needed: the pod's name is the lock (a second create is refused: SandboxExists)."""
        return contextlib.nullcontext()

    def attach(self, record: Record) -> SandboxHandle:
        """A handle on the running kept-alive pod of ``record``, with the token read from
        its Secret; SandboxGone if the pod has ended or is being deleted."""
        pod = self._kept_pod(record.id)
        name = pod["metadata"]["name"]
        if terminating(pod):
            raise SandboxGone(
                f"sandbox {record.id} is gone: its pod {self.namespace}/{name} is being deleted"
            )
        if _terminal(pod):
            state = pod_state(pod)
            raise SandboxGone(
                f"sandbox {record.id} has ended: {ended_because(state.exit_code, state.describe())}"
            )
        if not _ready(pod):
            pod = self._wait_ready(name, float(record.config.get("startup_timeout") or 60))
        token = self._token(pod, record.id)
        return SandboxHandle(name, f"{self.namespace}/{name}", self._endpoint(pod, token, record.id))

    def remove_expired(self, record: Record) -> None:
        """Delete ``record``'s pod if it has ended (its Secret goes with it)."""
        try:
            pod = self._kept_pod(record.id)
        except SandboxGone:
            return
        if _terminal(pod) and not terminating(pod):
            self._delete(pod["metadata"]["name"])

    def apply_limits(
        self,
        handle: SandboxHandle,
        http: GatewayHTTP,
        kernel: KernelClient,
        idle: float | None,
        lifetime: float | None,
    ) -> Any:
        """The gateway's new limits, kept within the pod's activeDeadlineSeconds: Kubernetes
        lets a running pod's deadline only shrink, so a ``lifetime`` past it is refused
        (InvalidInput, saying how much is left) and a shorter one shrinks it too."""
        wanted = deadline = None
        if lifetime is not None:
            pod = self._read(handle.container_id)
            started = keepalive._epoch((pod.get("status") or {}).get("startTime")) or time.time()
            deadline = pod["spec"].get("activeDeadlineSeconds")
            wanted = math.ceil(time.time() - started + lifetime) + DEADLINE_SLACK
            if deadline is not None and wanted > deadline:
                left = max(int(started + deadline - DEADLINE_SLACK - time.time()), 0)
                raise InvalidInput(
                    f"this sandbox's pod can live {left} s more at most: Kubernetes lets a running "
                    "pod's activeDeadlineSeconds only shrink, never grow. Pass a lifetime of "
                    f"{left} s or less, or create a new sandbox with a longer lifetime."
                )
        limits = super().apply_limits(handle, http, kernel, idle, lifetime)
        if wanted is not None and deadline is not None and wanted < deadline:
            try:
                self.kube.call(
                    self.api.patch_namespaced_pod,
                    handle.container_id,
                    self.namespace,
                    {"spec": {"activeDeadlineSeconds": wanted}},
                )
            except Exception as exc:  # noqa: BLE001 - the gateway's own deadline holds
                log.warning(
                    "could not shorten the deadline of pod %s: %s", handle.container_id, _describe(exc)
                )
        return limits

    # -- warm pool (see pool.py) --------------------------------------------------------

    def fill_pool(self, config: SandboxConfig) -> int:
        """Create idle pods for ``config`` until ``pool_size`` wait; return how many were made."""
        return self.pool.fill(self._pool_key(config), lambda pod_id: self._create(config, pod_id, idle=True))

    def _refill_quietly(self, config: SandboxConfig) -> None:
        try:
            self.fill_pool(config)
        except Exception as exc:  # noqa: BLE001 - a short pool must never fail a start
            log.warning("could not refill the warm pool: %s", exc)

    def drain_pool(self) -> int:
        """Delete every idle pod of this owner; return how many."""
        return self.pool.drain(self._delete)

    def _claim(self, config: SandboxConfig, sandbox_id: str) -> dict[str, Any] | None:
        return self.pool.claim(self._pool_key(config), sandbox_id, self._owner_annotations())

    def try_claim(self, pod: dict[str, Any], sandbox_id: str) -> dict[str, Any] | None:
        """Claim ``pod`` as its ``resourceVersion`` says it was; None if another client won."""
        return self.pool.try_claim(pod, sandbox_id, self._owner_annotations())

    def _pool_key(self, config: SandboxConfig) -> str:
        return pool_key(
            config,
            self._image(config),
            {
                "runtime_class": self.runtime_class,
                "overrides": self.pod_overrides,
                "max_lifetime": self.max_lifetime,
            },
        )

    # -- internals ----------------------------------------------------------------------

    def _image(self, config: SandboxConfig) -> str:
        image = self.image or config.image
        if image:
            return image
        from enclave_tools.image import default_image

        return default_image()

    def _owner_annotations(self) -> dict[str, str]:
        host, pid, started = this_owner()
        return {OWNER_HOST: host, OWNER_PID: pid, OWNER_START: started}

    def _create(self, config: SandboxConfig, sandbox_id: str, *, idle: bool) -> dict[str, Any]:
        """Create the Secret and the Pod of one sandbox (or one idle pool pod). Names are
        unique per pod: a replacement must not wait for its predecessor to terminate.
        Each create carries a random id, so a create retried after its answer was lost
        recognises its own object in the 409."""
        kept = config.keep_alive is not None
        secret_name = f"enclave-{sandbox_id}-{secrets.token_hex(3)}"
        # A kept-alive pod's name is its id's: a second create of it fails (409), so two
        # workers racing to create one session's sandbox end with one.
        name = pod_name(sandbox_id) if kept else secret_name
        create_id = secrets.token_hex(8)
        labels = {
            **{key: _label_value(value) for key, value in config.labels.items()},
            MANAGED_BY: MANAGER,
            SANDBOX: sandbox_id,
            OWNER: self.owner,
            EGRESS: "allow" if config.egress else "deny",
        }
        if kept:
            labels[KEEP_ALIVE] = "1"
        elif self.pool_size:
            labels.update({POOL: "idle" if idle else "claimed", POOL_KEY: self._pool_key(config)})

        def ours(existing: dict[str, Any]) -> bool:
            return (existing["metadata"].get("annotations") or {}).get(CREATE_ID) == create_id

        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name,
                "labels": {MANAGED_BY: MANAGER, SANDBOX: sandbox_id},
                "annotations": {CREATE_ID: create_id},
            },
            "stringData": {"token": secrets.token_urlsafe(32)},
        }
        self.kube.create(
            self.api.create_namespaced_secret, self.api.read_namespaced_secret, self.namespace, secret, ours
        )
        lifetime = self._deadline(config)
        expires = (datetime.now(UTC) + timedelta(seconds=lifetime)).isoformat(timespec="seconds")
        annotations = {
            # A kept-alive pod has no owner process: its expiry and deadline end it.
            **({} if kept else self._owner_annotations()),
            EXPIRES: expires,
            CREATE_ID: create_id,
            SAFE_TO_EVICT: "true" if idle else "false",
        }
        if kept:  # its maker holds it from the start (see keepalive.py); its config is its own
            # Held while it starts; never longer than any claim may last (see keepalive.py).
            claim = time.time() + min(config.startup_timeout + self.attach_lease, MAX_LEASE_S)
            annotations.update(
                {
                    HOLDER: self.holder,
                    HELD_UNTIL: f"{claim:.3f}",
                    CONFIG: json.dumps(config.model_dump(mode="json"), sort_keys=True),
                }
            )
        manifest = pod_manifest(
            config,
            name=name,
            image=self._image(config),
            secret=secret_name,
            labels=labels,
            annotations=annotations,
            max_lifetime=lifetime,
            runtime_class=self.runtime_class,
            overrides=self.pod_overrides,
        )
        try:
            pod = self.kube.create(
                self.api.create_namespaced_pod, self.api.read_namespaced_pod, self.namespace, manifest, ours
            )
        except BaseException:
            self._delete_secret(secret_name)
            raise
        # The Secret goes with its pod, whoever deletes the pod (the garbage collector).
        owner_ref = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
        try:
            self.kube.call(
                self.api.patch_namespaced_secret,
                secret_name,
                self.namespace,
                {"metadata": {"ownerReferences": [owner_ref]}},
            )
        except Exception as exc:  # noqa: BLE001 - explicit delete and the reaper remain
            log.debug("could not tie secret %s to its pod: %s", secret_name, exc)
        return pod

    def _deadline(self, config: SandboxConfig) -> int:
        """The pod's activeDeadlineSeconds: ``max_lifetime``, or a kept-alive sandbox's own
        lifetime plus :data:`DEADLINE_SLACK`."""
        if config.keep_alive is None:
            return self.max_lifetime
        return math.ceil(config.lifetime_limit or 0) + DEADLINE_SLACK

    def _create_kept(self, config: SandboxConfig, sandbox_id: str) -> dict[str, Any]:
        """Create the kept-alive pod of ``sandbox_id``; an ended pod of that name (expired,
        not yet removed) is removed first. Raises SandboxExists if one runs."""
        ApiException = api_exception()
        name = pod_name(sandbox_id)
        try:
            return self._create(config, sandbox_id, idle=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if not self._clear_ended(name, config.startup_timeout):
                raise SandboxExists(f"a sandbox named {self.namespace}/{name} already exists") from exc
        try:
            return self._create(config, sandbox_id, idle=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            raise SandboxExists(f"a sandbox named {self.namespace}/{name} already exists") from exc

    def _clear_ended(self, name: str, timeout: float) -> bool:
        """Remove pod ``name`` if it has ended or is being deleted, waiting up to ``timeout``
        seconds for it to go; False if it runs (or starts)."""
        ApiException = api_exception()
        deadline = time.monotonic() + timeout
        while True:
            try:
                pod = self.kube.call(self.api.read_namespaced_pod, name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            if not (_terminal(pod) or terminating(pod)):
                return False
            if not terminating(pod):
                self._delete(name)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def _wait_ready(self, name: str, timeout: float) -> dict[str, Any]:
        """Watch the pod until its Ready condition is true; raise SandboxStartFailed when it
        cannot start, is deleted, or is not ready within ``timeout`` seconds. A pod waiting
        for a node (Unschedulable) is waited for: a cluster autoscaler may be adding one."""
        watch = k8s().watch
        ApiException = api_exception()

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
            seconds = max(1, math.ceil(remaining))
            try:
                for event in watch.Watch().stream(
                    self.api.list_namespaced_pod,
                    self.namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=pod["metadata"]["resourceVersion"],
                    timeout_seconds=seconds,
                    _request_timeout=(self.kube.timeouts[0], seconds + WATCH_SLACK),
                ):
                    if event["type"] == "DELETED":
                        raise SandboxStartFailed(f"pod {self.namespace}/{name} was deleted while starting")
                    pod = event["raw_object"]
                    if _check_start(pod):
                        return pod
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status != 410 and exc.status not in RETRYABLE:
                    raise SandboxStartFailed(
                        f"watching pod {self.namespace}/{name} failed: {api_reason(exc)}"
                    ) from exc
                log.debug("watch of %s ended with %s; reading the pod again", name, exc.status)
            except SandboxStartFailed:
                raise
            except Exception as exc:  # noqa: BLE001 - a dropped or timed-out watch: read again
                log.debug("watch of %s failed (%s); reading the pod again", name, exc)
            pod = self._read(name)

    def _read(self, name: str) -> dict[str, Any]:
        ApiException = api_exception()
        try:
            return self.kube.call(self.api.read_namespaced_pod, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SandboxStartFailed(f"pod {self.namespace}/{name} was deleted while starting") from exc
            raise SandboxStartFailed(
                f"reading pod {self.namespace}/{name} failed: {api_reason(exc)}"
            ) from exc
        except Exception as exc:
            raise SandboxStartFailed(f"reading pod {self.namespace}/{name} failed: {exc}") from exc

    def _token(self, pod: dict[str, Any], sandbox_id: str | None = None) -> str:
        """The gateway's token, from the Secret the pod mounts; SandboxGone if that Secret is
        gone or is not this pod's (made for another sandbox: ``sandbox_id``'s labels, or
        owned by another pod)."""
        ApiException = api_exception()
        name = pod["metadata"]["name"]
        secret_name = next(
            (
                (v.get("secret") or {}).get("secretName")
                for v in pod["spec"].get("volumes") or []
                if v.get("name") == "token-secret"
            ),
            None,
        )
        if not isinstance(secret_name, str):
            raise SandboxGone(
                f"pod {self.namespace}/{name} mounts no token Secret: it is not a sandbox of ours"
            )
        try:
            secret = self.kube.call(self.api.read_namespaced_secret, secret_name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SandboxGone(
                    f"the token Secret {self.namespace}/{secret_name} of pod {name} is gone: the "
                    "sandbox cannot be reached"
                ) from None
            raise SandboxStartFailed(
                f"reading the token Secret of pod {name} failed: {api_reason(exc)}"
            ) from exc
        except connection_errors() as exc:
            raise SandboxStartFailed(f"the Kubernetes API did not answer: {exc}") from exc
        meta = secret.get("metadata") or {}
        labels = meta.get("labels") or {}
        owners = [ref.get("uid") for ref in meta.get("ownerReferences") or []]
        foreign = labels.get(MANAGED_BY) != MANAGER or (
            sandbox_id is not None and labels.get(SANDBOX) != sandbox_id
        )
        if foreign or (owners and pod["metadata"].get("uid") not in owners):
            raise SandboxGone(
                f"the Secret {self.namespace}/{secret_name} that pod {name} mounts is not that "
                "sandbox's; refusing to use it"
            )
        try:
            return base64.b64decode(secret["data"]["token"], validate=True).decode()
        except (KeyError, TypeError, ValueError):
            raise SandboxGone(f"the token Secret of pod {self.namespace}/{name} holds no token") from None

    def _endpoint(self, pod: dict[str, Any], token: str, sandbox_id: str) -> Endpoint:
        name, pod_ip = pod["metadata"]["name"], pod["status"].get("podIP", "")
        mode = self.connect_mode
        if mode == "pod_ip":
            return Endpoint(token=token, host=pod_ip, port=GATEWAY_PORT)
        if mode == "port_forward":
            return PortForwardEndpoint(
                token=token, pod=name, namespace=self.namespace, api=self.kube.stream_core
            )
        assert self.url_template is not None  # __init__ requires one for connect="url"
        url = self.url_template.format(
            name=name, namespace=self.namespace, pod_ip=pod_ip, sandbox_id=sandbox_id
        )
        return endpoint_from_url(url, token, self.verify)

    def _delete(self, name: str, *, strict: bool = False) -> None:
        """Delete a pod with a short grace period: the kubelet stops its containers before
        the object goes (grace 0 would remove the object first, containers still running);
        then its Secret (the garbage collector would too, later). A pod already gone is
        fine; another failure is logged, or with ``strict`` raised (SandboxStartFailed)."""
        secret = self._secret_of(name)
        try:
            self.kube.call(
                self.api.delete_namespaced_pod, name, self.namespace, grace_period_seconds=DELETE_GRACE
            )
        except Exception as exc:  # noqa: BLE001 - the reaper and the deadline remain
            if getattr(exc, "status", None) != 404:
                if strict:
                    raise SandboxStartFailed(
                        f"deleting pod {self.namespace}/{name} failed: {_describe(exc)}"
                    ) from exc
                log.warning("could not delete pod %s: %s", name, _describe(exc))
        self._delete_secret(secret)

    def _secret_of(self, name: str) -> str:
        """The Secret pod ``name`` mounts (by default named as the pod)."""
        try:
            pod = self.kube.call(self.api.read_namespaced_pod, name, self.namespace)
            return next(
                v["secret"]["secretName"] for v in pod["spec"]["volumes"] if v["name"] == "token-secret"
            )
        except Exception:  # noqa: BLE001 - gone or unreadable: the usual name
            return name

    def _delete_secret(self, name: str) -> None:
        try:
            self.kube.call(self.api.delete_namespaced_secret, name, self.namespace)
        except Exception as exc:  # noqa: BLE001 - the garbage collector and the reaper remain
            if getattr(exc, "status", None) != 404:
                log.warning("could not delete secret %s: %s", name, _describe(exc))


def _describe(exc: BaseException) -> str:
    return api_reason(exc) if hasattr(exc, "status") else str(exc)
