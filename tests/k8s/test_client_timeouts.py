"""Client-side timeouts: an API server that accepts connections and never answers must not
hang a start, a call or a port-forward handshake (``timeoutSeconds`` is the server's only)."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client

from enclave_tools import SandboxConfig, SandboxStartFailed
from enclave_tools.backends.kubernetes import KubernetesBackend, PortForwardEndpoint


@pytest.fixture
def silent_server():
    """A TCP server that accepts and then says nothing; its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _within(seconds, call):
    """Run ``call`` in a thread; fail if it has not returned after ``seconds`` (a hang)."""
    outcome: list = []

    def run():
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s: no client-side timeout"
    return outcome[0]


def test_a_silent_api_server_fails_the_start(silent_server):
    backend = KubernetesBackend(
        "ns",
        api_client=client.ApiClient(client.Configuration(host=silent_server)),
        connect="pod_ip",
        image="img",
    )
    backend.kube.timeouts = (1, 0.5)
    outcome = _within(60, lambda: backend.start(SandboxConfig(startup_timeout=5), "s1"))
    assert isinstance(outcome, SandboxStartFailed) and "did not answer" in str(outcome)


def test_a_silent_port_forward_handshake_fails(silent_server):
    def core():
        return client.CoreV1Api(client.ApiClient(client.Configuration(host=silent_server)))

    endpoint = PortForwardEndpoint(token="t", pod="p", namespace="ns", api=core)
    outcome = _within(30, lambda: endpoint.connect(timeout=1))
    assert isinstance(outcome, ConnectionError) and "no handshake" in str(outcome)
