"""The MCP tools: run a cell, move a file in or out of the workspace, restart, end a session.

Every call belongs to a session, which owns one kernel (from :class:`SandboxSessions`): the
``session`` argument when the caller gives one, else the transport's session (the
``Mcp-Session-Id`` of a stateful Streamable HTTP connection), else the server's default
session (stdio serves one client; stateless HTTP has no session of its own).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import posixpath
import threading
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import (
    BlobResourceContents,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
    ToolAnnotations,
)
from pydantic import Field

from enclave_tools.config import size_in_bytes
from enclave_tools.errors import EnclaveError
from enclave_tools.execution import Execution
from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions
from enclave_tools.tooling import (
    TOOL_NAME,
    NotebookInput,
    describe_failure,
    describe_tool,
    model_text,
)

__all__ = ["DEFAULT_SESSION", "NotebookServer", "TooManySessions", "build_server"]

DEFAULT_SESSION = "default"
"""The session of a call that names none and has no transport session (stdio, stateless HTTP)."""

SESSION_HEADER = "mcp-session-id"

SessionArg = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Which notebook to use: every session has its own kernel and workspace. "
        "Give the same name on every call of one conversation (letters, digits, . _ : -). "
        "Default: this connection's notebook.",
    ),
]
CodeArg = Annotated[str, Field(description=NotebookInput.model_fields["code"].description)]
TimeoutArg = Annotated[
    float | None, Field(default=None, gt=0, description=NotebookInput.model_fields["timeout"].description)
]
Encoding = Annotated[
    str, Field(pattern="^(text|base64)$", description="'text' (UTF-8, the default) or 'base64'")
]

UploadPath = Annotated[
    str, Field(min_length=1, description="Path relative to /workspace, e.g. data/sales.csv")
]
DownloadPath = Annotated[
    str, Field(min_length=1, description="Path relative to /workspace, e.g. out/report.md")
]


class TooManySessions(EnclaveError):
    """A new session was refused: the server already holds its most sessions."""


class NotebookServer:
    """The sessions behind the MCP tools: one kernel per session key, at most
    ``max_sessions`` of them at once. ``sessions`` are the caller's to close. A file
    transfer carries at most the sandboxes' ``file_limit`` (base64 in one JSON message:
    give the sessions a small one)."""

    def __init__(self, sessions: SandboxSessions, *, max_sessions: int = 8) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be 1 or more")
        self.sessions = sessions
        self.max_sessions = max_sessions
        self._lock = threading.Lock()

    def sandbox(self, key: str) -> Sandbox:
        """The sandbox of session ``key``, made if it is new and there is room."""
        with self._lock:
            if key not in self.sessions.keys() and len(self.sessions) >= self.max_sessions:  # noqa: SIM118
                raise TooManySessions(
                    f"this server already holds its most notebook sessions ({self.max_sessions}); "
                    "end one with end_session, or wait until an idle one is closed"
                )
            return self.sessions.get(key)

    def end(self, key: str) -> bool:
        """Close session ``key``'s kernel; return whether it had one."""
        with self._lock:
            known = key in self.sessions.keys()  # noqa: SIM118 - a method, not a dict
        self.sessions.release(key)
        return known


def session_key(session: str | None, ctx: Context | None) -> str:
    """The session a call belongs to: the named one, else the transport's, else the default."""
    if session:
        return f"named:{session}"
    request = ctx.request_context.request if ctx is not None else None
    headers = getattr(request, "headers", None)
    transport_session = headers.get(SESSION_HEADER) if headers is not None else None
    if transport_session:
        return f"transport:{transport_session[:128]}"
    return DEFAULT_SESSION


def execution_content(execution: Execution) -> list[ContentBlock]:
    """What a client gets of a run: the text a model reads, then each plot as an image."""
    blocks: list[ContentBlock] = [TextContent(type="text", text=model_text(execution))]
    blocks += [
        ImageContent(type="image", data=base64.b64encode(png).decode(), mimeType="image/png")
        for png in execution.images
    ]
    return blocks


def file_content(path: str, data: bytes) -> ContentBlock:
    """A file read out of the sandbox: its text if it is UTF-8 text, an image as an image,
    anything else as a base64 resource."""
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if mime.startswith("image/") and mime != "image/svg+xml":
        return ImageContent(type="image", data=base64.b64encode(data).decode(), mimeType=mime)
    if b"\0" not in data:
        try:
            return TextContent(type="text", text=data.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return EmbeddedResource(
        type="resource",
        resource=BlobResourceContents(
            uri=f"file://{posixpath.normpath('/' + path)}",
            mimeType=mime,
            blob=base64.b64encode(data).decode(),
        ),
    )


def _fail(exc: EnclaveError) -> ToolError:
    return ToolError(describe_failure(exc))


def build_server(notebooks: NotebookServer, **settings: Any) -> FastMCP:
    """A FastMCP server with the notebook tools over ``notebooks``; ``settings`` go to
    :class:`FastMCP` (host, port, stateless_http, ...)."""
    server = FastMCP(
        "enclave-tools",
        instructions="A stateful Python notebook in an isolated sandbox. Run code with "
        f"{TOOL_NAME}; variables persist between calls of one session.",
        **{"log_level": "WARNING", **settings},
    )

    async def in_thread(fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    @server.tool(
        name=TOOL_NAME,
        description=describe_tool(notebooks.sessions.config),
        annotations=ToolAnnotations(title="Python notebook", openWorldHint=False),
        structured_output=False,
    )
    async def notebook_executor(
        code: CodeArg,
        timeout: TimeoutArg = None,
        session: SessionArg = None,
        ctx: Context | None = None,
    ) -> list[ContentBlock]:
        try:
            sandbox = notebooks.sandbox(session_key(session, ctx))
            execution = await sandbox.arun(code, timeout=timeout)
        except EnclaveError as exc:
            raise _fail(exc) from exc
        return execution_content(execution)

    @server.tool(
        description="Write a file into the notebook's workspace (/workspace), where the "
        "code can open it. `content` is text, or base64 when `encoding` is 'base64'. "
        "Returns the file's path in the sandbox.",
        structured_output=False,
    )
    async def upload_file(
        path: UploadPath,
        content: Annotated[str, Field(description="The file's contents")],
        encoding: Encoding = "text",
        session: SessionArg = None,
        ctx: Context | None = None,
    ) -> str:
        data = _decode(content, encoding)
        try:
            sandbox = notebooks.sandbox(session_key(session, ctx))
            limit = size_in_bytes(sandbox.config.file_limit)
            if len(data) > limit:
                raise ToolError(
                    f"The file has {len(data):,} bytes; this server takes at most {limit:,} "
                    "per transfer. Nothing was written."
                )
            written = await in_thread(sandbox.write_file, path, data)
        except EnclaveError as exc:
            raise _fail(exc) from exc
        return f"Wrote {len(data):,} bytes to {written}."

    @server.tool(
        description="Read a file from the notebook's workspace (/workspace): text comes back "
        "as text, an image as an image, anything else as base64.",
        annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False),
        structured_output=False,
    )
    async def download_file(
        path: DownloadPath,
        session: SessionArg = None,
        ctx: Context | None = None,
    ) -> list[ContentBlock]:
        try:
            sandbox = notebooks.sandbox(session_key(session, ctx))
            data = await in_thread(sandbox.read_file, path)
        except EnclaveError as exc:
            raise _fail(exc) from exc
        return [file_content(path, data)]

    @server.tool(
        description="Restart the notebook's kernel: every variable, import and loaded object "
        "is lost (files in /workspace stay). Use it when the kernel is stuck or its state is "
        "beyond repair.",
        annotations=ToolAnnotations(destructiveHint=True, openWorldHint=False),
        structured_output=False,
    )
    async def restart_notebook(session: SessionArg = None, ctx: Context | None = None) -> str:
        try:
            sandbox = notebooks.sandbox(session_key(session, ctx))
            await in_thread(sandbox.restart)
        except EnclaveError as exc:
            raise _fail(exc) from exc
        return "The kernel was restarted: a clean slate, every variable was lost. Files in /workspace remain."

    @server.tool(
        description="End a notebook session: its kernel and its workspace files are removed. "
        "The next call of that session starts a fresh notebook.",
        annotations=ToolAnnotations(destructiveHint=True, openWorldHint=False),
        structured_output=False,
    )
    async def end_session(session: SessionArg = None, ctx: Context | None = None) -> str:
        key = session_key(session, ctx)
        known = await in_thread(notebooks.end, key)
        return "The session was ended." if known else "There was no such session; nothing to end."

    return server


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "text":
        return content.encode("utf-8", errors="surrogatepass")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ToolError(f"`content` is not valid base64 ({exc}); nothing was written.") from exc
