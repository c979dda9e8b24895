"""EnclaveNotebookToolSpec against a fake sandbox: tool shape, output blocks, errors, sessions."""

from __future__ import annotations

import pytest
from enclave_tools import Execution, InvalidInput, SandboxDied
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool
from llama_index.core.tools.tool_spec.base import BaseToolSpec

import llama_index.tools.enclave.base as base_module
from llama_index.tools.enclave import EnclaveNotebookToolSpec
from tests.unit_tests.fakes import PNG, FakeSandbox, failed, plotted, printed


def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in EnclaveNotebookToolSpec.__mro__]
    assert BaseToolSpec.__name__ in names_of_base_classes


def test_namespace_package_layout() -> None:
    from pathlib import Path

    import llama_index.tools.enclave

    # PEP 420: llama_index/ and llama_index/tools/ are namespaces shared with llama-index-core.
    package = Path(llama_index.tools.enclave.__file__).parent
    assert not (package.parent / "__init__.py").exists()
    assert not (package.parent.parent / "__init__.py").exists()
    assert (package / "py.typed").exists()


def test_one_tool_with_sync_and_async_functions() -> None:
    spec = EnclaveNotebookToolSpec(sandbox=FakeSandbox())
    assert spec.spec_functions == [("notebook_executor", "anotebook_executor")]
    (tool,) = spec.to_tool_list()
    assert isinstance(tool, FunctionTool)
    assert tool.metadata.name == "notebook_executor"
    params = tool.metadata.get_parameters_dict()
    assert params["required"] == ["code"] and set(params["properties"]) == {"code", "timeout"}
    assert not tool.requires_context
    tool.metadata.to_openai_tool()  # description within OpenAI's 1024 characters
    for phrase in ("persist", "numpy", "pandas", "matplotlib", "plt.show()", "network", "input()"):
        assert phrase in tool.metadata.description


def test_constructing_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeSandbox] = []
    monkeypatch.setattr(base_module, "Sandbox", lambda *a: made.append(FakeSandbox()) or made[-1])
    spec = EnclaveNotebookToolSpec()
    (tool,) = spec.to_tool_list()
    assert made == []
    tool.call(code="1")
    tool.call(code="2")
    assert len(made) == 1
    spec.close()
    assert made[0].closed


def test_output_is_text_block_and_execution_in_raw_output() -> None:
    execution = printed("42\n")
    sandbox = FakeSandbox(execution)
    (tool,) = EnclaveNotebookToolSpec(sandbox=sandbox).to_tool_list()
    output = tool.call(code="print(42)", timeout=3)
    assert output.blocks == [TextBlock(text="42")]
    assert output.content == "42"
    assert output.raw_output is execution
    assert not output.is_error
    assert sandbox.calls == [("run", "print(42)", 3)]


def test_images_become_image_blocks() -> None:
    (tool,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(plotted())).to_tool_list()
    output = tool.call(code="plot()")
    text, image = output.blocks
    assert isinstance(text, TextBlock) and text.text == "[image/png]"
    assert isinstance(image, ImageBlock) and image.image_mimetype == "image/png"
    assert image.resolve_image().read() == PNG


def test_code_error_is_content() -> None:
    (tool,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(failed())).to_tool_list()
    output = tool.call(code="1/0")
    assert not output.is_error
    assert "ZeroDivisionError" in output.content
    assert output.raw_output.status == "error"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            SandboxDied("The sandbox died: OOM."),
            "The notebook sandbox failed (SandboxDied): The sandbox died: OOM.",
        ),
        (
            InvalidInput("code contains a NUL byte"),
            "Invalid input, the code was not run: code contains a NUL byte",
        ),
    ],
)
async def test_sandbox_failure_is_an_error_output(error: Exception, message: str) -> None:
    (tool,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(error)).to_tool_list()
    for output in (tool.call(code="x"), await tool.acall(code="x")):
        assert output.is_error
        assert output.content == message
        assert output.exception is error
        assert output.raw_input == {"args": (), "kwargs": {"code": "x"}}


async def test_async_uses_arun() -> None:
    sandbox = FakeSandbox(printed("7\n"))
    (tool,) = EnclaveNotebookToolSpec(sandbox=sandbox).to_tool_list()
    output = await tool.acall(code="print(7)")
    assert output.content == "7"
    assert isinstance(output.raw_output, Execution)
    assert sandbox.calls == [("arun", "print(7)", None)]


async def test_sandbox_per_context() -> None:
    from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step

    class Noop(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    shared = FakeSandbox()
    made: dict[str, FakeSandbox] = {}
    spec = EnclaveNotebookToolSpec(
        shared, sandbox_factory=lambda key: made.setdefault(key, FakeSandbox())
    )
    (tool,) = spec.to_tool_list()
    assert tool.requires_context
    assert "ctx" not in tool.metadata.get_parameters_dict()["properties"]

    first, second = Context(Noop()), Context(Noop())
    await tool.acall(ctx=first, code="a1")
    await tool.acall(ctx=second, code="b1")
    await tool.acall(ctx=first, code="a2")
    await tool.acall(code="none")  # no context: the default sandbox

    key = await first.store.get("enclave_notebook_session")
    assert [c[1] for c in made[key].calls] == ["a1", "a2"]
    assert len(made) == 2
    assert [c[1] for c in shared.calls] == ["none"]
    spec.close()
    assert all(s.closed for s in made.values()) and not shared.closed
