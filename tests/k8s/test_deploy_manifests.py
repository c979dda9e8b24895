"""deploy/kubernetes/ as one deployment: the files the kustomization lists load, refer to
each other consistently, and grant and enforce what the backend needs."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from enclave_tools.backends.kubernetes.api import PERMISSIONS  # noqa: E402 (after the importorskip)
from enclave_tools.backends.kubernetes.manifests import (  # noqa: E402 (after the importorskip)
    EGRESS,
    GATEWAY_PORT,
    MANAGED_BY,
    MANAGER,
    network_policy_manifest,
)
from enclave_tools.backends.kubernetes.network import denies_all_egress  # noqa: E402 (after the importorskip)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def objects():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    loaded = []
    for name in kustomization["resources"]:
        loaded += [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    return loaded


def _of(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def _one(objects, kind, name):
    (found,) = [o for o in _of(objects, kind) if o["metadata"]["name"] == name]
    return found


def _sandbox_namespace(objects):
    return _one(objects, "NetworkPolicy", "enclave-tools-deny-egress")["metadata"]["namespace"]


def test_every_object_is_in_a_declared_namespace(objects):
    namespaces = {o["metadata"]["name"] for o in _of(objects, "Namespace")}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] in namespaces, obj["metadata"]["name"]


def test_the_role_grants_what_the_backend_uses_in_the_sandbox_namespace(objects):
    role = _one(objects, "Role", "enclave-tools-client")
    assert role["metadata"]["namespace"] == _sandbox_namespace(objects)
    granted: dict = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == PERMISSIONS


def test_the_binding_names_a_service_account_that_exists(objects):
    binding = _one(objects, "RoleBinding", "enclave-tools-client")
    assert binding["metadata"]["namespace"] == _sandbox_namespace(objects)
    assert binding["roleRef"]["name"] == "enclave-tools-client" and binding["roleRef"]["kind"] == "Role"
    accounts = [s for s in binding["subjects"] if s["kind"] == "ServiceAccount"]
    assert accounts
    for subject in accounts:
        account = _one(objects, "ServiceAccount", subject["name"])
        assert account["metadata"]["namespace"] == subject["namespace"]


def test_the_agents_namespace_may_reach_the_gateway(objects):
    """The namespace of the shipped ServiceAccount is the one the ingress policy admits."""
    account = _one(objects, "ServiceAccount", "enclave-tools-client")
    ingress = _one(objects, "NetworkPolicy", "enclave-tools-gateway-ingress")
    assert ingress["metadata"]["namespace"] == _sandbox_namespace(objects)
    sandbox_labels = {MANAGED_BY: MANAGER, EGRESS: "deny"}
    assert all(sandbox_labels.get(k) == v for k, v in ingress["spec"]["podSelector"]["matchLabels"].items())
    admitted = [
        (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], port["port"])
        for rule in ingress["spec"]["ingress"]
        for peer in rule["from"]
        for port in rule["ports"]
    ]
    assert (account["metadata"]["namespace"], GATEWAY_PORT) in admitted


def test_the_deny_egress_policy_is_the_backends(objects):
    shipped = _one(objects, "NetworkPolicy", "enclave-tools-deny-egress")
    made = network_policy_manifest()
    assert shipped["metadata"]["name"] == made["metadata"]["name"]
    assert shipped["spec"] == made["spec"]
    assert denies_all_egress(shipped)


def test_sandbox_namespace_enforces_restricted_pod_security(objects):
    namespace = _one(objects, "Namespace", _sandbox_namespace(objects))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
