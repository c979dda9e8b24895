"""`enclave-tools ps`, `stop` and `gc` on Kubernetes (the fake cluster, whose kubelet runs
real gateways; the command finds it through a kubeconfig context, as a user's would) and
on a remote gateway (a gateway container): what they list, end and clean up, with what
the cluster wrote shown bounded and printable and the token never printed."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NAMESPACE
from test_remote_gateway import _delete_kernels, _kernels, _run_gateway, _url_when_up

from enclave_tools import Sandbox, SandboxGone, registry
from enclave_tools.backends.kubernetes.manifests import HELD_UNTIL, HOLDER
from enclave_tools.backends.options import GATEWAY_TOKEN_ENV
from enclave_tools.backends.remote import RemoteGatewayBackend
from enclave_tools.cli import main

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def row_of(out: str, name: str) -> str:
    rows = [line for line in out.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, f"no single row for {name} in:\n{out}"
    return rows[0]


@pytest.fixture
def kube_cli(fake_cluster, tmp_path):
    """Run ``enclave-tools`` (a process of its own: the kubernetes client reads KUBECONFIG
    when it is imported) against the fake cluster, reached through a kubeconfig context
    (a kubeconfig is YAML, of which JSON is a part); returns the finished process."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": fake_cluster.url}}],
        "users": [{"name": "tester", "user": {}}],
        # The context names the namespace; the command is given none (kubectl's default).
        "contexts": [
            {"name": "fake-ctx", "context": {"cluster": "fake", "user": "tester", "namespace": NAMESPACE}}
        ],
        "current-context": "elsewhere",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    env = {
        **os.environ,
        "KUBECONFIG": str(path),
        "XDG_STATE_HOME": str(tmp_path / "state"),  # nothing on this host
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    options = ["--backend", "kubernetes", "--context", "fake-ctx"]

    def run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enclave_tools.cli", command, *args, *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_ps_stop_and_gc_on_kubernetes(kube_cli, fake_cluster, make_backend, k8s_config) -> None:
    backend = make_backend()
    kept = Sandbox(k8s_config, keep_alive="5m", backend=backend)
    owned = Sandbox(k8s_config, backend=make_backend())
    try:
        kept.run("1")
        kept.detach()
        owned.start()
        kept_pod, owned_pod = f"enclave-{kept.id}", owned.container_id
        # Anyone who may patch the pod may write its annotations: a claim with escapes.
        holder = "evil\x1b]0;owned\x07\nFAKE/1/nonce"
        claim = {HOLDER: holder, HELD_UNTIL: f"{time.time() + 300:.3f}"}
        backend.api.patch_namespaced_pod(kept_pod, NAMESPACE, {"metadata": {"annotations": claim}})

        listed = kube_cli("ps")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:3] == ["NAME", "SESSION", "OWNER"]
        assert len(lines) == 3  # the header and one line per pod: no line came from an annotation
        assert all(line.isprintable() for line in lines)
        kept_row = row_of(listed.stdout, kept_pod)
        assert "evil?]0;owned??FAKE/1" in kept_row and "running" in kept_row
        owned_row = row_of(listed.stdout, owned_pod)
        assert f"/{os.getpid()}" in owned_row and "running" in owned_row
        for pod in (kept_pod, owned_pod):
            assert backend._token(fake_cluster.get("pods", NAMESPACE, pod)) not in listed.stdout

        # gc: the kept-alive pod is past its expiry (as a gateway that ignored its limits
        # would leave it); the pod whose owner (this process) runs stays.
        record = backend.load_record(kept.id)
        record.expires = time.time() - 1
        backend.save_record(record)
        collected = kube_cli("gc")
        assert collected.returncode == 0, collected.stderr
        assert f"removed {kept_pod}" in collected.stdout
        assert "1 orphaned sandbox(es) removed" in collected.stdout
        assert ended(fake_cluster.get("pods", NAMESPACE, kept_pod))
        assert not ended(fake_cluster.get("pods", NAMESPACE, owned_pod))

        # stop: by sandbox id; an id that names nothing is refused.
        missing = kube_cli("stop", "no-such-sandbox")
        assert missing.returncode == 2
        assert "no sandbox match 'no-such-sandbox' on the kubernetes backend" in missing.stderr
        secret = backend._secret_of(owned_pod)
        stopped = kube_cli("stop", owned.id)
        assert stopped.returncode == 0, stopped.stderr
        assert f"removed {owned_pod}" in stopped.stdout
        assert ended(fake_cluster.get("pods", NAMESPACE, owned_pod))
        assert fake_cluster.get("secrets", NAMESPACE, secret) is None
    finally:
        owned.close()
        kept.close()


def ended(pod: dict | None) -> bool:
    """Deleted, or being deleted."""
    return pod is None or bool(pod["metadata"].get("deletionTimestamp"))


@pytest.fixture(scope="module")
def gateway(docker_engine, kernel_image):
    token = secrets.token_urlsafe(24)
    container = _run_gateway(docker_engine, kernel_image, token)
    try:
        yield _url_when_up(container, token), token
    finally:
        container.remove(force=True)


def test_ps_stop_and_gc_on_a_remote_gateway(gateway, tmp_path, monkeypatch, capsys) -> None:
    url, token = gateway
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(GATEWAY_TOKEN_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    cli = ["--backend", "remote", "--url", url, "--token-file", str(token_file)]
    backend = RemoteGatewayBackend(url, token)
    try:
        made = []
        for _ in range(2):
            sb = Sandbox(keep_alive="5m", backend=backend)
            sb.run("1")
            made.append((sb.id, sb._kernel.kernel_id))
            sb.detach()
        (first, first_kernel), (second, second_kernel) = made

        assert main(["ps", *cli]) == 0
        out = capsys.readouterr().out
        assert len(out.splitlines()) == 3
        for sid in (first, second):
            row = row_of(out, sid)
            assert "detached" in row and url in row
            assert row.split()[-1] in ("idle", "busy", "starting")  # STATUS: the gateway's word
            assert row.split()[5] in ("4m", "5m")  # EXPIRES IN: the idle limit, from the last use
        assert token not in out

        assert main(["stop", first, *cli]) == 0
        assert f"removed {first}" in capsys.readouterr().out
        assert first_kernel not in [k["id"] for k in _kernels(url, token)]
        with pytest.raises(SandboxGone):
            registry.load(first)
        assert main(["stop", first, *cli]) == 2
        assert "no sandbox match" in capsys.readouterr().err

        # gc, the token from the environment: the second kernel is past its recorded lifetime.
        record = registry.load(second)
        record.expires = time.time() - 1
        registry.save(record)
        monkeypatch.setenv(GATEWAY_TOKEN_ENV, token)
        assert main(["gc", "--backend", "remote", "--url", url]) == 0
        out = capsys.readouterr().out
        assert f"removed {second}" in out and "1 orphaned sandbox(es) removed" in out
        assert second_kernel not in [k["id"] for k in _kernels(url, token)]
        assert main(["ps", "--backend", "remote", "--url", url]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == []
    finally:
        _delete_kernels(url, token)
