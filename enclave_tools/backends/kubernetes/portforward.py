"""Reaching a pod's gateway through the API server's port-forward (a laptop, CI)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enclave_tools.backends.kubernetes.manifests import GATEWAY_PORT
from enclave_tools.transport import Endpoint

HANDSHAKE_TIMEOUT = 15.0
"""Seconds the port-forward's websocket handshake may take (the client sets none)."""


@dataclass(frozen=True)
class PortForwardEndpoint(Endpoint):
    """An endpoint reached through the API server's port-forward to a pod.

    ``api`` makes a CoreV1Api on a client of its own for each port-forward:
    ``kubernetes.stream`` patches the client it is given during the handshake, so sharing
    one with other calls (or other forwards) breaks them."""

    pod: str = ""
    namespace: str = ""
    api: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new stream to the pod's gateway port (one port-forward per connection)."""
        from kubernetes.stream import portforward

        assert self.api is not None, "a PortForwardEndpoint needs its api factory"
        core = self.api()
        limit = min(timeout or HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)
        outcome: dict[str, Any] = {}
        abandoned = threading.Event()

        def handshake() -> None:
            try:
                forward = portforward(
                    core.connect_get_namespaced_pod_portforward,
                    self.pod,
                    self.namespace,
                    ports=str(GATEWAY_PORT),
                )
            except Exception as exc:  # noqa: BLE001 - reported to the caller below
                outcome["error"] = exc
                return
            finally:
                core.api_client.close()
            outcome["forward"] = forward
            if abandoned.is_set():
                forward.close()

        worker = threading.Thread(target=handshake, name=f"port-forward-{self.pod}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            abandoned.set()
            if "forward" in outcome:
                outcome["forward"].close()
            raise ConnectionError(f"port-forward to pod {self.pod}: no handshake within {limit:.0f} s")
        if "error" in outcome:
            exc = outcome["error"]
            raise ConnectionError(
                f"port-forward to pod {self.pod} failed: {getattr(exc, 'reason', exc)}"
            ) from exc
        sock = outcome["forward"].socket(GATEWAY_PORT)
        sock = getattr(sock, "_socket", sock)  # newer clients wrap the real socket
        sock.settimeout(timeout)
        return sock

    @property
    def netloc(self) -> str:
        """The ``Host`` header value."""
        return f"{self.pod}:{GATEWAY_PORT}"

    def describe(self) -> str:
        """Where it is, for messages."""
        return f"port-forward to {self.namespace}/{self.pod}:{GATEWAY_PORT}"
