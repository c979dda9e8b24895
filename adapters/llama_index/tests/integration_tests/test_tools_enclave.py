"""EnclaveNotebookToolSpec on a real sandbox."""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.workflow import Context

from enclave_tools import Sandbox, SandboxSessions
from llama_index.tools.enclave import EnclaveNotebookToolSpec
from llama_index.tools.enclave.base import SESSION_KEY

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def notebook(sandbox: Sandbox):
    (tool,) = EnclaveNotebookToolSpec(sandbox).to_tool_list()
    return tool


def test_state_persists_across_calls(sandbox: Sandbox) -> None:
    tool = notebook(sandbox)
    assert tool.call(code="import numpy as np\nx = np.arange(5)").content == "(no output)"
    assert tool.call(code="print(int(x.sum()))").content == "10"


async def test_async_state_persists(sandbox: Sandbox) -> None:
    tool = notebook(sandbox)
    await tool.acall(code="import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})")
    assert (await tool.acall(code="print(df['a'].sum())")).content == "6"


def test_plot_comes_back_as_image_block(sandbox: Sandbox) -> None:
    (tool,) = EnclaveNotebookToolSpec(sandbox, include_images=True).to_tool_list()
    output = tool.call(code=PLOT)
    text, image = output.blocks
    assert isinstance(text, TextBlock) and "image/png" in text.text
    assert isinstance(image, ImageBlock)
    assert image.resolve_image().read().startswith(b"\x89PNG")
    assert output.raw_output.images[0] == image.resolve_image().read()


def test_code_error_is_content_and_next_call_works(sandbox: Sandbox) -> None:
    tool = notebook(sandbox)
    tool.call(code="y = 5")
    output = tool.call(code="1 / 0")
    assert not output.is_error and "ZeroDivisionError" in output.content
    assert tool.call(code="y * 2").content == "10"


def test_closed_sandbox_is_an_error_output(sandbox: Sandbox) -> None:
    sandbox.close()
    output = notebook(sandbox).call(code="1")
    assert output.is_error and "SandboxClosed" in output.content


def test_own_sandbox_is_created_lazily_and_closed(sandbox_config) -> None:
    with EnclaveNotebookToolSpec(sandbox_config=sandbox_config) as spec:
        (tool,) = spec.to_tool_list()
        assert spec.sandboxes.own is None
        assert tool.call(code="print('hi')").content == "hi"
        own = spec.sandboxes.own
        assert own.started
    assert not own.started


def test_one_sandbox_shared_with_langchain(sandbox: Sandbox) -> None:
    """A variable set through the LangChain tool is read through the LlamaIndex tool."""
    import langchain_enclave  # the repo's other adapter (make venv installs both)

    lc_tool = langchain_enclave.EnclaveNotebookTool(sandbox=sandbox)
    li_tool = notebook(sandbox)

    lc_tool.invoke({"code": "shared = {'from': 'langchain'}"})
    assert li_tool.call(code="print(shared['from'])").content == "langchain"
    li_tool.call(code="shared['back'] = 'llama_index'")
    assert lc_tool.invoke({"code": "print(shared['back'])"}) == "llama_index"


@pytest.mark.parametrize("sessions", [1], indirect=True)
async def test_warm_pool_gives_a_started_kernel(sessions: SandboxSessions) -> None:
    assert sessions.wait_ready(timeout=180)
    (tool,) = EnclaveNotebookToolSpec(sessions=sessions).to_tool_list()
    ctx = Context(FunctionAgent(tools=[tool], llm=MockFunctionCallingLLM()))
    await ctx.store.set(SESSION_KEY, "warm")  # the id the tool would pick for this context
    sandbox = sessions.get("warm")
    assert sandbox.started  # started in the background, before the context's first call
    assert (await tool.acall(ctx=ctx, code="w = 'ready'")).content == "(no output)"
    assert sandbox.run("print(w)").text == "ready"
