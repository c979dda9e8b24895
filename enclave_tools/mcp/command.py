"""``enclave-tools mcp``: its arguments and what it runs."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from enclave_tools.backends.options import read_token
from enclave_tools.errors import EnclaveError, InvalidInput

if TYPE_CHECKING:
    from enclave_tools.sessions import SandboxSessions

__all__ = ["TOKEN_ENV", "add_arguments", "run", "sessions_for"]

TOKEN_ENV = "ENCLAVE_TOOLS_MCP_TOKEN"
"""The environment variable that holds the HTTP bearer token (never on a command line)."""


class MissingExtra(EnclaveError):
    """The ``mcp`` extra is not installed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``enclave-tools mcp``."""
    parser.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio (default: one client, e.g. a desktop app) or http (Streamable HTTP)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free one)")
    parser.add_argument(
        "--token-file",
        help=f"file holding the HTTP bearer token (or set {TOKEN_ENV}); required when --host is not loopback",
    )
    parser.add_argument(
        "--stateless",
        action="store_true",
        help="stateless HTTP: calls pick their notebook by the `session` argument only",
    )
    parser.add_argument("--max-sessions", type=int, default=8, help="most notebooks at once (8)")
    parser.add_argument("--warm", type=int, default=0, help="sandboxes kept started for new sessions")
    parser.add_argument(
        "--idle-ttl",
        type=float,
        default=1800.0,
        help="seconds after which an unused session's sandbox is closed (1800)",
    )
    parser.add_argument("--network", default="none", help="'none' (default) or 'bridge'")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--memory", default=None, help="memory limit per sandbox, e.g. 2g")
    parser.add_argument("--image", default=None, help="kernel image (default: the project's)")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra label on every sandbox container (repeatable)",
    )
    parser.add_argument(
        "--file-limit", default="16m", help="largest file moved in or out by a tool call (16m)"
    )


def run(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """Serve until the client hangs up (stdio) or the process is interrupted (HTTP)."""
    try:
        import anyio

        from enclave_tools.mcp.server import NotebookServer, build_server
        from enclave_tools.mcp.transports import serve_http, serve_stdio
    except ImportError as exc:
        raise MissingExtra(
            f"the MCP server needs the mcp extra: pip install 'enclave-tools[mcp]' ({exc})"
        ) from exc

    if args.max_sessions < 1 or args.warm < 0 or args.idle_ttl <= 0:
        raise InvalidInput("--max-sessions must be 1 or more, --warm 0 or more, --idle-ttl positive")
    token = read_token(args.token_file, TOKEN_ENV)
    sessions = sessions_for(args, say)
    # SIGTERM ends the process through the finally below, so no sandbox is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        notebooks = NotebookServer(sessions, max_sessions=args.max_sessions)
        if args.transport == "stdio":
            anyio.run(serve_stdio, build_server(notebooks))
        else:
            server = build_server(notebooks, host=args.host, stateless_http=args.stateless)
            anyio.run(
                lambda: serve_http(
                    server,
                    host=args.host,
                    port=args.port,
                    token=token,
                    on_ready=lambda url: say(f"MCP server at {url}"),
                )
            )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the sandboxes' removal finish
        sessions.close()
    return 0


def sessions_for(args: argparse.Namespace, say: Callable[[str], None]) -> SandboxSessions:
    """The sessions the server hands out, made with the command line's settings (its
    ``config`` is theirs too: the tool's description follows it)."""
    from enclave_tools import Sandbox, SandboxConfig, SandboxSessions

    overrides: dict[str, object] = {"network": args.network, "file_limit": args.file_limit}
    for field in ("timeout", "memory", "image"):
        if getattr(args, field):
            overrides[field] = getattr(args, field)
    overrides["labels"] = dict(_label(text) for text in args.label)
    config = SandboxConfig(**overrides)
    return SandboxSessions(
        config, warm=args.warm, idle_ttl=args.idle_ttl, factory=lambda: Sandbox(config, progress=say)
    )


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidInput(f"--label takes KEY=VALUE, not {text!r}")
    return key, value
