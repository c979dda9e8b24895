"""A scripted LLM, to drive a real LlamaIndex agent loop with no model and no network.

It answers with the next message of a script, so demos, notebooks and tests can run a
``FunctionAgent`` end to end, the notebook tool and its sandbox included::

    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.tools.enclave import EnclaveNotebookToolSpec
    from llama_index.tools.enclave.scripted import answer, notebook_call, scripted_llm

    llm = scripted_llm([notebook_call("x = 6 * 7\\nx"), answer("The answer is 42.")])
    agent = FunctionAgent(tools=EnclaveNotebookToolSpec().to_tool_list(), llm=llm)
"""

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MockFunctionCallingLLM

__all__ = ["answer", "notebook_call", "scripted_llm"]

_ids = itertools.count(1)


def scripted_llm(turns: Iterable[ChatMessage]) -> MockFunctionCallingLLM:
    """A function-calling LLM that answers with the next message of ``turns``."""
    replies = iter(list(turns))

    def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        return next(replies)

    return MockFunctionCallingLLM(response_generator=respond)


def notebook_call(
    code: str, *, timeout: float | None = None, call_id: str | None = None, tool: str = "notebook_executor"
) -> ChatMessage:
    """The LLM's turn that runs ``code`` with the notebook tool."""
    kwargs: dict[str, Any] = {"code": code}
    if timeout is not None:
        kwargs["timeout"] = timeout
    call = ToolCallBlock(tool_call_id=call_id or f"call_{next(_ids)}", tool_name=tool, tool_kwargs=kwargs)
    return ChatMessage(role="assistant", blocks=[call])


def answer(text: str) -> ChatMessage:
    """The LLM's closing answer of a turn."""
    return ChatMessage(role="assistant", content=text)
