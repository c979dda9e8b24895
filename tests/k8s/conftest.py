"""Fixtures for the Kubernetes and remote-gateway backends.

``fake_cluster`` is a fake API server on loopback whose fake kubelet runs pods on the local
Docker engine (see fake_apiserver.py and fake_kubelet.py for what is and is not faked).
Tests marked ``k8s_cluster`` run against a real cluster, only when selected with
``-m k8s_cluster`` and when ``ENCLAVE_K8S_CONTEXT`` or ``KUBECONFIG`` names one.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from enclave_tools import Sandbox, SandboxConfig
from enclave_tools.testing import RUN_ID, RUN_LABEL

sys.path.insert(0, os.path.dirname(__file__))  # fake_apiserver, fake_kubelet

NAMESPACE = "sandboxes"

try:
    import aiohttp  # noqa: F401 - the fake API server
    import kubernetes  # noqa: F401 - the backend's extra
except ImportError:  # without the test extras, only the remote-gateway tests run
    collect_ignore = ["test_kubernetes_backend.py", "test_real_cluster.py", "test_keep_alive_claims.py"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "k8s_cluster: needs a real Kubernetes cluster (-m k8s_cluster and a kubeconfig)"
    )


def pytest_collection_modifyitems(config, items):
    selected = "k8s_cluster" in (config.getoption("markexpr") or "")
    has_cluster = bool(os.environ.get("ENCLAVE_K8S_CONTEXT") or os.environ.get("KUBECONFIG"))
    skip = pytest.mark.skip(
        reason="real-cluster test: select it with -m k8s_cluster and set ENCLAVE_K8S_CONTEXT or KUBECONFIG"
    )
    for item in items:
        if "k8s_cluster" in item.keywords and not (selected and has_cluster):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def deny_egress_network(docker_engine):
    """One internal Docker network for the session's network-less pods; removed at the end."""
    from fake_kubelet import create_deny_egress_network

    network = create_deny_egress_network(docker_engine, {RUN_LABEL: RUN_ID})
    yield network.name
    import docker

    def left() -> list:
        return docker_engine.containers.list(all=True, filters={"network": network.name})

    for container in left():
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # its pod's own cleanup removed it first
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: that removal is already in progress
                raise
    deadline = time.monotonic() + 60
    while left() and time.monotonic() < deadline:
        threading.Event().wait(0.2)  # a removal in progress finishes
    network.remove()


@pytest.fixture
def fake_cluster(docker_engine, kernel_image, deny_egress_network):
    """A started FakeAPIServer with a FakeKubelet; every container it made is removed after."""
    from fake_apiserver import FakeAPIServer
    from fake_kubelet import FakeKubelet

    kubelet = FakeKubelet(docker_engine, labels={RUN_LABEL: RUN_ID}, deny_egress_network=deny_egress_network)
    server = FakeAPIServer(kubelet).start()
    kubelet.server = server
    yield server
    kubelet.stop_all()
    server.stop()


@pytest.fixture
def k8s_config(kernel_image):
    """Sandbox settings for pods: the test image, this run's label, a short startup limit."""
    return SandboxConfig(image=kernel_image, labels={RUN_LABEL: RUN_ID}, startup_timeout=90)


@pytest.fixture
def make_backend(fake_cluster):
    """KubernetesBackend factory talking to the fake API server (pod IP mode by default)."""
    from kubernetes import client

    from enclave_tools.backends.kubernetes import KubernetesBackend

    def make(**options):
        api_client = client.ApiClient(client.Configuration(host=fake_cluster.url))
        options.setdefault("connect", "pod_ip")
        return KubernetesBackend(NAMESPACE, api_client=api_client, **options)

    return make


@pytest.fixture
def make_pod_sandbox(make_backend, k8s_config):
    """A factory of Sandboxes on the fake cluster, closed after the test."""
    made = []

    def make(backend=None, **overrides):
        made.append(Sandbox(k8s_config, backend=backend or make_backend(), **overrides))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.close()
