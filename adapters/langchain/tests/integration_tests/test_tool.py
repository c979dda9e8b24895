"""EnclaveNotebookTool on a real sandbox."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage

from enclave_tools import Execution, Sandbox, SandboxSessions
from langchain_enclave import EnclaveNotebookTool

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def call(code: str, id: str = "call_1", **args: object) -> dict:
    return {
        "name": "notebook_executor",
        "args": {"code": code, **args},
        "id": id,
        "type": "tool_call",
    }


def test_state_persists_across_calls(sandbox: Sandbox) -> None:
    tool = EnclaveNotebookTool(sandbox=sandbox)
    assert tool.invoke({"code": "import numpy as np\nx = np.arange(5)"}) == "(no output)"
    assert tool.invoke({"code": "print(int(x.sum()))"}) == "10"


def test_plot_comes_back_as_image(sandbox: Sandbox) -> None:
    message = EnclaveNotebookTool(sandbox=sandbox).invoke(call(PLOT))
    assert isinstance(message.artifact, Execution)
    assert len(message.artifact.images) == 1
    assert message.artifact.images[0].startswith(b"\x89PNG")
    assert "image/png" in message.content


def test_include_images_puts_png_into_content(sandbox: Sandbox) -> None:
    message = EnclaveNotebookTool(sandbox=sandbox, include_images=True).invoke(call(PLOT))
    text, image = message.content
    assert text["type"] == "text"
    assert image["type"] == "image" and image["mime_type"] == "image/png" and image["base64"]


def test_code_error_is_content_and_next_call_works(sandbox: Sandbox) -> None:
    tool = EnclaveNotebookTool(sandbox=sandbox)
    tool.invoke({"code": "y = 5"})
    message = tool.invoke(call("1 / 0"))
    assert message.status == "success"
    assert "ZeroDivisionError" in message.content
    assert message.artifact.status == "error"
    assert tool.invoke({"code": "y * 2"}) == "10"


def test_timeout_argument_interrupts(sandbox: Sandbox) -> None:
    tool = EnclaveNotebookTool(sandbox=sandbox)
    tool.invoke({"code": "z = 3"})
    message = tool.invoke(call("import time\ntime.sleep(30)", timeout=1))
    assert message.artifact.status == "timeout"
    assert "interrupt" in message.content
    assert tool.invoke({"code": "z"}) == "3"


def test_input_fails_fast(sandbox: Sandbox) -> None:
    content = EnclaveNotebookTool(sandbox=sandbox).invoke({"code": "input('name? ')", "timeout": 10})
    assert "StdinNotImplementedError" in content


def test_closed_sandbox_is_an_error_message(sandbox: Sandbox) -> None:
    sandbox.close()
    message = EnclaveNotebookTool(sandbox=sandbox).invoke(call("1"))
    assert message.status == "error"
    assert "SandboxClosed" in message.content


async def test_async_calls_share_state(sandbox: Sandbox) -> None:
    tool = EnclaveNotebookTool(sandbox=sandbox)
    await tool.ainvoke({"code": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})"})
    message = await tool.ainvoke(call("print(df['a'].sum())"))
    assert isinstance(message, ToolMessage)
    assert message.content == "6"


def test_own_sandbox_is_created_lazily_and_closed(sandbox_config) -> None:
    tool = EnclaveNotebookTool(sandbox_config=sandbox_config)
    assert tool.sandboxes.own is None
    try:
        assert tool.invoke({"code": "print('hi')"}) == "hi"
        own = tool.sandboxes.own
        assert own is not None and own.started
    finally:
        tool.close()
    assert not own.started


@pytest.mark.parametrize("sessions", [1], indirect=True)
def test_warm_pool_gives_a_started_kernel(sessions: SandboxSessions) -> None:
    assert sessions.wait_ready(timeout=180)
    tool = EnclaveNotebookTool(sessions=sessions)
    thread = {"configurable": {"thread_id": "warm"}}
    sandbox = sessions.get("warm")
    assert sandbox.started  # started in the background, before the thread's first call
    assert tool.invoke(call("w = 'ready'"), config=thread).content == "(no output)"
    assert sandbox.run("print(w)").text == "ready"
