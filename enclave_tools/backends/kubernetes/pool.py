"""The warm pool: idle pods made ahead for one configuration, claimed atomically.

A claim is a patch carrying the pod's ``resourceVersion``: if another client changed the
pod first, the API server answers 409 and the loser tries the next pod. Idle pods carry
the cluster autoscaler's ``safe-to-evict: "true"`` (bare pods with emptyDirs otherwise
keep their node from scaling down); a claimed pod gets ``"false"``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from enclave_tools.backends.kubernetes.api import KubeApi, api_exception
from enclave_tools.backends.kubernetes.manifests import (
    MANAGED_BY,
    MANAGER,
    OWNER,
    POOL,
    POOL_KEY,
    SAFE_TO_EVICT,
    SANDBOX,
)
from enclave_tools.backends.kubernetes.status import _ready, _terminal, terminating

log = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 3
"""Claims of one pod that may meet a 409 from a change other than another claim."""


def claimable(pod: dict[str, Any]) -> bool:
    """Whether an idle pod may be claimed: not ended, and not being deleted (a node drain
    or an eviction leaves a pod Running and Ready for its grace period)."""
    return not _terminal(pod) and not terminating(pod)


class WarmPool:
    """Idle pods in ``namespace``, owned by ``owner``; ``create(sandbox_id)`` makes one."""

    def __init__(self, api: KubeApi, namespace: str, owner: str, size: int) -> None:
        self.api = api
        self.namespace = namespace
        self.owner = owner
        self.size = size

    def _idle(self, key: str) -> list[dict[str, Any]]:
        selector = f"{MANAGED_BY}={MANAGER},{POOL}=idle,{POOL_KEY}={key}"
        listing = self.api.call(self.api.core.list_namespaced_pod, self.namespace, label_selector=selector)
        return [pod for pod in listing.get("items", []) if claimable(pod)]

    def fill(self, key: str, create: Callable[[str], Any]) -> int:
        """Create idle pods for pool ``key`` until ``size`` wait; return how many were made."""
        made = 0
        for _ in range(self.size - len(self._idle(key))):
            create(secrets.token_hex(6))
            made += 1
        return made

    def drain(self, delete: Callable[[str], None]) -> int:
        """Delete every idle pod of this owner; return how many."""
        selector = f"{MANAGED_BY}={MANAGER},{POOL}=idle,{OWNER}={self.owner}"
        idle = self.api.call(self.api.core.list_namespaced_pod, self.namespace, label_selector=selector)
        pods = [pod for pod in idle.get("items", []) if not terminating(pod)]
        for pod in pods:
            delete(pod["metadata"]["name"])
        return len(pods)

    def claim(self, key: str, sandbox_id: str, annotations: dict[str, str]) -> dict[str, Any] | None:
        """Take one idle pod of pool ``key`` (ready ones first); None if none is left."""
        for pod in sorted(self._idle(key), key=lambda p: not _ready(p)):
            claimed = self.try_claim(pod, sandbox_id, annotations)
            if claimed is not None:
                return claimed
        return None

    def try_claim(
        self, pod: dict[str, Any], sandbox_id: str, annotations: dict[str, str]
    ) -> dict[str, Any] | None:
        """Claim ``pod`` as its ``resourceVersion`` says it was; None if another client won,
        or if the pod turns out to be on its way out. A pod changed meanwhile by something
        other than a claim (the kubelet writing its status) is read again and claimed if it
        is still idle, a few times at most."""
        ApiException = api_exception()
        for _ in range(CLAIM_ATTEMPTS):
            meta = pod["metadata"]
            patch = {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "labels": {POOL: "claimed", SANDBOX: sandbox_id, OWNER: self.owner},
                    "annotations": {**annotations, SAFE_TO_EVICT: "false"},
                }
            }
            try:
                claimed = self.api.call(
                    self.api.core.patch_namespaced_pod, meta["name"], self.namespace, patch
                )
            except ApiException as exc:
                if exc.status != 409:
                    if exc.status == 404:
                        return None
                    raise
                again = self._still_idle(meta["name"])
                if again is None:
                    return None  # another client claimed it, or it is going
                pod = again
                continue
            if not claimable(claimed):
                log.debug("claimed pod %s is being deleted; trying another", meta["name"])
                return None
            return claimed
        return None

    def _still_idle(self, name: str) -> dict[str, Any] | None:
        """The pod ``name`` as it is now, if it is still idle and claimable."""
        ApiException = api_exception()
        try:
            pod = self.api.call(self.api.core.read_namespaced_pod, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return pod if labels.get(POOL) == "idle" and claimable(pod) else None
