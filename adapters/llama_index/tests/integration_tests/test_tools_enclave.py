"""EnclaveNotebookToolSpec on a real sandbox."""

from __future__ import annotations

import pytest
from enclave_tools import Sandbox
from llama_index.core.base.llms.types import ImageBlock, TextBlock

from llama_index.tools.enclave import EnclaveNotebookToolSpec

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def notebook(sandbox: Sandbox):
    (tool,) = EnclaveNotebookToolSpec(sandbox).to_tool_list()
    return tool


def test_state_persists_across_calls(sandbox: Sandbox) -> None:
    tool = notebook(sandbox)
    tool.call(code="import numpy as np\nx = np.arange(5)")
    assert tool.call(code="print(int(x.sum()))").content == "10"


async def test_async_state_persists(sandbox: Sandbox) -> None:
    tool = notebook(sandbox)
    await tool.acall(code="import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})")
    assert (await tool.acall(code="print(df['a'].sum())")).content == "6"


def test_plot_comes_back_as_image_block(sandbox: Sandbox) -> None:
    output = notebook(sandbox).call(code=PLOT)
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
        assert spec._own_sandbox is None
        assert tool.call(code="print('hi')").content == "hi"
        own = spec._own_sandbox
        assert own.started
    assert not own.started


def test_one_sandbox_shared_with_langchain(sandbox: Sandbox) -> None:
    """A variable set through the LangChain tool is read through the LlamaIndex tool."""
    langchain_enclave = pytest.importorskip("langchain_enclave")
    lc_tool = langchain_enclave.EnclaveNotebookTool(sandbox=sandbox)
    li_tool = notebook(sandbox)

    lc_tool.invoke({"code": "shared = {'from': 'langchain'}"})
    assert li_tool.call(code="print(shared['from'])").content == "langchain"
    li_tool.call(code="shared['back'] = 'llama_index'")
    assert lc_tool.invoke({"code": "print(shared['back'])"}) == "llama_index"
