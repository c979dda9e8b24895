"""Real LlamaIndex agent loops over a real sandbox, driven by a scripted LLM."""

from __future__ import annotations

from typing import Any

from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ImageBlock
from llama_index.core.workflow import Context

from enclave_tools import Sandbox, SandboxSessions
from llama_index.tools.enclave import EnclaveNotebookToolSpec
from llama_index.tools.enclave.scripted import answer, notebook_call, scripted_llm


async def run(agent: Any, user_msg: str, ctx: Context | None = None) -> tuple[list[ToolCallResult], Any]:
    handler = agent.run(user_msg=user_msg, ctx=ctx)
    results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    return results, await handler


async def test_function_agent_keeps_state_and_gets_plot(sandbox: Sandbox) -> None:
    llm = scripted_llm(
        [
            notebook_call("import numpy as np\nvalues = np.array([3, 1, 2])", call_id="c1"),
            notebook_call("import matplotlib.pyplot as plt\nplt.plot(values)\nplt.show()", call_id="c2"),
            notebook_call("print(values.max())", call_id="c3"),
            answer("The maximum is 3."),
        ]
    )
    spec = EnclaveNotebookToolSpec(sandbox, include_images=True)
    agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm)

    results, response = await run(agent, "Plot the values.")

    assert [r.tool_id for r in results] == ["c1", "c2", "c3"]
    plot = results[1].tool_output
    assert not plot.is_error
    assert any(isinstance(b, ImageBlock) for b in plot.blocks)
    assert plot.raw_output.images
    assert results[2].tool_output.content == "3"
    assert str(response) == "The maximum is 3."


async def test_code_error_reaches_the_llm_and_the_loop_goes_on(sandbox: Sandbox) -> None:
    llm = scripted_llm(
        [notebook_call("1 / 0", call_id="c1"), notebook_call("print('fixed')", call_id="c2"), answer("Done.")]
    )
    agent = FunctionAgent(tools=EnclaveNotebookToolSpec(sandbox).to_tool_list(), llm=llm)
    results, _ = await run(agent, "Divide.")
    error, fixed = (r.tool_output for r in results)
    assert not error.is_error and "ZeroDivisionError" in error.content
    assert fixed.content == "fixed"


async def test_sandbox_failure_is_an_error_result(sandbox: Sandbox) -> None:
    sandbox.close()
    llm = scripted_llm([notebook_call("1 + 1", call_id="c1"), answer("The sandbox is down.")])
    agent = FunctionAgent(tools=EnclaveNotebookToolSpec(sandbox).to_tool_list(), llm=llm)
    (result,), response = await run(agent, "Add.")
    assert result.tool_output.is_error and "SandboxClosed" in result.tool_output.content
    assert str(response) == "The sandbox is down."


async def test_agent_workflow_two_turns_one_context(sandbox: Sandbox) -> None:
    llm = scripted_llm(
        [
            notebook_call("total = 40", call_id="c1"),
            answer("Stored."),
            notebook_call("print(total + 2)", call_id="c2"),
            answer("42"),
        ]
    )
    coder = FunctionAgent(
        name="coder",
        description="Runs Python in a notebook.",
        tools=EnclaveNotebookToolSpec(sandbox).to_tool_list(),
        llm=llm,
    )
    workflow = AgentWorkflow(agents=[coder], root_agent="coder")
    ctx = Context(workflow)

    await run(workflow, "Store 40.", ctx)
    results, response = await run(workflow, "Add 2.", ctx)

    assert results[-1].tool_output.content == "42"
    assert str(response) == "42"


async def test_each_context_gets_its_own_kernel(sessions: SandboxSessions) -> None:
    spec = EnclaveNotebookToolSpec(sessions=sessions)
    llm = scripted_llm(
        [
            notebook_call("secret = 'alpha'", call_id="a1"),
            answer("Stored."),
            notebook_call("print(secret)", call_id="b1"),
            answer("Not here."),
            notebook_call("print(secret)", call_id="a2"),
            answer("alpha"),
        ]
    )
    agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm)
    conversation_a, conversation_b = Context(agent), Context(agent)
    await run(agent, "Remember alpha.", conversation_a)
    in_b, _ = await run(agent, "What was it?", conversation_b)
    in_a, _ = await run(agent, "What was it?", conversation_a)
    await spec.aclose()

    assert "NameError" in in_b[-1].tool_output.content
    assert in_a[-1].tool_output.content == "alpha"
    kernels = [sessions.get(key) for key in sessions.keys()]
    assert len(kernels) == 2 and kernels[0] is not kernels[1]
    assert all(k.started for k in kernels)  # the sessions' to close, not the spec's


def test_openai_compatible_wiring(sandbox: Sandbox) -> None:
    """The README's wiring: OpenAILike against any OpenAI-compatible server (no call made)."""
    import llama_index.llms.openai_like as openai_like  # a test dependency

    llm = openai_like.OpenAILike(
        model="any-model",
        api_base="http://127.0.0.1:9/v1",
        api_key="not-used",
        is_chat_model=True,
        is_function_calling_model=True,
    )
    agent = FunctionAgent(tools=EnclaveNotebookToolSpec(sandbox).to_tool_list(), llm=llm)
    assert agent.llm.metadata.is_function_calling_model
