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

Exception tree mapping: a pod that cannot start (image pull errors, a failed container, a
pod still unschedulable when ``startup_timeout`` expires, a config a pod cannot honour)
raises :class:`SandboxStartFailed`; a pod deleted or past its deadline is reported
"not running", so the Sandbox raises :class:`SandboxDied` as it does on Docker.
"""

from enclave_tools.backends.kubernetes.backend import KubernetesBackend, unsupported
from enclave_tools.backends.kubernetes.manifests import (
    EGRESS,
    MANAGED_BY,
    MANAGER,
    OWNER,
    POOL,
    POOL_KEY,
    SANDBOX,
    network_policy_manifest,
    pod_manifest,
    quantity,
)
from enclave_tools.backends.kubernetes.portforward import PortForwardEndpoint
from enclave_tools.backends.kubernetes.status import PodState, pod_state

__all__ = [
    "EGRESS",
    "MANAGED_BY",
    "MANAGER",
    "OWNER",
    "POOL",
    "POOL_KEY",
    "SANDBOX",
    "KubernetesBackend",
    "PodState",
    "PortForwardEndpoint",
    "network_policy_manifest",
    "pod_manifest",
    "pod_state",
    "quantity",
    "unsupported",
]
