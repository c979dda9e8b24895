"""RemoteGatewayBackend against a gateway container the test starts (published on loopback)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request

import pytest

from enclave_tools import FileTransferError, Sandbox, SandboxDied, SandboxStartFailed
from enclave_tools.backends.remote import RemoteGatewayBackend
from enclave_tools.testing import RUN_ID, RUN_LABEL

pytestmark = pytest.mark.docker


def _run_gateway(docker_engine, kernel_image, token, command=None):
    return docker_engine.containers.run(
        kernel_image,
        command,
        detach=True,
        labels={RUN_LABEL: RUN_ID},
        environment={"KG_AUTH_TOKEN": token, "KG_LIST_KERNELS": "True", "KG_MAX_KERNELS": "8"},
        ports={"8888/tcp": ("127.0.0.1", None)},
        network="bridge",
        read_only=True,
        cap_drop=["ALL"],
        init=True,
        tmpfs={
            "/tmp": "size=64m,mode=1777",
            "/home/sandbox": "uid=10001,gid=10001,mode=0700",
            "/workspace": "uid=10001,gid=10001,mode=0755,exec",
        },
    )


def _url_when_up(container, token, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        bindings = container.attrs["NetworkSettings"]["Ports"].get("8888/tcp")
        if bindings:
            url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
            try:
                _kernels(url, token)
                return url
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"the gateway did not come up: {container.logs(tail=20).decode()}")


def _kernels(url, token):
    request = urllib.request.Request(f"{url}/api/kernels", headers={"Authorization": f"token {token}"})
    return json.loads(urllib.request.urlopen(request, timeout=5).read())


def _delete_kernels(url, token):
    for kernel in _kernels(url, token):
        request = urllib.request.Request(
            f"{url}/api/kernels/{kernel['id']}", method="DELETE", headers={"Authorization": f"token {token}"}
        )
        urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="module")
def gateway(docker_engine, kernel_image):
    """Our kernel image as a standalone gateway: (url, token, container)."""
    token = secrets.token_urlsafe(24)
    container = _run_gateway(docker_engine, kernel_image, token)
    try:
        yield _url_when_up(container, token), token, container
    finally:
        container.remove(force=True)


@pytest.fixture
def remote(gateway):
    """A factory of sandboxes on the shared gateway; their kernels are deleted afterwards
    (the gateway allows two kernels at a time)."""
    url, token, _ = gateway
    made: list[Sandbox] = []

    def make(**overrides):
        made.append(Sandbox(backend=RemoteGatewayBackend(url, token), **overrides))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.close()
    _delete_kernels(url, token)


def test_state_persists_and_errors_are_results(remote):
    sb = remote()
    assert sb.run("x = 20").ok
    assert sb.run("x + 22").text == "42"
    failed = sb.run("1 / 0")
    assert failed.status == "error" and failed.error.name == "ZeroDivisionError"
    assert sb.run("print(x)").text == "20"


def test_kernel_death_is_reported_and_recovered(remote):
    sb = remote()
    sb.run("y = 1")
    died = sb.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert died.status == "kernel_died" and died.state_lost
    assert sb.run("'y' in dir()").text == "False"
    assert sb.run("1 + 1").text == "2"


def test_restart_and_timeout(remote):
    sb = remote(timeout=1.0)
    sb.run("z = 3")
    sb.restart()
    assert sb.run("'z' in dir()").text == "False"
    timed_out = sb.run("import time; time.sleep(30)")
    assert timed_out.status == "timeout"
    assert sb.run("'ok'").text == "'ok'"


def test_files_on_our_image(remote):
    sb = remote()
    path = sb.write_file("hello.txt", "hi")
    assert sb.run(f"open({path!r}).read()").text == "'hi'"


def test_close_deletes_the_kernel(gateway, remote):
    url, token, _ = gateway
    sb = remote()
    sb.run("1")
    assert len(_kernels(url, token)) == 1
    sb.close()
    assert _kernels(url, token) == []  # the gateway outlives the sandbox; our kernel does not


def test_wrong_token_and_unreachable_url_fail_clearly(gateway):
    url, _, _ = gateway
    with pytest.raises(SandboxStartFailed, match="refused the token"):
        Sandbox(backend=RemoteGatewayBackend(url, "wrong")).start()
    with pytest.raises(SandboxStartFailed, match="does not answer"):
        Sandbox(backend=RemoteGatewayBackend("http://127.0.0.1:1", "t")).start()
    with pytest.raises(SandboxStartFailed, match="has a path"):
        Sandbox(backend=RemoteGatewayBackend(f"{url}/prefix/", "t")).start()


def test_gateway_gone_raises_sandbox_died(docker_engine, kernel_image):
    token = secrets.token_urlsafe(24)
    container = _run_gateway(docker_engine, kernel_image, token)
    try:
        sb = Sandbox(backend=RemoteGatewayBackend(_url_when_up(container, token), token))
        sb.run("a = 1")
        container.kill()
        with pytest.raises(SandboxDied, match="stopped answering"):
            sb.run("a")
        sb.close()
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("wire", ["v1", "legacy"])
def test_stock_gateway_without_enclave_endpoints(docker_engine, kernel_image, wire):
    """A stock Kernel Gateway (no /api/enclave/*): code runs, over the binary v1 wire format
    or, where the gateway refuses it, the legacy JSON one; files fail with an EnclaveError."""
    token = secrets.token_urlsafe(24)
    command = ["jupyter", "kernelgateway", "--ip=0.0.0.0"]
    if wire == "legacy":
        command.append("--ZMQChannelsWebsocketConnection.kernel_ws_protocol=")
    container = _run_gateway(docker_engine, kernel_image, token, command)
    try:
        url = _url_when_up(container, token)
        with Sandbox(backend=RemoteGatewayBackend(url, token)) as sb:
            assert sb.run("b = 2; b * 21").text == "42"
            assert sb._kernel.v1 == (wire == "v1")
            assert sb.run("print('out'); b").text == "out\n2"
            assert sb.run("1 / 0").error.name == "ZeroDivisionError"
            with pytest.raises(FileTransferError):
                sb.read_file("x.txt")
    finally:
        container.remove(force=True)


def test_https_gateway_with_a_private_ca(docker_engine, kernel_image, tmp_path, monkeypatch, capsys):
    """TLS end to end (REST and websocket), verified against the gateway's own certificate;
    the command line too (``--ca-file``)."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tmp_path.chmod(0o755)
    key.chmod(0o644)
    token = secrets.token_urlsafe(24)
    container = docker_engine.containers.run(
        kernel_image,
        detach=True,
        labels={RUN_LABEL: RUN_ID},
        init=True,
        read_only=True,
        environment={"KG_AUTH_TOKEN": token, "KG_CERTFILE": "/tls/cert.pem", "KG_KEYFILE": "/tls/key.pem"},
        volumes={str(tmp_path): {"bind": "/tls", "mode": "ro"}},
        ports={"8888/tcp": ("127.0.0.1", None)},
        tmpfs={
            "/tmp": "mode=1777",
            "/home/sandbox": "uid=10001,gid=10001,mode=0700",
            "/workspace": "uid=10001,gid=10001,mode=0755,exec",
        },
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            container.reload()
            bindings = container.attrs["NetworkSettings"]["Ports"].get("8888/tcp")
            if bindings:
                break
            time.sleep(0.1)
        url = f"https://localhost:{bindings[0]['HostPort']}"
        backend = RemoteGatewayBackend(url, token, verify=str(cert))
        sb = Sandbox(backend=backend, startup_timeout=30)
        for _ in range(100):  # the gateway takes a moment to listen
            try:
                sb.start()
                break
            except SandboxStartFailed:
                time.sleep(0.2)
        assert sb.run("v = 'tls'; v").text == "'tls'"
        sb.close()
        with pytest.raises(SandboxStartFailed, match="does not answer.*CERTIFICATE_VERIFY_FAILED"):
            Sandbox(backend=RemoteGatewayBackend(url, token)).start()  # the system CAs do not know it

        from enclave_tools.backends.options import GATEWAY_TOKEN_ENV
        from enclave_tools.cli import main

        monkeypatch.setenv(GATEWAY_TOKEN_ENV, token)
        capsys.readouterr()
        assert main(["ps", "--backend", "remote", "--url", url, "--ca-file", str(cert)]) == 0
        assert "CERTIFICATE" not in capsys.readouterr().err
        assert main(["ps", "--backend", "remote", "--url", url]) == 3  # the system CAs do not know it
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
        assert main(["ps", "--backend", "remote", "--url", url, "--ca-file", str(tmp_path / "none.pem")]) == 2
        assert "is not a file" in capsys.readouterr().err
        assert main(["ps", "--backend", "remote", "--url", url, "--ca-file", str(key)]) == 2  # a key, no cert
        assert "no certificate" in capsys.readouterr().err
    finally:
        container.remove(force=True)
