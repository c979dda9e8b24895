"""Images fitted for a model, and tool-result images placed for a model's API."""

from __future__ import annotations

import base64
import io

from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from PIL import Image

from enclave_tools.images import fit_image, png_size
from langchain_enclave.middleware import images_in_tool_results, place_tool_images


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_large_plot_is_scaled_to_max_side_and_a_small_one_kept() -> None:
    scaled, reason = fit_image(png(3000, 1000), 1024)
    assert reason is None and scaled is not None and png_size(scaled) == (1024, 341)
    small = png(300, 200)
    assert fit_image(small, 1024) == (small, None)
    assert fit_image(png(3000, 1000), None)[0] is not None  # None: kept as it is


def test_hostile_pngs_are_left_out_with_a_reason() -> None:
    assert fit_image(b"GIF89a", 1024) == (None, "not a valid PNG")
    assert fit_image(png(300, 200)[:60], 1024) == (None, "the PNG could not be read")
    huge_header = png(10, 10)[:16] + (100_000).to_bytes(4, "big") * 2 + png(10, 10)[24:]
    image, reason = fit_image(huge_header, 1024)
    assert image is None and "too large" in str(reason)


def image_block() -> dict:
    return {"type": "image", "base64": base64.b64encode(png(4, 4)).decode(), "mime_type": "image/png"}


def test_parallel_tool_results_keep_their_order_and_images_follow_them() -> None:
    calls = [{"name": "notebook_executor", "args": {}, "id": i} for i in ("a", "b")]
    messages = [
        HumanMessage("plot twice"),
        AIMessage("", tool_calls=calls),
        ToolMessage([{"type": "text", "text": "one"}, image_block()], tool_call_id="a"),
        ToolMessage([{"type": "text", "text": "two"}, image_block()], tool_call_id="b"),
        AIMessage("done"),
    ]
    placed = place_tool_images(messages, in_tool=False)
    assert [type(m).__name__ for m in placed] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
        "HumanMessage",
        "AIMessage",
    ]
    assert placed[2].content.startswith("one") and isinstance(placed[3].content, str)
    assert [b["type"] for b in placed[4].content] == ["text", "image", "image"]
    assert messages[2].content[1]["type"] == "image"  # the history itself is not changed
    assert place_tool_images(messages, in_tool=True) == messages


def test_which_apis_take_images_in_tool_results() -> None:
    assert not images_in_tool_results(ChatOpenAI(model="gpt-4o-mini", api_key="x"))
    assert images_in_tool_results(ChatOpenAI(model="gpt-4o-mini", api_key="x", use_responses_api=True))
    assert images_in_tool_results(ChatAnthropic(model="claude-sonnet-4-6", api_key="x"))
    assert images_in_tool_results(ChatAnthropic(model="claude-sonnet-4-6", api_key="x").bind_tools([]))
    assert not images_in_tool_results(object())
