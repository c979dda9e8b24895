"""EnclaveNotebookTool against a fake sandbox: arguments, output shaping, errors, sessions."""

from __future__ import annotations

import base64

import pytest
from langchain_core.messages import ToolMessage

import enclave_tools.tooling as tooling_module
from enclave_tools import Execution, InvalidInput, SandboxConfig, SandboxDied, SandboxSessions
from enclave_tools.fakes import PNG, FakeSandbox, failed, plotted, printed
from langchain_enclave import EnclaveNotebookTool


def call(code: str, **args: object) -> dict:
    return {
        "name": "notebook_executor",
        "args": {"code": code, **args},
        "id": "call_1",
        "type": "tool_call",
    }


def test_constructing_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    monkeypatch.setattr(tooling_module, "Sandbox", lambda *a: made.append(a) or FakeSandbox())
    tool = EnclaveNotebookTool()
    assert made == []
    tool.invoke({"code": "1"})
    tool.invoke({"code": "2"})
    assert len(made) == 1  # created lazily, once


def test_schema_and_description() -> None:
    tool = EnclaveNotebookTool()
    schema = tool.tool_call_schema.model_json_schema()
    assert schema["required"] == ["code"]
    assert set(schema["properties"]) == {"code", "timeout"}  # the injected config is hidden
    for phrase in ("persist", "numpy", "pandas", "matplotlib", "plt.show()", "network", "input()"):
        assert phrase in tool.description
    assert tool.name == "notebook_executor"
    assert tool.handle_tool_error is True


def test_description_says_what_its_sandbox_has() -> None:
    config = SandboxConfig(packages=["polars==1.0.0"], install_policy="any")
    tool = EnclaveNotebookTool(sandbox_config=config)
    assert "polars==1.0.0" in tool.description and "pip install" in tool.description
    assert tool.description != EnclaveNotebookTool().description
    shared = EnclaveNotebookTool(sandbox=FakeSandbox(config=config))
    assert shared.description == tool.description
    assert EnclaveNotebookTool(sandbox_config=config, description="mine").description == "mine"


def test_a_subclass_keeps_its_own_description() -> None:
    class Mine(EnclaveNotebookTool):
        description: str = "my own words"

    assert Mine(sandbox_config=SandboxConfig(packages=["polars"])).description == "my own words"


def test_a_sandbox_set_after_construction_is_the_one_used() -> None:
    # A sandbox of its own would fail at once (no such image), never start a container.
    tool = EnclaveNotebookTool(
        sandbox_config=SandboxConfig(image="enclave-tools/no-such:0", build_image=False)
    )
    copy = tool.model_copy(update={"sandbox": FakeSandbox(printed("from the copy's\n"))})
    tool.sandbox = FakeSandbox(printed("from the one set\n"))
    assert tool.invoke({"code": "1"}).strip() == "from the one set"
    assert copy.invoke({"code": "1"}).strip() == "from the copy's"


def test_invoke_with_args_returns_text() -> None:
    sandbox = FakeSandbox(printed("42\n"))
    tool = EnclaveNotebookTool(sandbox=sandbox)
    assert tool.invoke({"code": "print(42)", "timeout": 5}) == "42"
    assert sandbox.calls == [("run", "print(42)", 5)]


def test_tool_call_gives_text_and_execution_artifact() -> None:
    execution = printed("hello\n")
    message = EnclaveNotebookTool(sandbox=FakeSandbox(execution)).invoke(call("print('hello')"))
    assert isinstance(message, ToolMessage)
    assert message.content == "hello"
    assert message.artifact is execution
    assert message.status == "success"


def test_no_output_is_a_marker_not_empty_content() -> None:
    execution = Execution()
    message = EnclaveNotebookTool(sandbox=FakeSandbox(execution)).invoke(call("x = 1"))
    assert message.content == "(no output)"
    assert message.artifact is execution


def test_images_stay_in_artifact_by_default() -> None:
    message = EnclaveNotebookTool(sandbox=FakeSandbox(plotted())).invoke(call("plot()"))
    assert message.content == "[image/png]"
    assert message.artifact.images == [PNG]


def test_include_images_adds_image_blocks_after_text() -> None:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(plotted()), include_images=True)
    message = tool.invoke(call("plot()"))
    assert message.content == [
        {"type": "text", "text": "[image/png]"},
        {"type": "image", "base64": base64.b64encode(PNG).decode(), "mime_type": "image/png"},
    ]


def test_include_images_without_images_is_plain_text() -> None:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(printed("1\n")), include_images=True)
    assert tool.invoke(call("print(1)")).content == "1"


def test_code_error_is_ordinary_content() -> None:
    message = EnclaveNotebookTool(sandbox=FakeSandbox(failed())).invoke(call("1/0"))
    assert message.status == "success"
    assert "ZeroDivisionError" in message.content
    assert message.artifact.status == "error"


def test_sandbox_failure_becomes_error_tool_message() -> None:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(SandboxDied("The sandbox died: OOM.")))
    message = tool.invoke(call("x"))
    assert message.status == "error"
    assert message.content == "The notebook sandbox failed (SandboxDied): The sandbox died: OOM."
    # Without a tool call the message is the result (not an exception) as well.
    assert "SandboxDied" in tool.invoke({"code": "x"})


def test_invalid_input_becomes_error_tool_message() -> None:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(InvalidInput("code contains a NUL byte")))
    message = tool.invoke(call("\0"))
    assert message.status == "error"
    assert message.content.startswith("Invalid input, the code was not run: code contains a NUL byte")


def test_handle_tool_error_false_raises() -> None:
    from langchain_core.tools import ToolException

    tool = EnclaveNotebookTool(sandbox=FakeSandbox(SandboxDied("gone")), handle_tool_error=False)
    with pytest.raises(ToolException, match="gone"):
        tool.invoke(call("x"))


def test_missing_code_is_a_message_not_an_exception() -> None:
    sandbox = FakeSandbox()
    answer = EnclaveNotebookTool(sandbox=sandbox).invoke({"timeout": 1})
    assert "Invalid arguments" in answer and "code" in answer
    assert sandbox.calls == []


async def test_async_uses_arun() -> None:
    sandbox = FakeSandbox(printed("7\n"))
    message = await EnclaveNotebookTool(sandbox=sandbox).ainvoke(call("print(7)", timeout=2.5))
    assert message.content == "7"
    assert isinstance(message.artifact, Execution)
    assert sandbox.calls == [("arun", "print(7)", 2.5)]


async def test_async_sandbox_failure_becomes_error_tool_message() -> None:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(SandboxDied("gone")))
    message = await tool.ainvoke(call("x"))
    assert message.status == "error"
    assert "gone" in message.content


def test_sandbox_per_thread_id_from_sessions() -> None:
    shared = FakeSandbox()
    sessions = SandboxSessions(factory=FakeSandbox)
    tool = EnclaveNotebookTool(sandbox=shared, sessions=sessions)

    tool.invoke(call("a1"), config={"configurable": {"thread_id": "a"}})
    tool.invoke(call("b1"), config={"configurable": {"thread_id": "b"}})
    tool.invoke(call("a2"), config={"configurable": {"thread_id": "a"}})
    tool.invoke(call("none"))  # no thread_id: the default sandbox

    assert sorted(sessions.keys()) == ["a", "b"]
    assert [c[1] for c in sessions.get("a").calls] == ["a1", "a2"]
    assert [c[1] for c in sessions.get("b").calls] == ["b1"]
    assert [c[1] for c in shared.calls] == ["none"]
    tool.close()
    # Passed in: not the tool's to close.
    assert not shared.closed and not sessions.get("a").closed and len(sessions) == 2
    sessions.close()


async def test_async_sandbox_per_thread_id_from_sessions() -> None:
    sessions = SandboxSessions(factory=FakeSandbox)
    tool = EnclaveNotebookTool(sessions=sessions)
    await tool.ainvoke(call("x"), config={"configurable": {"thread_id": 7}})
    assert sessions.get("7").calls == [("arun", "x", None)]
    assert tool.sandboxes.own is None  # every call had a thread_id
    await tool.aclose()
    assert not sessions.get("7").closed
    await sessions.aclose()


def test_sessions_without_thread_id_use_own_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    own = FakeSandbox()
    monkeypatch.setattr(tooling_module, "Sandbox", lambda *a: own)
    sessions = SandboxSessions(factory=FakeSandbox)
    tool = EnclaveNotebookTool(sessions=sessions)
    tool.invoke({"code": "1"})
    assert own.calls == [("run", "1", None)] and len(sessions) == 0
    tool.close()
    assert own.closed


def test_context_manager_closes_own_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    own = FakeSandbox()
    monkeypatch.setattr(tooling_module, "Sandbox", lambda *a: own)
    with EnclaveNotebookTool() as tool:
        tool.invoke({"code": "1"})
    assert own.closed
