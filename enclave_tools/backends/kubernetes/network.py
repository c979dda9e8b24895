"""``network="none"`` on Kubernetes: a pod has full egress (cloud metadata endpoints
included) unless a NetworkPolicy selects it and the network plugin enforces it. This
module makes sure the default-deny egress policy exists before a network-less pod starts.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from enclave_tools.backends.kubernetes.api import KubeApi, api_exception, api_reason
from enclave_tools.backends.kubernetes.manifests import (
    EGRESS,
    MANAGED_BY,
    MANAGER,
    NETWORK_POLICY,
    network_policy_manifest,
)
from enclave_tools.errors import SandboxStartFailed

log = logging.getLogger(__name__)

MODES = ("ensure", "require", "off")
_HOW_TO_FIX = (
    "apply deploy/kubernetes/networkpolicy.yaml in the namespace, or grant the client "
    "'get' and 'create' on networkpolicies, or pass network_policy='off' to accept pods "
    "that can reach the network"
)


def policy_mode(value: bool | str) -> str:
    """``network_policy`` as one of MODES (True is "ensure", False is "off")."""
    mode = {True: "ensure", False: "off"}.get(value, value) if isinstance(value, bool) else value
    if mode not in MODES:
        raise ValueError("network_policy must be 'ensure', 'require' or 'off' (or True/False)")
    return mode


def denies_all_egress(policy: dict[str, Any]) -> bool:
    """Whether ``policy`` selects every network-less sandbox pod and allows it no egress."""
    spec = policy.get("spec") or {}
    wanted = {MANAGED_BY: MANAGER, EGRESS: "deny"}
    selector = spec.get("podSelector") or {}
    selects = not selector.get("matchExpressions") and all(
        wanted.get(key) == value for key, value in (selector.get("matchLabels") or {}).items()
    )
    return selects and "Egress" in (spec.get("policyTypes") or []) and not spec.get("egress")


class EgressGuard:
    """Checks, once per backend, that egress of network-less pods is denied (see MODES):

    * ``"ensure"`` (default): create the policy if it is missing; refuse to start if it
      cannot be created, or if a policy of that name lets egress through;
    * ``"require"``: the admin applied it; refuse to start if it is missing or weaker;
    * ``"off"``: do nothing, and warn loudly once that ``network="none"`` is not enforced.
    """

    def __init__(self, api: KubeApi, namespace: str, mode: str) -> None:
        self.api = api
        self.namespace = namespace
        self.mode = mode
        self._done = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Make sure the policy is in place (or warn); raise SandboxStartFailed if not."""
        with self._lock:
            if self._done:
                return
            if self.mode == "off":
                message = (
                    f"enclave-tools: network='none' is NOT enforced in namespace {self.namespace!r}: "
                    "network_policy='off', so sandbox pods can reach the network, cloud metadata "
                    "endpoints included, unless the cluster denies it some other way"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=4)
                log.warning(message)
            else:
                self._check_policy()
            self._done = True

    def _check_policy(self) -> None:
        ApiException = api_exception()
        where = f"NetworkPolicy {self.namespace}/{NETWORK_POLICY}"
        try:
            policy = self.api.call(
                self.api.networking.read_namespaced_network_policy, NETWORK_POLICY, self.namespace
            )
        except ApiException as exc:
            if exc.status != 404 or self.mode == "require":
                why = "is missing" if exc.status == 404 else f"could not be read ({api_reason(exc)})"
                raise SandboxStartFailed(
                    f"network='none' cannot be enforced: the {where} {why}; {_HOW_TO_FIX}"
                ) from exc
            policy = self._create(where)
        if not denies_all_egress(policy):
            raise SandboxStartFailed(
                f"network='none' cannot be enforced: the {where} exists but does not deny all "
                f"egress of the sandbox pods; restore it from deploy/kubernetes/networkpolicy.yaml"
            )

    def _create(self, where: str) -> dict[str, Any]:
        ApiException = api_exception()
        networking = self.api.networking
        try:
            return self.api.create(
                networking.create_namespaced_network_policy,
                networking.read_namespaced_network_policy,
                self.namespace,
                network_policy_manifest(),
                ours=lambda existing: True,
            )
        except ApiException as exc:
            raise SandboxStartFailed(
                f"network='none' cannot be enforced: the {where} is missing and could not be "
                f"created ({api_reason(exc)}); {_HOW_TO_FIX}"
            ) from exc
