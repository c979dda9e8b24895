"""What a model (or the user's terminal) reads: cleaning, cutting, any mime bundle a kernel
can make rendered without an exception, and the per-run bound on rich outputs."""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_tools import cli
from enclave_tools.errors import EnclaveError
from enclave_tools.execution import Execution, Result, bundle_size, clean_text, for_model
from enclave_tools.protocol import ExecuteCall

ID = "call-1"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def msg(kind: str, content: dict) -> dict:
    return {
        "header": {"msg_type": kind, "msg_id": f"m-{kind}"},
        "parent_header": {"msg_id": ID},
        "metadata": {},
        "content": content,
        "channel": "iopub",
    }


def finished(call: ExecuteCall) -> Execution:
    call.feed(msg("execute_reply", {"status": "ok"}))
    call.feed(msg("status", {"execution_state": "idle"}))
    assert call.done
    return call.execution()


# -- cleaning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a\x9b31mred\x9b0mb", "aredb"),  # 8-bit CSI, whole sequence
        ("x\x9d0;evil title\x07y", "xy"),  # 8-bit OSC
        ("x\x9d0;title\x9cy", "xy"),  # 8-bit OSC ended by 8-bit ST
        ("one\x85two", "onetwo"),  # NEL
        ("\x80\x8f\x91\x9a!", "!"),  # the other C1 controls
        ("\x90dcs string\x9cok", "ok"),  # an 8-bit DCS string, whole
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),  # hyperlink
        ("\x1bPq#0;2;0;0;0\x1b\\after", "after"),  # DCS (sixel)
        ("\x1b(Bplain\x1bc", "plain"),  # charset switch, full reset
        ("\x1b]0;unterminated\nnext line", "\nnext line"),  # cannot swallow what follows
        ("if x \u202e// check\u202c:", "if x // check:"),  # RLO ... PDF
        ("\u2066a\u2067b\u2068c\u2069", "abc"),  # isolates
        ("\u202a\u202b\u202d", ""),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("del\x7f bell\x07 nul\x00", "del bell nul"),
        ("10%\r50%\r100%\n", "100%\n"),
        ("a\r\nb", "a\nb"),
    ],
)
def test_clean_text_removes_what_a_terminal_would_act_on(raw, clean):
    assert clean_text(raw) == clean


def test_clean_text_keeps_text_tabs_newlines_and_bidi_marks():
    text = "col\tcol\nשלום \u200fעולם\u200e and 中文 and émoji 🎉\n"
    assert clean_text(text) == text


def test_for_model_cleans_then_cuts_head_and_tail():
    text = "\x9b2J" + "".join(f"line {i}\x85\n" for i in range(20_000))
    out = for_model(text, 1000)
    assert out.startswith("line 0\nline 1\n")
    assert out.endswith("line 19999\n")
    assert "characters cut" in out
    assert len(out) < 1200
    assert not UNSAFE.search(out)


@given(st.text(), st.integers(min_value=0, max_value=500))
def test_for_model_output_is_always_safe_and_bounded(text, limit):
    out = for_model(text, limit)
    assert not UNSAFE.search(out)
    assert "\x1b" not in out
    assert len(out) <= max(len(text), limit + 120)
    out.encode("utf-8")  # a terminal or an API can always take it


def test_execution_text_is_cleaned_everywhere_it_draws_from():
    result = Result({"text/plain": "value\x9b31m\u202e"})
    execution = Execution(
        status="error",
        error=None,
        notes=["note \x1b]0;title\x07with \x85NEL"],
        results=[result],
        _transcript=[("stdout", "out\x9d0;t\x07\n"), ("result", result)],
    )
    assert execution.text == "out\nvalue\n[note with NEL]"


# -- any bundle renders ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, metadata, expected",
    [
        ({"text/plain": 5}, {}, "5"),
        ({"text/plain": ["a\n", "b"]}, {}, "a\nb"),
        ({"text/plain": {"k": [1, None]}}, {}, '{"k": [1, null]}'),
        ({"text/plain": None}, {}, "[output]"),
        ({"image/png": 7}, {"image/png": [1, 2]}, "[image/png]"),
        ({"image/png": "%%% not base64 ✓"}, "meta", "[image/png]"),
        ({"image/png": "AAAA"}, {"image/png": {"width": "\x9b2J", "height": 2}}, "[image/png]"),
        (5, None, "[output]"),
        (["text/plain"], 3, "[output]"),
    ],
)
def test_hostile_bundles_render(data, metadata, expected):
    result = Result(data=data, metadata=metadata)
    execution = Execution(results=[result], _transcript=[("result", result)])
    assert execution.text == expected
    assert str(execution) == expected
    execution.images  # noqa: B018 - must not raise
    again = Execution.from_dict(json.loads(json.dumps(execution.to_dict())))
    assert again.text == expected


def test_a_bundle_made_by_the_kernel_over_the_wire_renders():
    call = ExecuteCall(ID, 10_000, 8000)
    for content in (
        {"data": {"text/plain": 5}, "metadata": []},
        {"data": {"text/plain": ["x", 1]}, "metadata": {}, "transient": {"display_id": ["list"]}},
        {"data": "not a dict"},
        {"data": {"image/png": {"not": "a string"}}, "metadata": {"image/png": "wide"}},
    ):
        call.feed(msg("display_data", content))
    call.feed(msg("update_display_data", {"data": {"a": 1}, "transient": {"display_id": {"d": 1}}}))
    execution = finished(call)
    assert execution.text == '5\n["x", 1]\n[image/png]'
    assert execution.images == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
mime_keys = st.sampled_from(
    [
        "text/plain",
        "text/html",
        "text/markdown",
        "image/png",
        "image/jpeg",
        "image/svg+xml",
        "application/json",
    ]
) | st.text(max_size=10)
bundles = st.dictionaries(mime_keys, json_values, max_size=6) | json_values


@settings(max_examples=300, deadline=None)
@given(bundles, bundles | json_values, st.booleans())
def test_any_json_bundle_never_crashes_rendering(data, metadata, main):
    result = Result(data=data, metadata=metadata, is_main_result=main)
    execution = Execution(results=[result], _transcript=[("result", result), ("stdout", "x")])
    for rendered in (execution.text, str(execution)):
        assert isinstance(rendered, str)
        assert not UNSAFE.search(rendered)
    assert all(isinstance(image, bytes) for image in execution.images)
    record = json.loads(json.dumps(execution.to_dict()))
    assert Execution.from_dict(record).text == execution.text
    for accessor in ("text", "html", "markdown", "svg", "png", "jpeg", "json"):
        getattr(result, accessor)
    result.formats()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["display_data", "execute_result", "update_display_data", "clear_output"]),
            json_values,
        ),
        max_size=8,
    )
)
def test_any_display_message_content_never_crashes_the_call(messages):
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=4096)
    for kind, content in messages:
        call.feed(msg(kind, content if isinstance(content, dict) else {"data": content}))
    execution = finished(call)
    assert isinstance(execution.text, str)
    execution.images  # noqa: B018


@given(json_values)
def test_from_dict_takes_any_record(record):
    execution = Execution.from_dict(record if isinstance(record, dict) else {"results": record})
    assert isinstance(execution.text, str)


# -- rich outputs are bounded per run ----------------------------------------------------


def png_bundle(size: int) -> dict:
    return {
        "data": {"image/png": base64.b64encode(b"\x89PNG" + b"\0" * size).decode(), "text/plain": "<Figure>"},
        "metadata": {},
    }


def test_rich_outputs_past_the_limit_are_dropped_whole_and_counted():
    limit = 5 * 2**20
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=limit)
    for _ in range(40):
        call.feed(msg("display_data", png_bundle(2**20)))
    execution = finished(call)
    kept = sum(bundle_size(r.data, r.metadata) for r in execution.results)
    assert kept <= limit
    assert len(execution.results) == 3  # 1.33 MiB of base64 each
    assert len(execution.images) == 3
    assert all(len(image) == 2**20 + 4 for image in execution.images)
    assert "37 rich outputs (49.4 MB) were dropped: the per-run limit is 5.0 MB" in execution.text


def test_a_small_output_after_a_dropped_one_is_still_kept():
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=2**20)
    call.feed(msg("display_data", png_bundle(2**20)))
    call.feed(msg("execute_result", {"data": {"text/plain": "42"}, "metadata": {}}))
    execution = finished(call)
    assert execution.text.startswith("42\n[1 rich output (")


def test_clear_output_gives_the_budget_back():
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=2 * 2**20)
    for _ in range(10):  # an animation: each frame replaces the last
        call.feed(msg("clear_output", {"wait": True}))
        call.feed(msg("display_data", png_bundle(2**20)))
    execution = finished(call)
    assert len(execution.images) == 1
    assert "dropped" not in execution.text


def test_display_updates_are_bounded_too():
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=2 * 2**20)
    small = {"data": {"text/plain": "0%"}, "metadata": {}, "transient": {"display_id": "bar"}}
    call.feed(msg("display_data", small))
    big = dict(png_bundle(3 * 2**20), transient={"display_id": "bar"})
    call.feed(msg("update_display_data", big))
    call.feed(
        msg(
            "update_display_data",
            {"data": {"text/plain": "100%"}, "metadata": {}, "transient": {"display_id": "bar"}},
        )
    )
    execution = finished(call)
    assert execution.text.startswith("100%\n[1 rich output (")
    assert call.log.rich_kept <= 2 * 2**20


def test_many_tiny_bundles_are_bounded_by_their_overhead():
    call = ExecuteCall(ID, 10_000, 8000, rich_limit=2**20)
    for _ in range(10_000):
        call.feed(msg("display_data", {"data": {}, "metadata": {}}))
    execution = finished(call)
    assert len(execution.results) <= 2**20 // 512
    assert "rich outputs" in execution.text


def test_an_image_is_decoded_once_until_its_data_changes():
    result = Result({"image/png": base64.b64encode(b"one").decode()})
    assert result.png is result.png
    result.data = {"image/png": base64.b64encode(b"two").decode()}
    assert result.png == b"two"
    result.data["image/png"] = base64.b64encode(b"three").decode()
    assert result.png == b"three"
    execution = Execution(results=[result])
    assert execution.images[0] is execution.images[0]


# -- the CLI prints only cleaned text ----------------------------------------------------


def test_cli_cleans_errors_from_the_sandbox(monkeypatch, capsys):
    def fail(_args):
        raise EnclaveError("died\x1b]0;owned\x07 \x9b2J\u202elogs")

    monkeypatch.setattr(cli, "_ps", fail)
    assert cli.main(["ps"]) == cli.EXIT_ENCLAVE
    assert capsys.readouterr().err == "enclave-tools: died logs\n"


def test_cli_show_prints_cleaned_output(capsys, tmp_path):
    execution = Execution(_transcript=[("stdout", "hi\x9d0;t\x07\x85 there\u2066")])
    cli._show(execution, tmp_path, [0])
    assert capsys.readouterr().out == "hi there\n"


# -- the tool's description ------------------------------------------------------------


def test_a_long_package_list_keeps_the_description_within_openais_limit():
    from enclave_tools.config import SandboxConfig
    from enclave_tools.tooling import DESCRIPTION_LIMIT, describe_tool

    packages = [f"package-number-{i}>=1.{i}" for i in range(50)]
    allowed = [f"allowed-package-{i}" for i in range(50)]
    config = SandboxConfig(packages=packages, install_policy=allowed)
    described = describe_tool(config)
    assert len(described) <= DESCRIPTION_LIMIT == 1024
    assert described.endswith("run it again.")  # cut in the lists, not at the end
    assert "package-number-0>=1.0" in described and "and 4" in described  # "and N more"
    assert "allowed-package-0" in described and "a refused install lists them all" in described
    short = describe_tool(SandboxConfig(packages=["polars"], install_policy=["a", "b"]))
    assert "and also polars." in short and "`%pip install NAME`: a, b (" in short
    one_long = describe_tool(SandboxConfig(packages=["x" * 200 + "==1"]))
    assert "and also 1 more package." in one_long
