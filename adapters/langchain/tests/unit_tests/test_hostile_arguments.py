"""Whatever arguments a model sends, the tool answers with a message, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import ToolMessage

from enclave_tools.fakes import FakeSandbox, printed
from langchain_enclave import EnclaveNotebookTool


def call(args: Any) -> ToolMessage:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(printed("ok\n")))
    return tool.invoke({"name": "notebook_executor", "args": args, "id": "c1", "type": "tool_call"})


def test_named_hostile_arguments_get_clear_messages() -> None:
    cases = [
        ({"code": None}, "Invalid arguments"),
        ({"code": 5}, "Invalid arguments"),
        ({}, "Invalid arguments"),
        ({"timeout": 3}, "Invalid arguments"),
        ({"code": "1", "timeout": -1}, "timeout must be between"),
        ({"code": "1", "timeout": 1e12}, "timeout must be between"),
        ({"code": "1", "timeout": "soon"}, "Invalid arguments"),
        ({"code": "x\0"}, "NUL byte"),
        ({"code": "x = '\ud800'"}, "surrogate"),
    ]
    for args, expected in cases:
        message = call(args)
        assert message.status == "error", args
        assert expected in str(message.content), (args, message.content)


def test_odd_but_valid_code_runs() -> None:
    for code in ["", "   ", "\ufeffx = 1", "x = 1\r\ny = 2\r\n", "\t\tpass"]:
        assert call({"code": code}).status == "success", code
    assert call({"code": "1", "extra": "ignored"}).status == "success"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["code", "timeout", "other"]),
        st.one_of(st.none(), st.text(), st.integers(), st.floats(), st.booleans(), st.lists(st.integers())),
        max_size=3,
    )
)
def test_fuzzed_arguments_always_give_a_tool_message(args: dict) -> None:
    message = call(args)
    assert isinstance(message, ToolMessage)
    assert message.status in ("success", "error")
