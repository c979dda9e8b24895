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
        connect="port_forward",
        max_lifetime=900,
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
        cluster_backend.api.delete_namespaced_pod(
            sb.container_id, cluster_backend.namespace, grace_period_seconds=0
        )
        cluster_backend.wait_stopped(sb.handle, 60)
        with pytest.raises(SandboxDied):
            sb.run("a")


def test_missing_image_fails_to_start(cluster_backend):
    cluster_backend.image = "registry.invalid/enclave/nothing:0"
    with pytest.raises(SandboxStartFailed, match="pulled|image"):
        Sandbox(SandboxConfig(startup_timeout=120), backend=cluster_backend).start()


def _cfg(**overrides):
    return SandboxConfig(startup_timeout=180, **overrides)


def test_port_forwards_and_api_calls_at_once(cluster_backend):
    """Each port-forward has a client of its own; the shared one keeps working."""
    import threading

    with Sandbox(_cfg(), backend=cluster_backend) as sb:
        sb.run("1")
        errors = []

        def forward():
            for _ in range(5):
                try:
                    sb.handle.endpoint.connect(30).close()
                except Exception as exc:  # noqa: BLE001 - collected for the assert
                    errors.append(exc)

        def poll():
            for _ in range(30):
                try:
                    assert cluster_backend.state(sb.handle).running
                except Exception as exc:  # noqa: BLE001 - collected for the assert
                    errors.append(exc)

        threads = [threading.Thread(target=forward) for _ in range(3)] + [threading.Thread(target=poll)]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        assert errors == []
        assert "call_api" not in vars(cluster_backend.kube.client)


def test_unschedulable_until_the_timeout_says_why(cluster_backend):
    """A pod no node can hold waits (an autoscaler may add one), then fails saying why."""
    with pytest.raises(SandboxStartFailed, match="could not be scheduled"):
        Sandbox(SandboxConfig(startup_timeout=30, memory="4000g"), backend=cluster_backend).start()


def test_network_none_denies_egress(cluster_backend):
    """Needs a network plugin that enforces NetworkPolicy egress (Calico, Cilium)."""
    probe = (
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 443), 5).close(); print('open')\n"
        "except OSError:\n    print('denied')"
    )
    with Sandbox(_cfg(), backend=cluster_backend) as sb:
        assert sb.run(probe).text == "denied"
        metadata = sb.run(
            "import urllib.request\ntry:\n    urllib.request.urlopen("
            "'http://169.254.169.254/', timeout=5); print('open')\nexcept OSError:\n    print('denied')"
        )
        assert metadata.text == "denied"


def test_full_workspace_is_enospc(cluster_backend):
    with Sandbox(_cfg(workspace_size="16m"), backend=cluster_backend) as sb:
        filled = sb.run("open('big', 'wb').write(b'x' * (40 * 2**20))")
        assert filled.error.name == "OSError" and "No space left" in filled.text
        assert sb.run("'alive'").text == "'alive'"


def test_close_deletes_gracefully(cluster_backend):
    with Sandbox(_cfg(), backend=cluster_backend) as sb:
        sb.run("1")
        handle = sb.handle
    state = cluster_backend.wait_stopped(handle, 60)
    assert not state.running


def test_a_pool_pod_being_drained_is_not_claimed(cluster_backend):
    from enclave_tools.backends.kubernetes.manifests import SAFE_TO_EVICT

    cluster_backend.pool.size = 1
    config = _cfg()
    cluster_backend.fill_pool(config)
    pods = cluster_backend.kube.call(
        cluster_backend.api.list_namespaced_pod,
        cluster_backend.namespace,
        label_selector="io.enclave-tools/pool=idle",
    )["items"]
    assert pods and pods[0]["metadata"]["annotations"][SAFE_TO_EVICT] == "true"
    name = pods[0]["metadata"]["name"]
    cluster_backend.api.delete_namespaced_pod(name, cluster_backend.namespace, grace_period_seconds=30)
    with Sandbox(config, backend=cluster_backend) as sb:
        assert sb.container_id != name
        assert sb.run("'fresh'").text == "'fresh'"


def test_create_retried_after_a_lost_answer_is_ours(cluster_backend):
    """A 409 for an object this create made is success (simulated by creating twice)."""
    from kubernetes.client.exceptions import ApiException

    kube = cluster_backend.kube
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "enclave-idempotent-test", "annotations": {"io.enclave-tools/create-id": "x1"}},
        "stringData": {"token": "t"},
    }
    api = cluster_backend.api
    try:
        first = kube.create(
            api.create_namespaced_secret,
            api.read_namespaced_secret,
            cluster_backend.namespace,
            body,
            lambda o: o["metadata"]["annotations"]["io.enclave-tools/create-id"] == "x1",
        )
        again = kube.create(
            api.create_namespaced_secret,
            api.read_namespaced_secret,
            cluster_backend.namespace,
            body,
            lambda o: o["metadata"]["annotations"]["io.enclave-tools/create-id"] == "x1",
        )
        assert first["metadata"]["uid"] == again["metadata"]["uid"]
        with pytest.raises(ApiException):
            kube.create(
                api.create_namespaced_secret,
                api.read_namespaced_secret,
                cluster_backend.namespace,
                body,
                lambda o: False,
            )
    finally:
        api.delete_namespaced_secret("enclave-idempotent-test", cluster_backend.namespace)
