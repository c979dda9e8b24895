"""Execution rendering for a model, and validation of what a caller passes in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from enclave_tools import Execution, ExecutionError, InvalidInput, SandboxConfig
from enclave_tools.checks import check_code, check_timeout
from enclave_tools.execution import clean_text, cut_middle


def test_clean_text_strips_ansi_and_progress_lines():
    assert clean_text("\x1b[31mred\x1b[0m") == "red"
    assert clean_text("10%\r50%\r100%\n") == "100%\n"
    assert clean_text("a\r\nb") == "a\nb"
    assert clean_text("\x1b]0;title\x07x\x07") == "x"
    assert clean_text("bell\x07 and nul\x00") == "bell and nul"


def test_cut_middle_keeps_head_and_tail_and_says_so():
    text = "".join(f"{i}\n" for i in range(10_000))
    cut = cut_middle(text, 1000)
    assert cut.startswith("0\n1\n")
    assert cut.endswith("9999\n")
    assert "characters cut" in cut
    assert len(cut) < 1200
    assert cut_middle("short", 1000) == "short"


def test_text_puts_error_after_output_and_notes_last():
    execution = Execution(
        status="error",
        error=ExecutionError("NameError", "name 'y' is not defined", "NameError: name 'y' is not defined"),
        notes=["Something happened"],
        _transcript=[("stdout", "partial\n")],
    )
    assert execution.text == "partial\nNameError: name 'y' is not defined\n[Something happened]"


def test_text_is_bounded_by_output_limit():
    execution = Execution(output_limit=500, _transcript=[("stdout", "x" * 100_000)])
    assert len(execution.text) < 700


@pytest.mark.parametrize("bad", [None, 3, b"print(1)", ["x"], {"code": "1"}])
def test_code_must_be_a_string(bad):
    with pytest.raises(InvalidInput, match="string"):
        check_code(bad)


def test_code_with_nul_or_lone_surrogate_is_rejected():
    with pytest.raises(InvalidInput, match="NUL"):
        check_code("print(1)\0")
    with pytest.raises(InvalidInput, match="surrogate"):
        check_code("x = '\ud800'")


def test_code_bom_and_crlf_are_normalised():
    assert check_code("\ufeffx = 1\r\ny = 2\r\n") == "x = 1\ny = 2\n"
    assert check_code("   ") == "   "


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, 10**9, "5", True])
def test_bad_timeouts_are_rejected(bad):
    with pytest.raises(InvalidInput):
        check_timeout(bad, 60)


def test_timeout_defaults_and_accepts_numbers():
    assert check_timeout(None, 60) == 60
    assert check_timeout(2, 60) == 2.0


@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats(), st.lists(st.text())))
def test_check_code_either_accepts_text_or_raises_invalid_input(value):
    try:
        result = check_code(value)
    except InvalidInput:
        return
    assert isinstance(result, str) and "\0" not in result


def test_config_defaults_are_safe():
    config = SandboxConfig()
    assert config.network == "none" and not config.egress
    assert config.memory == "2g" and config.pids_limit == 256


@pytest.mark.parametrize(
    "field, value",
    [("memory", "lots"), ("env", {"BAD NAME": "x"}), ("workdir", "relative"), ("cpus", 0), ("extra", 1)],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValidationError):
        SandboxConfig(**{field: value})


def test_to_dict_and_back_keeps_what_a_model_reads():
    import base64
    import json

    from enclave_tools import Result

    png = Result({"image/png": base64.b64encode(b"\x89PNG").decode(), "text/plain": "<Figure>"})
    execution = Execution(
        status="error",
        stdout="out\n",
        results=[png],
        error=ExecutionError("ValueError", "bad", "ValueError: bad"),
        notes=["a note"],
        _transcript=[("stdout", "out\n"), ("result", png)],
    )
    again = Execution.from_dict(json.loads(json.dumps(execution.to_dict())))
    assert again.text == execution.text
    assert again.images == [b"\x89PNG"]
    assert again.error.name == "ValueError" and again.status == "error"


def test_clean_text_is_linear_on_huge_lines():
    # A quadratic regex here once hung a 10 MB print for minutes.
    huge = "x" * 4_000_000
    assert clean_text(huge) == huge
    assert clean_text(huge + "\r" + "done") == "done"
    assert clean_text("kept\r\n") == "kept\n"
