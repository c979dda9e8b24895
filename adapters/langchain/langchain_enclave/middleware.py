"""Tool-result images placed where the model's API accepts them.

Anthropic's Messages API and OpenAI's Responses API take images inside a tool result;
OpenAI's Chat Completions API does not (an image part in a ``tool`` message is answered
with 400, and the message then breaks every later turn of the thread). This middleware
rewrites each model request, never the thread's history: where tool messages cannot carry
images, it keeps their text in the tool message and shows the images in a user message
right after the tool results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, ToolMessage

__all__ = ["ToolImagesMiddleware", "images_in_tool_results", "place_tool_images"]

Placement = Literal["auto", "tool", "user"]

_TOOL_IMAGES_ACCEPTED = {"ChatAnthropic", "ChatAnthropicVertex", "ChatBedrockConverse"}
"""Chat models whose APIs take images inside a tool result."""

_IMAGE_BLOCK_TYPES = {"image", "image_url", "input_image"}

MOVED_NOTE = "[the image(s) follow in the next user message]"
INTRO = "Images returned by the tool call(s) above:"


def images_in_tool_results(model: Any) -> bool:
    """Whether ``model``'s API accepts images inside tool results.

    True for Anthropic (and Bedrock Converse) models and for ``ChatOpenAI`` on the
    Responses API; False for Chat Completions and for any model not known to accept them
    (a user message with images is what every vision chat API takes).
    """
    model = getattr(model, "bound", model)  # a model with bound tools
    names = {cls.__name__ for cls in type(model).__mro__}
    if names & _TOOL_IMAGES_ACCEPTED:
        return True
    if "BaseChatOpenAI" in names:
        decide = getattr(model, "_use_responses_api", None)
        try:
            return bool(decide({})) if callable(decide) else bool(model.use_responses_api)
        except Exception:  # noqa: BLE001 - a private helper whose signature may change
            return bool(getattr(model, "use_responses_api", False))
    return False


def place_tool_images(messages: Sequence[AnyMessage], *, in_tool: bool) -> list[AnyMessage]:
    """``messages`` with tool-result images where the API takes them.

    ``in_tool=True`` leaves them in place. ``in_tool=False`` keeps only the text of each
    tool message (with a note) and adds, after each run of tool messages, one user message
    with their images. The given messages are not changed.
    """
    if in_tool:
        return list(messages)
    placed: list[AnyMessage] = []
    moved: list[dict[str, Any]] = []
    for message in messages:
        if moved and not isinstance(message, ToolMessage):
            placed.append(_images_message(moved))
            moved = []
        if isinstance(message, ToolMessage) and _images(message):
            moved += _images(message)
            message = message.model_copy(update={"content": _text_only(message)})
        placed.append(message)
    if moved:
        placed.append(_images_message(moved))
    return placed


class ToolImagesMiddleware(AgentMiddleware):
    """Agent middleware that puts tool-result images where the model's API accepts them.

    Use it with a tool that returns images (``EnclaveNotebookTool(include_images=True)``)::

        agent = create_agent(
            model,
            tools=[EnclaveNotebookTool(include_images=True)],
            middleware=[ToolImagesMiddleware()],
        )

    Args:
        placement: ``"auto"`` (the default) decides from the request's model (see
            :func:`images_in_tool_results`); ``"tool"`` always leaves images in tool
            messages; ``"user"`` always moves them into a user message.
    """

    def __init__(self, placement: Placement = "auto") -> None:
        super().__init__()
        if placement not in ("auto", "tool", "user"):
            raise ValueError(f"placement must be 'auto', 'tool' or 'user', not {placement!r}")
        self.placement = placement

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse:
        """Send the request with its tool-result images placed for its model."""
        return handler(self._placed(request))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        """Async :meth:`wrap_model_call`."""
        return await handler(self._placed(request))

    def _placed(self, request: ModelRequest) -> ModelRequest:
        in_tool = self._in_tool(request.model)
        messages = place_tool_images(request.messages, in_tool=in_tool)
        return request if in_tool else request.override(messages=messages)

    def _in_tool(self, model: BaseChatModel) -> bool:
        if self.placement == "auto":
            return images_in_tool_results(model)
        return self.placement == "tool"


def _images(message: BaseMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return []
    return [
        block
        for block in message.content
        if isinstance(block, dict) and block.get("type") in _IMAGE_BLOCK_TYPES
    ]


def _text_only(message: BaseMessage) -> str:
    texts = [
        block if isinstance(block, str) else str(block.get("text", ""))
        for block in message.content
        if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
    ]
    return "\n".join([*filter(None, texts), MOVED_NOTE])


def _images_message(images: list[dict[str, Any]]) -> HumanMessage:
    return HumanMessage(content=[{"type": "text", "text": INTRO}, *images])
