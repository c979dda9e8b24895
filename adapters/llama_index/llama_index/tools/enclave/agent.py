"""A FunctionAgent that shows tool-result images where the LLM's API accepts them.

Anthropic's Messages API and OpenAI's Responses API take images inside a tool result;
OpenAI's Chat Completions API does not, and ``llama-index-llms-openai`` drops them there
without a word. This agent keeps each tool message's text and, where tool messages cannot
carry images, shows the images in one user message right after the tool results. The
memory holds what was sent, so a later turn is accepted by every provider.
"""

from typing import Any

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.memory import BaseMemory
from llama_index.core.workflow import Context

__all__ = ["ToolImagesFunctionAgent", "images_in_tool_results", "place_tool_images"]

_TOOL_IMAGES_ACCEPTED = {"OpenAIResponses", "Anthropic", "AnthropicMultiModal", "BedrockConverse"}
"""LLM classes whose APIs take images inside a tool result."""

MOVED_NOTE = "[the image(s) follow in the next user message]"
INTRO = "Images returned by the tool call(s) above:"


def images_in_tool_results(llm: Any) -> bool:
    """Whether ``llm``'s API accepts images inside tool results.

    True for ``OpenAIResponses`` and Anthropic; False for Chat Completions (``OpenAI``,
    ``OpenAILike``, ...) and for any LLM not known to accept them.
    """
    return bool({cls.__name__ for cls in type(llm).__mro__} & _TOOL_IMAGES_ACCEPTED)


def place_tool_images(messages: list[ChatMessage], start: int = 0) -> list[ChatMessage]:
    """``messages`` with the images of tool messages from ``start`` on moved into user messages.

    Each tool message keeps its text (with a note); after each run of tool messages comes
    one user message with their images. The given messages are not changed.
    """
    placed = list(messages[:start])
    moved: list[ImageBlock] = []
    for message in messages[start:]:
        if moved and message.role != "tool":
            placed.append(_images_message(moved))
            moved = []
        images = [b for b in message.blocks if isinstance(b, ImageBlock)]
        if message.role == "tool" and images:
            moved += images
            text = [b for b in message.blocks if not isinstance(b, ImageBlock)]
            message = message.model_copy(update={"blocks": [*text, TextBlock(text=MOVED_NOTE)]})
        placed.append(message)
    if moved:
        placed.append(_images_message(moved))
    return placed


class ToolImagesFunctionAgent(FunctionAgent):
    """A :class:`FunctionAgent` whose tool-result images reach the LLM on every provider.

    Use it with ``EnclaveNotebookToolSpec(include_images=True)``; it behaves as a
    FunctionAgent otherwise (and in an ``AgentWorkflow``).
    """

    async def handle_tool_call_results(
        self, ctx: Context, results: list[ToolCallResult], memory: BaseMemory
    ) -> None:
        """Add the tool results to the scratchpad, images placed for this agent's LLM."""
        before = len(await ctx.store.get(self.scratchpad_key, default=[]))
        await super().handle_tool_call_results(ctx, results, memory)
        if images_in_tool_results(self.llm):
            return
        scratchpad: list[ChatMessage] = await ctx.store.get(self.scratchpad_key, default=[])
        await ctx.store.set(self.scratchpad_key, place_tool_images(scratchpad, before))


def _images_message(images: list[ImageBlock]) -> ChatMessage:
    return ChatMessage(role="user", blocks=[TextBlock(text=INTRO), *images])
