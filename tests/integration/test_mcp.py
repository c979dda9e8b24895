"""`enclave-tools mcp`, driven by the SDK's own client (and LangChain's and LlamaIndex's
MCP adapters) over stdio and Streamable HTTP, with real sandboxes."""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

from enclave_tools.testing import RUN_ID, RUN_LABEL
from enclave_tools.tooling import TOOL_DESCRIPTION

ROOT = Path(__file__).resolve().parents[2]
TEST_LABEL = "io.enclave-tools.test-mcp"
STARTUP = 120.0  # seconds for a server to listen (a watchdog against a hang, not a timing)


def _env(**extra: str) -> dict[str, str]:
    """The server's environment: this checkout first on the path, the engine as here."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "XDG_RUNTIME_DIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.fixture
def server_args(kernel_image: str, docker_engine: Any) -> Iterator[list[str]]:
    """The command line of a server whose sandboxes carry this test's label; after the test,
    none of them may be left."""
    mark = uuid.uuid4().hex[:12]
    yield [
        "-m",
        "enclave_tools.cli",
        "mcp",
        "--image",
        kernel_image,
        "--label",
        f"{RUN_LABEL}={RUN_ID}",
        "--label",
        f"{TEST_LABEL}={mark}",
    ]
    left = docker_engine.containers.list(all=True, filters={"label": f"{TEST_LABEL}={mark}"})
    for container in left:
        container.remove(force=True)
    assert not left, f"the server left {len(left)} sandbox(es) behind"


@asynccontextmanager
async def stdio_session(args: list[str]) -> AsyncIterator[ClientSession]:
    """An initialized client session with a server over stdio."""
    params = StdioServerParameters(command=sys.executable, args=args, env=_env(), cwd=str(ROOT))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    """An initialized client session with a server over Streamable HTTP."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as client,
        streamable_http_client(url, http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@contextmanager
def http_server(args: list[str], *extra: str, **env: str) -> Iterator[str]:
    """A server over HTTP on a free port; yields its URL. Ended by SIGTERM (which removes
    its sandboxes) when the block ends."""
    process = subprocess.Popen(
        [sys.executable, *args, "--transport", "http", "--port", "0", *extra],
        env=_env(**env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=STARTUP)
            if line is None:
                raise AssertionError(f"the server ended before listening:\n{''.join(log)}")
            if line.startswith("MCP server at "):
                yield line.removeprefix("MCP server at ").strip()
                return
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the server did not end within 60 s of SIGTERM") from None


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def run(client: ClientSession, code: str, **more: Any) -> CallToolResult:
    return await client.call_tool("notebook_executor", {"code": code, **more})


async def test_stdio_state_plots_files_and_restart(server_args: list[str]) -> None:
    async with stdio_session(server_args) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert tools["notebook_executor"].description == TOOL_DESCRIPTION
        assert {"upload_file", "download_file", "restart_notebook", "end_session"} <= set(tools)

        assert text_of(await run(session, "x = 21")) == "(no output)"
        assert text_of(await run(session, "x * 2")) == "42"

        plot = await run(session, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
        images = [block for block in plot.content if isinstance(block, ImageContent)]
        assert len(images) == 1 and images[0].mimeType == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")

        written = await session.call_tool("upload_file", {"path": "in/data.csv", "content": "v\n40\n2\n"})
        assert not written.isError and "/workspace/in/data.csv" in text_of(written)
        total = await run(session, "import pandas as pd\nprint(pd.read_csv('in/data.csv')['v'].sum())")
        assert text_of(total) == "42"
        await run(session, "open('out.bin', 'wb').write(bytes(range(256)))")
        blob = await session.call_tool("download_file", {"path": "out.bin"})
        assert base64.b64decode(blob.content[0].resource.blob) == bytes(range(256))  # type: ignore[union-attr]

        restarted = await session.call_tool("restart_notebook", {})
        assert not restarted.isError and "every variable was lost" in text_of(restarted)
        assert "NameError" in text_of(await run(session, "x"))


async def test_http_sessions_are_apart_and_bounded(server_args: list[str]) -> None:
    with http_server(server_args, "--max-sessions", "3") as url:
        async with http_session(url) as first, http_session(url) as second:
            await run(first, "owner = 'first connection'")
            assert text_of(await run(first, "owner")) == "'first connection'"  # the transport's session
            assert "NameError" in text_of(await run(second, "owner"))  # another connection, another kernel

            await run(first, "y = 'a'", session="a")
            assert text_of(await run(second, "y", session="a")) == "'a'"  # a named session, from anywhere
            assert "NameError" in text_of(await run(first, "owner", session="a"))

            refused = await run(first, "1", session="b")  # the third session: first, second, a
            assert refused.isError and "most notebook sessions (3)" in text_of(refused)
            assert not (await first.call_tool("end_session", {"session": "a"})).isError
            assert text_of(await run(first, "1 + 1", session="b")) == "2"


def test_http_off_loopback_refuses_to_start_without_a_token(server_args: list[str]) -> None:
    refused = subprocess.run(
        [sys.executable, *server_args, "--transport", "http", "--host", "0.0.0.0", "--port", "0"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STARTUP,
        check=False,
    )
    assert refused.returncode != 0 and "needs a bearer token" in refused.stderr


async def test_http_checks_the_token_when_one_is_set(server_args: list[str], tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with http_server(server_args, ENCLAVE_TOOLS_MCP_TOKEN=token) as url:
        async with httpx.AsyncClient() as raw:
            for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
                assert (await raw.post(url, headers=wrong, json=ping)).status_code == 401
        async with http_session(url, token) as session:
            assert "notebook_executor" in {tool.name for tool in (await session.list_tools()).tools}

    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with http_server(server_args, "--host", "0.0.0.0", "--token-file", str(token_file)) as url:
        local = url.replace("0.0.0.0", "127.0.0.1")
        async with httpx.AsyncClient() as raw:
            assert (await raw.post(local, json=ping)).status_code == 401
        async with http_session(local, token) as session:
            assert (await session.list_tools()).tools


async def test_langchain_agent_through_langchain_mcp_adapters(server_args: list[str]) -> None:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_mcp_adapters.tools import load_mcp_tools

    from langchain_enclave.scripted import ScriptedChatModel, notebook_call

    async with stdio_session(server_args) as session:
        tools = await load_mcp_tools(session)
        model = ScriptedChatModel.from_script(
            [
                notebook_call("import pandas as pd\ndf = pd.DataFrame({'v': [40, 2]})", call_id="c1"),
                notebook_call(
                    "import matplotlib.pyplot as plt\nplt.bar([0, 1], df['v'])\n"
                    "plt.show()\nprint(df['v'].sum())",
                    call_id="c2",
                ),
                AIMessage("The total is 42."),
            ]
        )
        state = await create_agent(model, tools=tools).ainvoke({"messages": [("user", "Total?")]})

    results = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in results] == ["c1", "c2"]
    blocks = results[1].content
    assert isinstance(blocks, list), blocks
    assert any(b.get("type") == "text" and b.get("text").endswith("\n42") for b in blocks)
    assert any(b.get("type") == "image" and b.get("mime_type") == "image/png" for b in blocks)
    assert state["messages"][-1].content == "The total is 42."


async def test_llamaindex_agent_through_llama_index_tools_mcp(server_args: list[str]) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.tools.mcp import BasicMCPClient, McpToolSpec

    from llama_index.tools.enclave.scripted import answer, notebook_call, scripted_llm

    with http_server(server_args) as url:
        # BasicMCPClient opens a new MCP session for every call: the session argument,
        # fixed for this conversation, keeps one kernel across them.
        spec = McpToolSpec(
            BasicMCPClient(url),
            allowed_tools=["notebook_executor"],
            partial_params_by_tool={"notebook_executor": {"session": "llama-1"}},
        )
        tools = await spec.to_tool_list_async()
        llm = scripted_llm(
            [
                notebook_call("x = 6 * 7", call_id="c1"),
                notebook_call("print(x)", call_id="c2"),
                answer("x is 42."),
            ]
        )
        agent = FunctionAgent(tools=tools, llm=llm)
        handler = agent.run(user_msg="What is x?")
        outputs = []
        async for event in handler.stream_events():
            if type(event).__name__ == "ToolCallResult":
                outputs.append(event.tool_output)
        response = await handler

    assert [o.is_error for o in outputs] == [False, False]
    assert "42" in str(outputs[1].content)
    assert "x is 42." in str(response)
