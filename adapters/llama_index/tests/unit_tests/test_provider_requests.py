"""The requests llama-index-llms-openai builds (Chat Completions and Responses) for an agent
whose notebook tool shows plots, recorded by a loopback server and checked with the openai
SDK's request types (see fake_providers); and the README's two-turn conversation."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.memory import Memory
from llama_index.core.workflow import Context
from llama_index.llms.openai import OpenAI, OpenAIResponses
from PIL import Image

from enclave_tools import Execution
from enclave_tools.execution import Result
from enclave_tools.fakes import FakeSandbox
from enclave_tools.images import png_size
from llama_index.tools.enclave import EnclaveNotebookToolSpec, ToolImagesFunctionAgent
from tests.unit_tests.fake_providers import Call, FakeProvider, Say

PLOT_CODE = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()"


def big_plot() -> Execution:
    """A recorded run that displayed a 1600x1200 PNG (bigger than a model needs)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), "navy").save(buffer, format="PNG")
    result = Result(
        data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}
    )
    return Execution(results=[result], _transcript=[("result", result)])


def llm(kind: str, provider: FakeProvider) -> Any:
    cls = OpenAIResponses if kind == "responses" else OpenAI
    return cls(model="gpt-4o-mini", api_base=provider.url, api_key="test", max_retries=0)


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    server = FakeProvider(script=[])
    yield server
    server.close()


def images_sent(path: str, body: dict[str, Any]) -> dict[str, list[str]]:
    """The images of a request, by where they are: "tool" or "user"."""
    found: dict[str, list[str]] = {"tool": [], "user": []}
    if path == "/v1/chat/completions":
        for message in body["messages"]:
            for part in message["content"] if isinstance(message.get("content"), list) else []:
                if part["type"] == "image_url":
                    found["tool" if message["role"] == "tool" else "user"].append(part["image_url"]["url"])
    elif isinstance(body["input"], list):  # else a plain string: one user message
        for item in body["input"]:
            where = "tool" if item.get("type") == "function_call_output" else "user"
            parts = item.get("output" if where == "tool" else "content")
            for part in parts if isinstance(parts, list) else []:
                if part["type"] == "input_image":
                    found[where].append(part["image_url"])
    return found


def decoded_size(image: str) -> tuple[int, int] | None:
    return png_size(base64.b64decode(image.split(",")[-1]))


async def two_turns(agent: Any, memory: Memory) -> None:
    ctx = Context(agent)
    await agent.run("Plot 1, 3, 2.", ctx=ctx, memory=memory)
    await agent.run("What did the plot show?", ctx=ctx, memory=memory)


@pytest.mark.parametrize(("kind", "where"), [("chat_completions", "user"), ("responses", "tool")])
async def test_plots_reach_every_provider_in_a_request_it_accepts(
    provider: FakeProvider, kind: str, where: str
) -> None:
    provider.script += [Call(PLOT_CODE, "call_1"), Say("A rising then falling line."), Say("The same line.")]
    spec = EnclaveNotebookToolSpec(FakeSandbox(big_plot()), include_images=True)
    agent = ToolImagesFunctionAgent(tools=spec.to_tool_list(), llm=llm(kind, provider), streaming=False)

    await two_turns(agent, Memory.from_defaults(session_id="plots"))

    assert provider.refused == []
    assert len(provider.requests) == 3
    first, after_tool, next_turn = (images_sent(path, body) for path, body in provider.requests)
    assert first == {"tool": [], "user": []}
    other = "user" if where == "tool" else "tool"
    for sent in (after_tool, next_turn):  # the next turn carries the history, images included
        assert len(sent[where]) == 1 and sent[other] == []
        assert decoded_size(sent[where][0]) == (1024, 768)  # scaled to image_max_side


@pytest.mark.parametrize("kind", ["chat_completions", "responses"])
async def test_switch_off_no_image_is_sent(provider: FakeProvider, kind: str) -> None:
    provider.script += [Call(PLOT_CODE, "call_1"), Say("Plotted.")]
    spec = EnclaveNotebookToolSpec(FakeSandbox(big_plot()))
    agent = ToolImagesFunctionAgent(tools=spec.to_tool_list(), llm=llm(kind, provider), streaming=False)
    await agent.run("Plot.")
    assert provider.refused == []
    assert all(images_sent(path, body) == {"tool": [], "user": []} for path, body in provider.requests)


async def test_plain_function_agent_on_chat_completions_drops_the_image(provider: FakeProvider) -> None:
    """What main did: the image went nowhere (llama-index-llms-openai drops it)."""
    provider.script += [Call(PLOT_CODE, "call_1"), Say("Plotted.")]
    spec = EnclaveNotebookToolSpec(FakeSandbox(big_plot()), include_images=True)
    agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm("chat_completions", provider), streaming=False)
    await agent.run("Plot.")
    assert images_sent(*provider.requests[-1]) == {"tool": [], "user": []}


async def test_readme_one_conversation_carries_the_earlier_turns(provider: FakeProvider) -> None:
    """The README's example: the second run's request holds the first turn."""
    provider.script += [Say("Loaded."), Say("Plotted.")]
    spec = EnclaveNotebookToolSpec(FakeSandbox(big_plot()))
    agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm("chat_completions", provider), streaming=False)

    await two_turns(agent, Memory.from_defaults(session_id="conversation-1"))

    second = provider.requests[1][1]["messages"]
    assert [(m["role"], m["content"]) for m in second] == [
        ("user", "Plot 1, 3, 2."),
        ("assistant", "Loaded."),
        ("user", "What did the plot show?"),
    ]
