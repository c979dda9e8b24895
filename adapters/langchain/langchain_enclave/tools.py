"""EnclaveNotebookTool: a stateful Python notebook for LangChain agents."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForToolRun,
    CallbackManagerForToolRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, PrivateAttr, ValidationError, model_validator

from enclave_tools import (
    EnclaveError,
    Execution,
    Sandbox,
    SandboxConfig,
    SandboxSessions,
)
from enclave_tools.images import DEFAULT_IMAGE_MAX_SIDE, fit_image
from enclave_tools.live import OutputEvent
from enclave_tools.tooling import (
    TOOL_DESCRIPTION,
    TOOL_NAME,
    NotebookInput,
    ToolSandboxes,
    describe_bad_arguments,
    describe_tool_failure,
    model_text,
)

__all__ = ["LIVE_OUTPUT_EVENT", "EnclaveNotebookTool", "NotebookInput"]

LIVE_OUTPUT_EVENT = "enclave_notebook_output"
"""The name of the custom events that carry a running cell's output: the ``type`` of each
LangGraph ``stream_mode="custom"`` chunk, and the ``name`` of each ``on_custom_event``
of ``astream_events``."""


class EnclaveNotebookTool(BaseTool):
    """Stateful Python notebook in a hardened container (enclave-tools).

    Each call runs a cell in one Jupyter kernel, so state persists from call to call.
    Errors in the model's code come back as ordinary content (a traceback); a failure of
    the sandbox itself raises ``ToolException``, which the agent receives as an error
    ``ToolMessage`` (``handle_tool_error=True``). Code that shows nothing gives the
    content ``"(no output)"``.

    Setup:
        Install ``langchain-enclave`` and have a Docker daemon running.

        .. code-block:: bash

            pip install -U langchain-enclave

    Instantiation:
        .. code-block:: python

            from enclave_tools import Sandbox, SandboxSessions
            from langchain_enclave import EnclaveNotebookTool

            tool = EnclaveNotebookTool()  # its own sandbox, started on the first call
            # or share one sandbox (it stays open until you close it):
            sandbox = Sandbox(memory="4g")
            tool = EnclaveNotebookTool(sandbox=sandbox, include_images=True)
            # or one kernel per LangGraph thread_id, two kept warm (you close them):
            sessions = SandboxSessions(warm=2).start()
            tool = EnclaveNotebookTool(sessions=sessions)

    Invocation with args:
        .. code-block:: python

            tool.invoke({"code": "x = 21"})
            tool.invoke({"code": "x * 2"})

        .. code-block:: python

            '42'

    Invocation with ToolCall:
        .. code-block:: python

            plot = "import matplotlib.pyplot as plt; plt.plot([1, 3, 2]); plt.show()"
            tool.invoke(
                {
                    "args": {"code": plot},
                    "id": "1",
                    "name": tool.name,
                    "type": "tool_call",
                }
            )

        .. code-block:: python

            ToolMessage(content='[image/png]', name='notebook_executor',
                        tool_call_id='1', artifact=Execution(status='ok', ...))

        ``message.artifact`` is the full :class:`enclave_tools.Execution`;
        ``message.artifact.images`` holds the PNG bytes. Call ``tool.close()`` (or use
        the tool as a context manager) to remove the sandbox the tool created.
    """

    name: str = TOOL_NAME
    description: str = TOOL_DESCRIPTION
    args_schema: type[BaseModel] = NotebookInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], str] | None = True
    # BaseTool's type also admits pydantic.v1 errors; NotebookInput (pydantic v2) raises only v2 ones.
    handle_validation_error: bool | str | Callable[[ValidationError], str] | None = (
        lambda error: describe_bad_arguments(error)  # type: ignore[assignment]
    )
    """Bad arguments from a model come back to it as a message, not as an exception."""

    sandbox: Sandbox | None = None
    """A sandbox to use (shared; the tool never closes it). None: the tool creates one."""
    sandbox_config: SandboxConfig | None = None
    """Settings of the sandbox the tool creates when ``sandbox`` is not given."""
    sessions: SandboxSessions | None = None
    """One sandbox per LangGraph ``thread_id`` (yours to close; the tool never does).
    Calls without a thread_id use the default sandbox."""
    include_images: bool = False
    """The switch that shows plots to the model: PNGs go into the content as image blocks
    after the text. In ``create_agent`` add :class:`~langchain_enclave.ToolImagesMiddleware`
    so that every provider accepts them. The images are always in the artifact."""
    image_max_side: int | None = DEFAULT_IMAGE_MAX_SIDE
    """Longest side, in pixels, of an image put into the content (scaled down with Pillow
    when it is installed). None: the size the plot has."""

    _sandboxes: ToolSandboxes | None = PrivateAttr(default=None)

    @property
    def sandboxes(self) -> ToolSandboxes:
        """Which sandbox each call uses (the shared one, the thread's, or the tool's own)."""
        if self._sandboxes is None:
            self._sandboxes = ToolSandboxes(self.sandbox, self.sessions, self.sandbox_config)
        return self._sandboxes

    @model_validator(mode="after")
    def _describe_its_sandbox(self) -> EnclaveNotebookTool:
        """Unless a description is given (here or as a subclass's default), say what the
        tool's sandboxes have installed and whether the model may install more (the
        sandbox's config, not the defaults)."""
        if "description" not in self.model_fields_set and self.description == TOOL_DESCRIPTION:
            # Not self.sandboxes: that is made on first use, so sandbox/sessions set after
            # construction (or changed in a model_copy) still count.
            self.description = ToolSandboxes(self.sandbox, self.sessions, self.sandbox_config).describe()
        return self

    def _run(
        self,
        code: str,
        timeout: float | None = None,
        *,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[dict[str, Any]], Execution]:
        with _as_tool_exception():
            execution = self.sandboxes.pick(_thread_id(config)).run(
                code, timeout=timeout, **_live_output(async_=False)
            )
        return self._content(execution), execution

    async def _arun(
        self,
        code: str,
        timeout: float | None = None,
        *,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[dict[str, Any]], Execution]:
        with _as_tool_exception():
            execution = await self.sandboxes.pick(_thread_id(config)).arun(
                code, timeout=timeout, **_live_output(async_=True)
            )
        return self._content(execution), execution

    def _content(self, execution: Execution) -> str | list[dict[str, Any]]:
        text = model_text(execution)
        if not self.include_images or not execution.images:
            return text
        blocks: list[dict[str, Any]] = []
        for number, png in enumerate(execution.images, 1):
            image, reason = fit_image(png, self.image_max_side)
            if image is None:
                text += f"\n[image {number} not shown: {reason}]"
                continue
            encoded = base64.b64encode(image).decode()
            blocks.append({"type": "image", "base64": encoded, "mime_type": "image/png"})
        return [{"type": "text", "text": text}, *blocks] if blocks else text

    def close(self) -> None:
        """Close the sandbox this tool created (not a ``sandbox`` or ``sessions`` passed in).

        The tool stays usable: a later call starts a fresh sandbox.
        """
        self.sandboxes.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self.sandboxes.aclose()

    def __enter__(self) -> EnclaveNotebookTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EnclaveNotebookTool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@contextmanager
def _as_tool_exception() -> Iterator[None]:
    """A sandbox failure as the ``ToolException`` the agent receives as an error message
    (the one mapping for the sync and the async path)."""
    try:
        yield
    except EnclaveError as exc:
        raise ToolException(describe_tool_failure(exc)) from exc


def _thread_id(config: RunnableConfig | None) -> str | None:
    thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
    return None if thread_id is None else str(thread_id)


# -- live output ---------------------------------------------------------------------------


def _live_output(async_: bool) -> dict[str, Callable[[OutputEvent], Any]]:
    """``{"on_output": callback}`` for a run whose output has somewhere to stream to, else ``{}``.

    The callback streams a running cell's output as custom events: to LangGraph's
    ``stream_mode="custom"`` (when the call runs in a graph) and as LangChain custom
    events (``astream_events``). It runs with the tool's context (the sandbox copies it),
    so the config lookups work.
    """
    writer = _stream_writer()
    if writer is None and not _has_callback_handlers():
        return {}

    def payload(event: OutputEvent) -> dict[str, Any]:
        return {"type": LIVE_OUTPUT_EVENT, "tool": TOOL_NAME, **event.to_dict()}

    def emit(event: OutputEvent) -> None:
        if writer is not None:
            writer(payload(event))

    if async_:

        async def on_output(event: OutputEvent) -> None:
            emit(event)
            try:
                await adispatch_custom_event(LIVE_OUTPUT_EVENT, payload(event))
            except RuntimeError:  # no parent run: not called from a runnable
                pass

        return {"on_output": on_output}

    def on_output_sync(event: OutputEvent) -> None:
        emit(event)
        try:
            dispatch_custom_event(LIVE_OUTPUT_EVENT, payload(event))
        except RuntimeError:
            pass

    return {"on_output": on_output_sync}


def _has_callback_handlers() -> bool:
    """Whether the current run has callback handlers (``astream_events`` adds one)."""
    try:
        callbacks = ensure_config().get("callbacks")
    except RuntimeError:
        return False
    return bool(getattr(callbacks, "handlers", None) or isinstance(callbacks, list) and callbacks)


def _stream_writer() -> Callable[[Any], None] | None:
    """LangGraph's stream writer for this call, if it runs inside a graph."""
    try:
        from langgraph.config import get_stream_writer

        return get_stream_writer()
    except (ImportError, RuntimeError, LookupError):
        return None
