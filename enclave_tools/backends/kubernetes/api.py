"""The Kubernetes API as the backend uses it: one configured client, every call bounded in
time on the client side, retried on 429/5xx, creates that survive their own retries, and
API errors turned into sentences.

Client-side timeouts matter because ``timeoutSeconds`` is enforced by the server only: a
dead connection (a NAT that dropped it, a hung API server) would otherwise hang a call,
a watch or a port-forward handshake past the sandbox's ``startup_timeout``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from enclave_tools.errors import SandboxStartFailed

log = logging.getLogger(__name__)

PERMISSIONS = {
    ("", "pods"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "pods/portforward"): {"create", "get"},
    ("", "secrets"): {"create", "get", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create"},
}
"""(API group, resource): the verbs the backend uses, in the sandbox namespace only
(deploy/kubernetes/rbac.yaml grants exactly these)."""
RETRYABLE = {429, 500, 502, 503, 504}
CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection to the API server."""
READ_TIMEOUT = 30.0
"""Seconds to wait for an answer to one API call."""
WATCH_SLACK = 10.0
"""Seconds a watch may run past its server-side ``timeoutSeconds`` before the client drops it."""
PAUSES = (0.2, 0.6, 1.8)
"""Pauses between the retries of a call that got 429/5xx or no answer."""


def k8s() -> Any:
    """The ``kubernetes`` package, or a clear error naming the extra to install."""
    try:
        import kubernetes
    except ImportError as exc:
        raise SandboxStartFailed(
            "the Kubernetes backend needs the 'kubernetes' package: pip install \"enclave-tools[kubernetes]\""
        ) from exc
    return kubernetes


def api_exception() -> Any:
    """``kubernetes.client.exceptions.ApiException`` (untyped: its ``status`` and ``body`` are read)."""
    return k8s().client.exceptions.ApiException


def api_reason(exc: Any) -> str:
    """An ApiException as ``"<status> <message>"``."""
    try:
        return f"{exc.status} {json.loads(exc.body).get('message')}"
    except (TypeError, ValueError, AttributeError):
        return f"{exc.status} {exc.reason}"


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a call raises when the API server did not answer (refused, reset, timed out)."""
    from urllib3.exceptions import HTTPError

    return (HTTPError, OSError)


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry: 429/5xx, or a connection that failed or timed out."""
    status = getattr(exc, "status", None)
    if status is not None:
        return status in RETRYABLE
    return isinstance(exc, connection_errors())


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
"""In a pod: the namespace of its service account."""


def default_namespace(context: str | None = None) -> str:
    """The namespace kubectl would use, in the order :class:`KubeApi` finds its cluster: in a
    pod (no ``context`` given) its service account's; else the kubeconfig context's
    (``context``, or the current one); else ``default``."""
    if context is None:
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
                namespace = handle.read().strip()
            if namespace:
                return namespace
        except OSError:
            pass
    return _kubeconfig_namespace(context) or "default"


def _kubeconfig_namespace(context: str | None) -> str | None:
    """The namespace of the kubeconfig context ``context`` (else the current one), if set."""
    kube_config = k8s().config.kube_config
    try:
        merged = kube_config.KubeConfigMerger(kube_config.KUBE_CONFIG_DEFAULT_LOCATION).config
    except Exception:  # noqa: BLE001 - an unreadable kubeconfig: the client says so when it connects
        return None
    config = getattr(merged, "value", merged)
    if not isinstance(config, dict):
        return None
    name = context or config.get("current-context")
    for entry in config.get("contexts") or []:
        entry = getattr(entry, "value", entry)
        if isinstance(entry, dict) and entry.get("name") == name:
            namespace = (entry.get("context") or {}).get("namespace")
            return namespace if isinstance(namespace, str) and namespace else None
    return None


class KubeApi:
    """One cluster: the shared ApiClient (configured on first use) and bounded calls on it.

    ``api_client`` (a ``kubernetes.client.ApiClient``) or ``context`` (a kubeconfig context)
    say which cluster; by default the in-cluster config, else the current kubeconfig context.
    """

    def __init__(self, api_client: Any = None, context: str | None = None) -> None:
        self._client = api_client
        self._context = context
        self.in_cluster = False
        self.timeouts = (CONNECT_TIMEOUT, READ_TIMEOUT)
        """(connect, read) seconds of every call; a watch reads for its own length."""
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The shared ApiClient. Never hand it to ``kubernetes.stream``: see :meth:`stream_core`."""
        kubernetes = k8s()
        with self._lock:
            if self._client is None:
                try:
                    kubernetes.config.load_incluster_config()
                    self.in_cluster = True
                    self._client = kubernetes.client.ApiClient()
                except kubernetes.config.ConfigException:
                    try:
                        self._client = kubernetes.config.new_client_from_config(context=self._context)
                    except kubernetes.config.ConfigException as exc:
                        raise SandboxStartFailed(
                            f"no Kubernetes cluster to talk to: not in a cluster, and the kubeconfig "
                            f"(KUBECONFIG or ~/.kube/config) gave none ({exc})"
                        ) from None
        return self._client

    @property
    def core(self) -> Any:
        """CoreV1Api on the shared client."""
        return k8s().client.CoreV1Api(self.client)

    @property
    def networking(self) -> Any:
        """NetworkingV1Api on the shared client."""
        return k8s().client.NetworkingV1Api(self.client)

    def stream_core(self) -> Any:
        """CoreV1Api on a client of its own, for one ``kubernetes.stream`` call.

        ``kubernetes.stream`` swaps ``call_api`` on the client it is given for the whole
        websocket handshake: any other call made meanwhile on that client would take the
        websocket path and fail, and overlapping streams can leave it swapped for good."""
        kubernetes = k8s()
        return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(self.client.configuration))

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method`` with its answer as plain JSON, bounded by a client-side timeout and
        retried on 429, 5xx and connection failures."""
        for pause in (*PAUSES, None):
            try:
                response = method(
                    *args,
                    _preload_content=False,
                    _request_timeout=self.timeouts,
                    **kwargs,
                )
                return json.loads(response.data or b"null")
            except Exception as exc:
                if pause is None or not _transient(exc):
                    raise
                log.debug("Kubernetes API call failed (%s); retrying", getattr(exc, "status", exc))
                time.sleep(pause)
        raise AssertionError("unreachable")

    def create(
        self,
        method: Callable[..., Any],
        read: Callable[..., Any],
        namespace: str,
        body: dict[str, Any],
        ours: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """Create ``body``; a 409 for an object that ``ours`` recognises is success.

        A create whose answer was lost (a 504 after the write, a dropped connection) is
        retried, and the retry finds the object already there: that object is the one
        this call made, not a clash."""
        ApiException = api_exception()
        try:
            return self.call(method, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            try:
                existing = self.call(read, body["metadata"]["name"], namespace)
            except ApiException:
                raise exc from None
            if not ours(existing):
                raise
            log.debug("create of %s was retried after it succeeded; using it", body["metadata"]["name"])
            return existing
