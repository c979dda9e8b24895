"""Whatever arguments a model sends, the tool answers with an output, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_tools.fakes import FakeSandbox, printed
from llama_index.tools.enclave import EnclaveNotebookToolSpec


def call(**kwargs: Any):
    tool = EnclaveNotebookToolSpec(FakeSandbox(printed("ok\n"))).to_tool_list()[0]
    return tool.call(**kwargs)


def test_named_hostile_arguments_get_clear_errors() -> None:
    cases = [
        ({"code": None}, "Invalid arguments"),
        ({"code": 5}, "Invalid arguments"),
        ({}, "Invalid arguments"),
        ({"code": "1", "timeout": -1}, "timeout must be between"),
        ({"code": "1", "timeout": "soon"}, "Invalid arguments"),
        ({"code": "x\0"}, "NUL byte"),
        ({"code": "x = '\ud800'"}, "surrogate"),
    ]
    for kwargs, expected in cases:
        output = call(**kwargs)
        assert output.is_error, kwargs
        assert expected in output.content, (kwargs, output.content)


def test_odd_but_valid_code_runs() -> None:
    for code in ["", "   ", "\ufeffx = 1", "x = 1\r\ny = 2\r\n"]:
        assert not call(code=code).is_error, code
    assert not call(code="1", extra="ignored").is_error


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["code", "timeout", "other"]),
        st.one_of(st.none(), st.text(), st.integers(), st.floats(), st.booleans()),
        max_size=3,
    )
)
def test_fuzzed_arguments_always_give_an_output(kwargs: dict) -> None:
    output = call(**kwargs)
    assert isinstance(output.content, str)
