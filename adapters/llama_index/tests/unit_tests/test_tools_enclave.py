"""EnclaveNotebookToolSpec against a fake sandbox: tool shape, output blocks, errors, sessions."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool
from llama_index.core.tools.tool_spec.base import BaseToolSpec

import enclave_tools.tooling as tooling_module
from enclave_tools import Execution, InvalidInput, SandboxConfig, SandboxDied, SandboxSessions
from enclave_tools.fakes import PNG, FakeSandbox, failed, plotted, printed
from llama_index.tools.enclave import EnclaveNotebookToolSpec


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


def test_description_says_what_its_sandbox_has() -> None:
    config = SandboxConfig(packages=["polars==1.0.0"], install_policy="any")
    (tool,) = EnclaveNotebookToolSpec(sandbox_config=config).to_tool_list()
    assert "polars==1.0.0" in tool.metadata.description
    (default,) = EnclaveNotebookToolSpec().to_tool_list()
    assert tool.metadata.description != default.metadata.description
    tool.metadata.to_openai_tool()  # still within OpenAI's 1024 characters


def test_constructing_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeSandbox] = []
    monkeypatch.setattr(tooling_module, "Sandbox", lambda *a: made.append(FakeSandbox()) or made[-1])
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


def test_no_output_is_a_marker_not_empty_text() -> None:
    execution = Execution()
    (tool,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(execution)).to_tool_list()
    output = tool.call(code="x = 1")
    assert output.blocks == [TextBlock(text="(no output)")]
    assert output.raw_output is execution


def test_images_are_shown_only_when_switched_on() -> None:
    (hidden,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(plotted())).to_tool_list()
    output = hidden.call(code="plot()")
    assert output.blocks == [TextBlock(text="[image/png]")]
    assert output.raw_output.images == [PNG]  # always in the raw output

    (tool,) = EnclaveNotebookToolSpec(sandbox=FakeSandbox(plotted()), include_images=True).to_tool_list()
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


async def test_sandbox_per_context_from_sessions() -> None:
    from llama_index.core.workflow import Context, StartEvent, StopEvent, Workflow, step

    class Noop(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    shared = FakeSandbox()
    sessions = SandboxSessions(factory=FakeSandbox)
    spec = EnclaveNotebookToolSpec(shared, sessions=sessions)
    (tool,) = spec.to_tool_list()
    assert tool.requires_context
    assert "ctx" not in tool.metadata.get_parameters_dict()["properties"]

    first, second = Context(Noop()), Context(Noop())
    await tool.acall(ctx=first, code="a1")
    await tool.acall(ctx=second, code="b1")
    tool.call(ctx=first, code="a2")  # the sync twin reaches the same session
    await tool.acall(code="none")  # no context: the default sandbox

    key = await first.store.get("enclave_notebook_session")
    assert [c[1] for c in sessions.get(key).calls] == ["a1", "a2"]
    assert len(sessions) == 2
    assert [c[1] for c in shared.calls] == ["none"]
    spec.close()
    # Passed in: not the spec's to close.
    assert not shared.closed and not sessions.get(key).closed and len(sessions) == 2
    sessions.close()
