"""Attach claims and records of kept-alive pods as others may have written them: the fake
API server (no kubelet: the pods are written as a kubelet would leave them, Running and
Ready), the backend's own code. Anyone who may patch pods in the namespace can write the
annotations, so they are read as untrusted: a claim far in the future does not lock the
sandbox for ever, garbage fails clearly, a Secret that is not the pod's is refused."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NAMESPACE
from fake_apiserver import FakeAPIServer
from kubernetes import client

from enclave_tools import attach
from enclave_tools.backends.kubernetes import KubernetesBackend
from enclave_tools.backends.kubernetes.keepalive import MAX_LEASE_S
from enclave_tools.backends.kubernetes.manifests import (
    CONFIG,
    HELD_UNTIL,
    HOLDER,
    KEEP_ALIVE,
    KERNEL_ID,
    MANAGED_BY,
    MANAGER,
    SANDBOX,
)
from enclave_tools.errors import SandboxGone, SandboxInUse

TOKEN = "the-secret-token-0123456789"


@pytest.fixture
def server() -> Iterator[FakeAPIServer]:
    server = FakeAPIServer(None).start()
    yield server
    server.stop()


def backend(server: FakeAPIServer, **options: Any) -> KubernetesBackend:
    api_client = client.ApiClient(client.Configuration(host=server.url))
    return KubernetesBackend(
        NAMESPACE, api_client=api_client, connect="pod_ip", network_policy="off", **options
    )


def kept_pod(
    server: FakeAPIServer,
    sandbox_id: str,
    annotations: dict[str, str] | None = None,
    secret_labels: dict[str, str] | None = None,
    with_secret: bool = True,
) -> None:
    """A Running, Ready kept-alive pod ``enclave-<id>`` and (unless not) its Secret."""
    api = client.CoreV1Api(client.ApiClient(client.Configuration(host=server.url)))
    secret = f"enclave-{sandbox_id}-abc123"
    if with_secret:
        labels = {MANAGED_BY: MANAGER, SANDBOX: sandbox_id} if secret_labels is None else secret_labels
        api.create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": secret, "labels": labels}, "stringData": {"token": TOKEN}}
        )
    name = f"enclave-{sandbox_id}"
    api.create_namespaced_pod(
        NAMESPACE,
        {
            "metadata": {
                "name": name,
                "labels": {MANAGED_BY: MANAGER, SANDBOX: sandbox_id, KEEP_ALIVE: "1"},
                "annotations": {CONFIG: json.dumps({"keep_alive": 600}), **(annotations or {})},
            },
            "spec": {
                "containers": [{"name": "gateway", "image": "enclave"}],
                "volumes": [{"name": "token-secret", "secret": {"secretName": secret}}],
            },
        },
    )
    ready = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    server.set_status(NAMESPACE, name, ready)


def test_a_claim_far_in_the_future_does_not_lock_the_sandbox(server: FakeAPIServer) -> None:
    kept_pod(server, "c1a1m0000001", {HOLDER: "skewed/1/ab", HELD_UNTIL: f"{time.time() + 1e9:.3f}"})
    hold = backend(server).take_attach("c1a1m0000001", 0)
    try:
        assert hold.held
    finally:
        hold.release()
    # A claim within the longest lease is honoured.
    kept_pod(server, "c1a1m0000002", {HOLDER: "other/1/ab", HELD_UNTIL: f"{time.time() + MAX_LEASE_S:.3f}"})
    with pytest.raises(SandboxInUse):
        backend(server).take_attach("c1a1m0000002", 0)


def test_a_junk_holder_is_shown_bounded_and_printable(server: FakeAPIServer) -> None:
    junk = "\x1b[31m" + "h" * 5000 + "/1/ab"
    kept_pod(server, "c1a1m0000003", {HOLDER: junk, HELD_UNTIL: f"{time.time() + 30:.3f}"})
    with pytest.raises(SandboxInUse) as refused:
        backend(server).take_attach("c1a1m0000003", 0)
    message = str(refused.value)
    assert "\x1b" not in message and len(message) < 600


def test_exactly_one_of_racing_processes_wins_the_claim(server: FakeAPIServer) -> None:
    kept_pod(server, "c1a1m0000004")
    backends = [backend(server) for _ in range(6)]
    outcomes: list[str] = []
    holds = []

    def claim(b: KubernetesBackend) -> None:
        try:
            holds.append(b.take_attach("c1a1m0000004", 0))
            outcomes.append("won")
        except SandboxInUse:
            outcomes.append("in use")

    threads = [threading.Thread(target=claim, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(outcomes) == ["in use"] * 5 + ["won"]
    finally:
        for hold in holds:
            hold.release()


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), MAX_LEASE_S + 1, True, "30"])
def test_attach_lease_must_be_a_sane_number_of_seconds(server: FakeAPIServer, lease: Any) -> None:
    with pytest.raises(ValueError, match="attach_lease"):
        backend(server, attach_lease=lease)


def test_a_missing_secret_says_the_sandbox_cannot_be_reached(server: FakeAPIServer) -> None:
    kept_pod(server, "5ec0e0000001", with_secret=False)
    with pytest.raises(SandboxGone, match="is gone"):
        attach.connect("5ec0e0000001", 0, backend(server))


@pytest.mark.parametrize(
    "labels", [{}, {MANAGED_BY: MANAGER, SANDBOX: "0therbox0001"}], ids=["unlabelled", "another sandbox's"]
)
def test_a_secret_that_is_not_the_pods_is_refused(server: FakeAPIServer, labels: dict[str, str]) -> None:
    kept_pod(server, "5ec0e0000002", secret_labels=labels)
    with pytest.raises(SandboxGone, match="not that sandbox's") as refused:
        attach.connect("5ec0e0000002", 0, backend(server))
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(
    "annotations",
    [
        {CONFIG: json.dumps({"memory": "lots", "timeout": -3})},
        {CONFIG: "[1, 2]"},
        {CONFIG: "{}"},
        {KERNEL_ID: "../../api/enclave/lifetime?x="},
    ],
    ids=["bad config", "config not an object", "config without keep_alive", "kernel id with a path"],
)
def test_a_damaged_record_fails_clearly_before_any_request(
    server: FakeAPIServer, annotations: dict[str, str]
) -> None:
    kept_pod(server, "dama9ed00001", annotations)
    with pytest.raises(SandboxGone, match="is damaged"):
        attach.connect("dama9ed00001", 0, backend(server))
