"""EnclaveNotebookToolSpec: a stateful Python notebook for LlamaIndex agents."""

# No ``from __future__ import annotations`` here: FunctionTool finds the ``ctx: Context``
# parameter by comparing the annotation object with Context, not a string.

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from llama_index.core.base.llms.types import ContentBlock, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.tools.tool_spec.base import SPEC_FUNCTION_TYPE, BaseToolSpec
from llama_index.core.workflow import Context, Event

from enclave_tools import (
    Execution,
    Sandbox,
    SandboxConfig,
    SandboxSessions,
)
from enclave_tools.images import DEFAULT_IMAGE_MAX_SIDE, fit_image
from enclave_tools.live import OutputEvent
from enclave_tools.tooling import (
    TOOL_FAILURES,
    TOOL_NAME,
    NotebookInput,
    ToolSandboxes,
    describe_tool_failure,
    model_text,
)

__all__ = [
    "EnclaveNotebookToolSpec",
    "NotebookFunctionTool",
    "NotebookInput",
    "NotebookOutputEvent",
]

SESSION_KEY = "enclave_notebook_session"
"""Key in ``ctx.store`` of the id that picks a context's own sandbox."""


class NotebookFunctionTool(FunctionTool):
    """A FunctionTool whose functions return an :class:`~enclave_tools.Execution`.

    The output's blocks are the execution's text (``"(no output)"`` if it is empty) and,
    when ``include_images`` is on, one ``ImageBlock`` per PNG, scaled to
    ``image_max_side``; its ``raw_output`` is the Execution (every image, full size). A
    failure of the sandbox comes back as an output with ``is_error=True`` instead of an
    exception.
    """

    include_images: bool = False
    """Whether the output shows the plots to the model (see the spec's argument)."""
    image_max_side: int | None = DEFAULT_IMAGE_MAX_SIDE
    """Longest side, in pixels, of an image in the output; None: unscaled."""

    def _parse_tool_output(self, raw_output: Any) -> list[ContentBlock]:
        if not isinstance(raw_output, Execution):
            return super()._parse_tool_output(raw_output)
        text = model_text(raw_output)
        images: list[ContentBlock] = []
        for number, png in enumerate(raw_output.images if self.include_images else [], 1):
            image, reason = fit_image(png, self.image_max_side)
            if image is None:
                text += f"\n[image {number} not shown: {reason}]"
            else:
                images.append(ImageBlock(image=image, image_mimetype="image/png"))
        return [TextBlock(text=text), *images]

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the tool; bad arguments and sandbox failures become ``is_error`` outputs."""
        try:
            return super().call(**self._checked(args, kwargs))
        except TOOL_FAILURES as exc:
            return self._failure(exc, args, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the tool (async); bad arguments and sandbox failures become ``is_error`` outputs."""
        try:
            return await super().acall(**self._checked(args, kwargs))
        except TOOL_FAILURES as exc:
            return self._failure(exc, args, kwargs)

    def _checked(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments, validated as a model's would be; unknown ones dropped."""
        given = {k: v for k, v in kwargs.items() if k != self.ctx_param_name}
        given.update(zip(("code", "timeout"), args, strict=False))
        checked = NotebookInput.model_validate(given).model_dump()
        if self.ctx_param_name is not None:
            # Without a Context (a direct call, not from an agent) use the default sandbox.
            checked[self.ctx_param_name] = kwargs.get(self.ctx_param_name)
        return checked

    def _failure(self, exc: Exception, args: Any, kwargs: dict[str, Any]) -> ToolOutput:
        """A bad call or a sandbox failure as an ``is_error`` output the model reads."""
        shown = {k: v for k, v in kwargs.items() if k != self.ctx_param_name}
        return ToolOutput(
            content=describe_tool_failure(exc),
            tool_name=self.metadata.get_name(),
            raw_input={"args": args, "kwargs": shown},
            raw_output=None,
            is_error=True,
            exception=exc,
        )


class EnclaveNotebookToolSpec(BaseToolSpec):
    """Stateful Python notebook in a hardened container (enclave-tools), for LlamaIndex.

    ``to_tool_list()`` gives one tool, ``notebook_executor``, with a sync and an async
    function. Each call runs a cell in one Jupyter kernel, so state persists from call
    to call. Its output holds a ``TextBlock`` (what the model reads: output, value or
    traceback) and, with ``include_images=True``, one ``ImageBlock`` per plot;
    ``raw_output`` is the :class:`enclave_tools.Execution` (every image, always).

    Args:
        sandbox: a sandbox to use (shared; the spec never closes it). None: the spec
            creates one on the first call, with ``sandbox_config``.
        sandbox_config: settings of the sandbox the spec creates.
        sessions: one sandbox per agent ``Context``, keyed by a session id the tool
            keeps in ``ctx.store``; with ``SandboxSessions(warm=N)`` a new context gets
            an already started kernel. Yours to close (the spec never does). Calls
            without a context use the default sandbox.
        stream_output: take the agent's ``Context`` even without ``sessions``, so that
            a running cell's output reaches the workflow's event stream (with
            ``sessions`` it always does): each output is a :class:`NotebookOutputEvent`
            in ``handler.stream_events()``.
        include_images: the switch that shows plots to the model, as image blocks in
            the tool output. Use the agent
            :class:`~llama_index.tools.enclave.ToolImagesFunctionAgent` so that every
            provider gets them (Chat Completions takes images only in user messages).
            Off by default: each plot costs tokens (about 30,000 base64 characters).
        image_max_side: longest side, in pixels, of an image shown to the model
            (scaled down with Pillow when it is installed); None keeps the size.

    Example::

        from enclave_tools import SandboxSessions
        from llama_index.core.agent.workflow import FunctionAgent
        from llama_index.tools.enclave import EnclaveNotebookToolSpec

        with SandboxSessions(warm=1) as sessions:
            spec = EnclaveNotebookToolSpec(sessions=sessions)
            agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm)
            ...
    """

    spec_functions: list[SPEC_FUNCTION_TYPE] = [("notebook_executor", "anotebook_executor")]

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        *,
        sandbox_config: SandboxConfig | None = None,
        sessions: SandboxSessions | None = None,
        stream_output: bool = False,
        include_images: bool = False,
        image_max_side: int | None = DEFAULT_IMAGE_MAX_SIDE,
    ) -> None:
        self.include_images = include_images
        self.image_max_side = image_max_side
        self.sandbox = sandbox
        self.stream_output = stream_output
        self.sandbox_config = sandbox_config
        self.sessions = sessions
        self.sandboxes = ToolSandboxes(sandbox, sessions, sandbox_config)
        """Which sandbox each call uses (the shared one, the Context's, or the spec's own)."""

    def notebook_executor(self, code: str, timeout: float | None = None) -> Execution:
        """Run Python code in the notebook kernel; state persists between calls."""
        return self.sandboxes.pick().run(code, timeout=timeout)

    async def anotebook_executor(self, code: str, timeout: float | None = None) -> Execution:
        """Async :meth:`notebook_executor`."""
        return await self.sandboxes.pick().arun(code, timeout=timeout)

    async def _anotebook_executor_in_context(
        self, ctx: Context, code: str, timeout: float | None = None
    ) -> Execution:
        if ctx is None:
            return await self.anotebook_executor(code, timeout)
        live = _stream_to(ctx)
        if self.sessions is None:
            return await self.sandboxes.pick().arun(code, timeout=timeout, **live)
        session = await ctx.store.get(SESSION_KEY, default=None)
        if session is None:
            session = uuid.uuid4().hex
            await ctx.store.set(SESSION_KEY, session)
        return await self.sandboxes.pick(session).arun(code, timeout=timeout, **live)

    def to_tool_list(
        self,
        spec_functions: list[SPEC_FUNCTION_TYPE] | None = None,
        func_to_metadata_mapping: dict[str, ToolMetadata] | None = None,
    ) -> list[FunctionTool]:
        """The ``notebook_executor`` tool, in a list.

        ``spec_functions`` is ignored; ``func_to_metadata_mapping`` may replace the
        tool's ``ToolMetadata`` under the key ``"notebook_executor"``.
        """
        metadata = (func_to_metadata_mapping or {}).get(TOOL_NAME) or ToolMetadata(
            name=TOOL_NAME, description=self.sandboxes.describe(), fn_schema=NotebookInput
        )
        fn: Callable[..., Execution] | None
        async_fn: Callable[..., Awaitable[Execution]]
        if self.sessions is None and not self.stream_output:
            fn, async_fn = self.notebook_executor, self.anotebook_executor
        else:  # the Context-aware function; its sync twin is derived from it
            fn, async_fn = None, self._anotebook_executor_in_context
        tool = NotebookFunctionTool(fn=fn, async_fn=async_fn, metadata=metadata)
        tool.include_images = self.include_images
        tool.image_max_side = self.image_max_side
        return [tool]

    def close(self) -> None:
        """Close the sandbox this spec created (not a ``sandbox`` or ``sessions`` passed in).

        The spec stays usable: a later call starts a fresh sandbox.
        """
        self.sandboxes.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self.sandboxes.aclose()

    def __enter__(self) -> "EnclaveNotebookToolSpec":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "EnclaveNotebookToolSpec":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- live output ---------------------------------------------------------------------------


class NotebookOutputEvent(Event):
    """One output of a running notebook cell, on the workflow's event stream.

    It is written as it arrives: ``kind`` is stdout, stderr, result, image or error;
    ``text`` is cleaned; ``data`` is the mime bundle of a result or image.
    """

    tool_name: str = TOOL_NAME
    kind: str
    text: str = ""
    data: dict[str, Any] = {}


def _stream_to(ctx: Context) -> dict[str, Any]:
    """``{"on_output": ...}``: each output of the run written to ``ctx``'s event stream.

    The callback is called on the workflow's event loop.
    """

    def on_output(event: OutputEvent) -> None:
        try:
            ctx.write_event_to_stream(NotebookOutputEvent(kind=event.kind, text=event.text, data=event.data))
        except Exception:  # noqa: BLE001 - a context outside a running workflow has no stream
            pass

    return {"on_output": on_output}
