"""What the Kubernetes backend creates: the sandbox pod, its labels, and the optional
default-deny egress NetworkPolicy. Pure functions of the config, so they can be checked
without a cluster."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from typing import Any

from enclave_tools.backends.base import lifetime_env
from enclave_tools.config import SandboxConfig

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
CREATE_ID = PREFIX + "create-id"
KEEP_ALIVE = PREFIX + "keep-alive"
"""Label of a kept-alive pod ("1"): it has no owner process; its deadline and expiry end it."""
SESSION = "io.enclave-tools.session"
"""Label carrying the session key of a SandboxSessions pod (as Docker's)."""
KERNEL_ID = PREFIX + "kernel-id"
"""Annotation: the kept-alive sandbox's kernel on its gateway."""
CONFIG = PREFIX + "config"
"""Annotation: the kept-alive sandbox's SandboxConfig (JSON; no secret: env is in the spec)."""
HOLDER = PREFIX + "attached-by"
"""Annotation: who is attached to a kept-alive pod (host/pid/nonce)."""
HELD_UNTIL = PREFIX + "attached-until"
"""Annotation: until when (epoch seconds) the holder's claim lasts unless renewed."""
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
GATEWAY_PORT = 8888
SANDBOX_UID = 10001
TOKEN_DIR = "/run/enclave"
SECRET_DIR = "/run/enclave-secret"
NETWORK_POLICY = "enclave-tools-deny-egress"
DELETE_GRACE = 2
"""Seconds a deleted pod's containers get to stop (a forced delete, grace 0, lets the
object go before the kubelet has killed them)."""


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
    wanted = {
        "config": config.model_dump(mode="json", exclude={"timeout", "labels"}),
        "image": image,
        **extra,
    }
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
        *({"name": key, "value": value} for key, value in lifetime_env(config).items()),
    ]

    def scratch(name: str, size: str) -> dict[str, Any]:
        # Memory-backed, as Docker's tmpfs: a full volume is ENOSPC for the code that writes,
        # and its pages count to the pod's memory limit. A disk emptyDir over its sizeLimit
        # makes the kubelet evict the whole pod instead. The kubelet sizes the tmpfs to
        # min(sizeLimit, the pod's memory limit) (SizeMemoryBackedVolumes, on since 1.22).
        return {"name": name, "emptyDir": {"sizeLimit": quantity(size), "medium": "Memory"}}

    hardened = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
    }
    resources = {"requests": dict(limits), "limits": limits}

    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": DELETE_GRACE,
        "activeDeadlineSeconds": max_lifetime,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostname": "sandbox",
        # The pause container becomes PID 1 and reaps zombies (Docker's --init); with the
        # gateway as PID 1, kernel restarts fail now and then.
        "shareProcessNamespace": True,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The token reaches the gateway as a file it deletes once read, as on Docker: an
        # init container copies it out of the (read-only) Secret volume into memory, and
        # the gateway's container never mounts the Secret.
        "initContainers": [
            {
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
            }
        ],
        "containers": [
            {
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
            }
        ],
        "volumes": [
            {"name": "token-secret", "secret": {"secretName": secret, "defaultMode": 0o440}},
            scratch("token", "1m"),
            scratch("tmp", config.tmp_size),
            scratch("home", "64m"),
            scratch("workspace", config.workspace_size),
            scratch("shm", config.shm_size),
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
        "spec": {
            "podSelector": {"matchLabels": {MANAGED_BY: MANAGER, EGRESS: "deny"}},
            "policyTypes": ["Egress"],
            "egress": [],
        },
    }
