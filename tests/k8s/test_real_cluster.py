"""The Kubernetes backend on a real cluster (kind, k3d, GKE...). Skipped unless selected::

    ENCLAVE_K8S_CONTEXT=kind-kind ENCLAVE_K8S_IMAGE=registry.example/enclave-kernel:TAG \\
        pytest tests/k8s -m k8s_cluster

``ENCLAVE_K8S_NAMESPACE`` (default ``default``) must allow what deploy/kubernetes/rbac.yaml
grants; ``ENCLAVE_K8S_RUNTIME_CLASS`` optionally names a RuntimeClass (gvisor, kata).
Port-forward mode is used, as from a laptop.
"""

from __future__ import annotations

import os

import pytest

from enclave_tools import Sandbox, SandboxConfig, SandboxDied, SandboxStartFailed

pytestmark = pytest.mark.k8s_cluster


@pytest.fixture
def cluster_backend():
    from enclave_tools.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(
        os.environ.get("ENCLAVE_K8S_NAMESPACE", "default"),
        context=os.environ.get("ENCLAVE_K8S_CONTEXT") or None,
        image=os.environ.get("ENCLAVE_K8S_IMAGE") or None,
        runtime_class=os.environ.get("ENCLAVE_K8S_RUNTIME_CLASS") or None,
        connect="port_forward", max_lifetime=900,
    )
    yield backend
    backend.drain_pool()


def test_state_errors_and_restart(cluster_backend):
    with Sandbox(SandboxConfig(startup_timeout=180), backend=cluster_backend) as sb:
        assert sb.run("x = 41").ok
        assert sb.run("x + 1").text == "42"
        assert sb.run("1/0").error.name == "ZeroDivisionError"
        sb.restart()
        assert sb.run("'x' in dir()").text == "False"


def test_pod_deleted_is_sandbox_died(cluster_backend):
    with Sandbox(SandboxConfig(startup_timeout=180), backend=cluster_backend) as sb:
        sb.run("a = 1")
        cluster_backend.api.delete_namespaced_pod(sb.container_id, cluster_backend.namespace,
                                                  grace_period_seconds=0)
        cluster_backend.wait_stopped(sb.handle, 60)
        with pytest.raises(SandboxDied):
            sb.run("a")


def test_missing_image_fails_to_start(cluster_backend):
    cluster_backend.image = "registry.invalid/enclave/nothing:0"
    with pytest.raises(SandboxStartFailed, match="pulled|image"):
        Sandbox(SandboxConfig(startup_timeout=120), backend=cluster_backend).start()
