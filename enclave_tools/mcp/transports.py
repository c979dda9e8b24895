"""How the MCP server is reached: stdio (one client, the default) or Streamable HTTP
(loopback by default; a bearer token required on any other address)."""

from __future__ import annotations

import hmac
import io
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcp.server.fastmcp import FastMCP

from enclave_tools.errors import InvalidInput

__all__ = ["bearer_guard", "is_loopback", "serve_http", "serve_stdio"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def bearer_guard(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` behind a check of ``Authorization: Bearer <token>`` on every HTTP request
    (compared in constant time); others get 401 and never reach the app."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": b"a valid bearer token is required\n"})
                return
        await app(scope, receive, send)

    return guarded


async def serve_http(
    server: FastMCP,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``server`` over Streamable HTTP at ``http://host:port/mcp`` until cancelled.

    A host other than loopback needs a ``token``; with a token every request must carry
    it. ``port=0`` lets the system pick; ``on_ready`` gets the URL once it listens.
    """
    import uvicorn

    if token is not None and not token.strip():
        raise InvalidInput("the bearer token is empty")
    if token is None and not is_loopback(host):
        raise InvalidInput(
            f"serving on {host}, which other machines can reach, needs a bearer token "
            "(set ENCLAVE_TOOLS_MCP_TOKEN or pass --token-file)"
        )
    app: ASGIApp = server.streamable_http_app()
    if token is not None:
        app = bearer_guard(app, token)
    listener = socket.create_server(
        (host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
    )
    bound = listener.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(f"http://{shown}:{bound}{server.settings.streamable_http_path}")
    try:
        await web.serve(sockets=[listener])
    finally:
        listener.close()


class _ProtocolStdout(io.TextIOWrapper):
    """``sys.stdout`` while stdio serves: its ``buffer`` is the protocol's stream (what the
    SDK writes to); text printed by anything else goes to stderr instead."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


async def serve_stdio(server: FastMCP) -> None:
    """Serve ``server`` over this process's stdin and stdout until the client hangs up.

    Only MCP messages reach the real stdout: stray output, of this process (``print``) and
    of any child it starts (file descriptor 1), is sent to stderr.
    """
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    saved = sys.stdout
    sys.stdout = _ProtocolStdout(protocol, encoding="utf-8")
    try:
        await server.run_stdio_async()
    finally:
        sys.stdout = saved
