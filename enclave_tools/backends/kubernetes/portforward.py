"""Reaching a pod's gateway through the API server's port-forward (a laptop, CI)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from enclave_tools.backends.kubernetes.manifests import GATEWAY_PORT
from enclave_tools.transport import Endpoint


@dataclass(frozen=True)
class PortForwardEndpoint(Endpoint):
    """An endpoint reached through the API server's port-forward to a pod."""

    pod: str = ""
    namespace: str = ""
    api: Any = field(default=None, compare=False, repr=False)

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new stream to the pod's gateway port (one port-forward per connection)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        try:
            forward = portforward(self.api.connect_get_namespaced_pod_portforward, self.pod,
                                  self.namespace, ports=str(GATEWAY_PORT))
        except ApiException as exc:
            raise ConnectionError(f"port-forward to pod {self.pod} failed: {exc.reason}") from exc
        sock = forward.socket(GATEWAY_PORT)
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
