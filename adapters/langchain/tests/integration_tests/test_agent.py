"""Real LangChain agent loops over a real sandbox, driven by a scripted chat model."""

from __future__ import annotations

import os

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from enclave_tools import Sandbox, SandboxSessions
from langchain_enclave import EnclaveNotebookTool
from langchain_enclave.scripted import ScriptedChatModel, notebook_call


def tool_messages(state: dict) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def test_two_user_turns_of_one_thread_keep_state(sandbox: Sandbox) -> None:
    model = ScriptedChatModel(
        messages=iter(
            [
                notebook_call("import pandas as pd\ndf = pd.DataFrame({'v': [40, 2]})", call_id="c1"),
                AIMessage("Loaded the data."),
                notebook_call("print(df['v'].sum())", call_id="c2"),
                AIMessage("The total is 42."),
            ]
        )
    )
    agent = create_agent(model, tools=[EnclaveNotebookTool(sandbox=sandbox)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "conversation-1"}}

    agent.invoke({"messages": [("user", "Load the data.")]}, config)
    state = agent.invoke({"messages": [("user", "What is the total?")]}, config)

    results = tool_messages(state)
    assert [m.tool_call_id for m in results] == ["c1", "c2"]
    assert results[-1].content == "42"
    assert results[-1].artifact.ok
    assert state["messages"][-1].content == "The total is 42."


async def test_async_agent_gets_plot_and_recovers_from_error(sandbox: Sandbox) -> None:
    model = ScriptedChatModel(
        messages=iter(
            [
                notebook_call("undefined_name", call_id="c1"),
                notebook_call(
                    "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()", call_id="c2"
                ),
                AIMessage("Here is the plot."),
            ]
        )
    )
    tool = EnclaveNotebookTool(sandbox=sandbox, include_images=True)
    state = await create_agent(model, tools=[tool]).ainvoke({"messages": [("user", "Plot it.")]})

    error, plot = tool_messages(state)
    assert error.status == "success" and "NameError" in error.content
    assert plot.artifact.images and plot.content[1]["type"] == "image"
    assert state["messages"][-1].content == "Here is the plot."


def test_each_thread_gets_its_own_kernel(sessions: SandboxSessions) -> None:
    tool = EnclaveNotebookTool(sessions=sessions)
    model = ScriptedChatModel(
        messages=iter(
            [
                notebook_call("secret = 'alpha'", call_id="a1"),
                AIMessage("Stored."),
                notebook_call("print(secret)", call_id="b1"),
                AIMessage("Not here."),
                notebook_call("print(secret)", call_id="a2"),
                AIMessage("alpha"),
            ]
        )
    )
    agent = create_agent(model, tools=[tool], checkpointer=InMemorySaver())
    thread_a = {"configurable": {"thread_id": "A"}}
    thread_b = {"configurable": {"thread_id": "B"}}
    agent.invoke({"messages": [("user", "Remember alpha.")]}, thread_a)
    in_b = tool_messages(agent.invoke({"messages": [("user", "What was it?")]}, thread_b))
    in_a = tool_messages(agent.invoke({"messages": [("user", "What was it?")]}, thread_a))
    tool.close()

    assert "NameError" in in_b[-1].content
    assert in_a[-1].content == "alpha"
    assert sorted(sessions.keys()) == ["A", "B"]
    kernel_a, kernel_b = sessions.get("A"), sessions.get("B")
    assert kernel_a is not kernel_b
    assert kernel_a.started and kernel_b.started  # the sessions' to close, not the tool's


def test_sandbox_failure_reaches_the_model_as_error_message(sandbox: Sandbox) -> None:
    sandbox.close()
    model = ScriptedChatModel(
        messages=iter([notebook_call("1 + 1", call_id="c1"), AIMessage("The sandbox is down.")])
    )
    state = create_agent(model, tools=[EnclaveNotebookTool(sandbox=sandbox)]).invoke(
        {"messages": [("user", "Add.")]}
    )
    (failure,) = tool_messages(state)
    assert failure.status == "error" and "SandboxClosed" in failure.content
    assert state["messages"][-1].content == "The sandbox is down."


def test_openai_compatible_wiring(sandbox: Sandbox) -> None:
    """The README's wiring: ChatOpenAI against any OpenAI-compatible server (no call made)."""
    import langchain_openai  # a test dependency: missing, the test fails

    model = langchain_openai.ChatOpenAI(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        api_key="not-used",
        base_url="http://127.0.0.1:9/v1",
    )
    tool = EnclaveNotebookTool(sandbox=sandbox)
    bound = model.bind_tools([tool])
    (spec,) = bound.kwargs["tools"]
    assert spec["function"]["name"] == "notebook_executor"
    assert spec["function"]["parameters"]["required"] == ["code"]
    assert create_agent(model, tools=[tool]) is not None
