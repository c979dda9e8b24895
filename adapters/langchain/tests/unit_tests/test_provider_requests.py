"""The requests langchain-openai (Chat Completions and Responses) and langchain-anthropic
build for an agent whose notebook tool shows plots, recorded by a loopback server and
checked with the providers' SDK request types (see fake_providers)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from enclave_tools import Execution
from enclave_tools.execution import Result
from enclave_tools.fakes import FakeSandbox
from enclave_tools.images import png_size
from langchain_enclave import EnclaveNotebookTool, ToolImagesMiddleware
from tests.unit_tests.fake_providers import Call, FakeProvider, Say, problems

PLOT_CODE = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()"


def big_plot() -> Execution:
    """A recorded run that displayed a 1600x1200 PNG (bigger than a model needs)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), "navy").save(buffer, format="PNG")
    result = Result(
        data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}
    )
    return Execution(results=[result], _transcript=[("result", result)])


PROVIDERS: dict[str, Callable[[FakeProvider], BaseChatModel]] = {
    "chat_completions": lambda p: ChatOpenAI(
        model="gpt-4o-mini", base_url=p.url, api_key="test", max_retries=0
    ),
    "responses": lambda p: ChatOpenAI(
        model="gpt-4o-mini", base_url=p.url, api_key="test", max_retries=0, use_responses_api=True
    ),
    "anthropic": lambda p: ChatAnthropic(
        model="claude-sonnet-4-6", base_url=p.anthropic_url, api_key="test", max_retries=0
    ),
}


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    server = FakeProvider(script=[])
    yield server
    server.close()


def agent_for(model: BaseChatModel, *, include_images: bool, middleware: bool = True) -> Any:
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(big_plot()), include_images=include_images)
    return create_agent(
        model,
        tools=[tool],
        middleware=[ToolImagesMiddleware()] if middleware else [],
        checkpointer=InMemorySaver(),
    )


def images_sent(path: str, body: dict[str, Any]) -> dict[str, list[str]]:
    """The base64 images of a request, by where they are: "tool" or "user"."""
    found: dict[str, list[str]] = {"tool": [], "user": []}
    if path == "/v1/chat/completions":
        for message in body["messages"]:
            for part in message["content"] if isinstance(message.get("content"), list) else []:
                if part["type"] == "image_url":
                    found["tool" if message["role"] == "tool" else "user"].append(part["image_url"]["url"])
    elif path == "/v1/responses":
        for item in body["input"]:
            where = "tool" if item.get("type") == "function_call_output" else "user"
            key = "output" if where == "tool" else "content"
            for part in item.get(key) if isinstance(item.get(key), list) else []:
                if part["type"] == "input_image":
                    found[where].append(part["image_url"])
    else:
        for message in body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                inner = block.get("content") if block["type"] == "tool_result" else [block]
                for part in inner if isinstance(inner, list) else []:
                    if part["type"] == "image":
                        found["tool" if block["type"] == "tool_result" else "user"].append(
                            part["source"]["data"]
                        )
    return found


def decoded_size(image: str) -> tuple[int, int] | None:
    return png_size(base64.b64decode(image.split(",")[-1]))


@pytest.mark.parametrize(
    ("name", "where"), [("chat_completions", "user"), ("responses", "tool"), ("anthropic", "tool")]
)
def test_plots_reach_every_provider_in_a_request_it_accepts(
    provider: FakeProvider, name: str, where: str
) -> None:
    provider.script += [
        Call(PLOT_CODE, "call_1"),
        Say("A rising then falling line."),
        Say("Still the same plot."),
    ]
    agent = agent_for(PROVIDERS[name](provider), include_images=True)
    config = {"configurable": {"thread_id": "t1"}}

    agent.invoke({"messages": [("user", "Plot 1, 3, 2.")]}, config)
    agent.invoke({"messages": [("user", "What did the plot show?")]}, config)  # the history again

    assert provider.refused == []
    assert len(provider.requests) == 3
    first, after_tool, next_turn = (images_sent(path, body) for path, body in provider.requests)
    assert first == {"tool": [], "user": []}
    for sent in (after_tool, next_turn):
        other = "user" if where == "tool" else "tool"
        assert len(sent[where]) == 1 and sent[other] == []
        assert decoded_size(sent[where][0]) == (1024, 768)  # scaled to image_max_side


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_switch_off_no_image_is_sent(provider: FakeProvider, name: str) -> None:
    provider.script += [Call(PLOT_CODE, "call_1"), Say("Plotted.")]
    agent = agent_for(PROVIDERS[name](provider), include_images=False)
    state = agent.invoke({"messages": [("user", "Plot.")]}, {"configurable": {"thread_id": "t1"}})
    assert provider.refused == []
    assert all(images_sent(path, body) == {"tool": [], "user": []} for path, body in provider.requests)
    assert state["messages"][2].artifact.images  # still in the artifact


def test_chat_completions_without_the_middleware_is_refused_then_healed(provider: FakeProvider) -> None:
    """What main did: an image part in a tool message (400), on every later turn too."""
    provider.script += [Call(PLOT_CODE, "call_1"), Say("Plotted.")]
    model = PROVIDERS["chat_completions"](provider)
    tool = EnclaveNotebookTool(sandbox=FakeSandbox(big_plot()), include_images=True)
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "t1"}}
    bare = create_agent(model, tools=[tool], checkpointer=saver)
    with pytest.raises(openai.BadRequestError):
        bare.invoke({"messages": [("user", "Plot.")]}, config)
    assert "image_url" in provider.refused[0]  # the tool message's image part

    healed = create_agent(model, tools=[tool], middleware=[ToolImagesMiddleware()], checkpointer=saver)
    healed.invoke({"messages": [("user", "And now?")]}, config)  # same thread, same history
    assert len(provider.refused) == 1
    path, body = provider.requests[-1]
    assert problems(path, body) is None and len(images_sent(path, body)["user"]) == 1


async def test_async_agent_gets_the_same_requests(provider: FakeProvider) -> None:
    provider.script += [Call(PLOT_CODE, "call_1"), Say("Plotted.")]
    agent = agent_for(PROVIDERS["chat_completions"](provider), include_images=True)
    await agent.ainvoke({"messages": [("user", "Plot.")]}, {"configurable": {"thread_id": "t1"}})
    assert provider.refused == []
    assert len(images_sent(*provider.requests[-1])["user"]) == 1
