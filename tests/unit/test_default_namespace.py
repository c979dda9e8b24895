"""The Kubernetes namespace when none is given: kubectl's choice (the pod's service account
in a cluster, else the kubeconfig context's, else ``default``), read from real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes.config import kube_config

from enclave_tools.backends.kubernetes import api
from enclave_tools.backends.options import make_backend


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig whose current context sets a namespace, and no service account."""
    path = tmp_path / "kubeconfig"
    cluster = {"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "u", "user": {}}],
                "contexts": [
                    {"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                    {"name": "bare", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": "team",
            }
        )
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "no-service-account"))
    return path


def test_the_current_or_named_context_gives_the_namespace(kubeconfig: Path) -> None:
    assert api.default_namespace() == "team-a"
    assert api.default_namespace("team") == "team-a"
    assert api.default_namespace("bare") == "default"  # a context without one
    assert api.default_namespace("missing") == "default"


def test_a_named_context_is_found_even_when_the_current_one_is_missing(kubeconfig: Path) -> None:
    config = json.loads(kubeconfig.read_text())
    kubeconfig.write_text(json.dumps({**config, "current-context": "elsewhere"}))
    assert api.default_namespace("team") == "team-a"
    assert api.default_namespace() == "default"


def test_in_a_pod_the_service_account_namespace_comes_first(
    kubeconfig: Path, tmp_path: Path, monkeypatch
) -> None:
    account = tmp_path / "namespace"
    account.write_text("sandboxes\n")
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_NAMESPACE", str(account))
    assert api.default_namespace() == "sandboxes"
    assert api.default_namespace("team") == "team-a"  # a context named: the kubeconfig's


def test_no_kubeconfig_and_no_pod_means_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "none-either"))
    assert api.default_namespace() == "default"
    (tmp_path / "broken").write_text("{not yaml: [")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "broken"))
    assert api.default_namespace() == "default"


def test_the_backend_takes_the_default_unless_told(kubeconfig: Path) -> None:
    assert make_backend("kubernetes").namespace == "team-a"
    assert make_backend("kubernetes", context="bare").namespace == "default"
    assert make_backend("kubernetes", namespace="mine").namespace == "mine"
