"""A scripted chat model, to drive a real agent loop with no model and no network.

It replies with the next message of a script, so demos, notebooks and tests can run
``create_agent`` end to end, the notebook tool and its sandbox included::

    from langchain.agents import create_agent
    from langchain_enclave import EnclaveNotebookTool
    from langchain_enclave.scripted import ScriptedChatModel, answer, notebook_call

    model = ScriptedChatModel.from_script(
        [notebook_call("x = 6 * 7\\nx"), answer("The answer is 42.")]
    )
    agent = create_agent(model, tools=[EnclaveNotebookTool()])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

__all__ = ["ScriptedChatModel", "answer", "notebook_call"]

_ids = itertools.count(1)


class ScriptedChatModel(GenericFakeChatModel):
    """Replies with the next scripted message; accepts tools as agents require.

    When the script runs out it raises ``StopIteration`` (a script too short for the
    conversation is a bug in the script).
    """

    @classmethod
    def from_script(cls, turns: Iterable[AIMessage]) -> ScriptedChatModel:
        """A model that plays ``turns`` in order."""
        return cls(messages=iter(list(turns)))

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        """Tools are accepted and ignored: the script already knows what to call."""
        return self


def notebook_call(
    code: str, *, timeout: float | None = None, call_id: str | None = None, tool: str = "notebook_executor"
) -> AIMessage:
    """The model's turn that runs ``code`` with the notebook tool."""
    args: dict[str, Any] = {"code": code}
    if timeout is not None:
        args["timeout"] = timeout
    call_id = call_id or f"call_{next(_ids)}"
    return AIMessage(
        content="", tool_calls=[{"name": tool, "args": args, "id": call_id, "type": "tool_call"}]
    )


def answer(text: str) -> AIMessage:
    """The model's closing answer of a turn."""
    return AIMessage(content=text)
