"""EnclaveNotebookTool: a stateful Python notebook for LangChain agents."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any, Literal

from enclave_tools import EnclaveError, Execution, InvalidInput, Sandbox, SandboxConfig
from langchain_core.callbacks import (
    AsyncCallbackManagerForToolRun,
    CallbackManagerForToolRun,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field, PrivateAttr

__all__ = ["EnclaveNotebookTool", "NotebookInput"]

DESCRIPTION = (
    "Run Python code in a stateful Jupyter notebook kernel inside an isolated sandbox. "
    "Variables, imports, functions and loaded data persist between calls, so build on "
    "earlier results instead of repeating them. numpy, pandas and matplotlib are "
    "installed. As in a notebook cell, the value of the last expression is shown; "
    "print() anything else you need to see. Plots come back as images: call plt.show() "
    "or display a figure. There is no network access by default (pip install and "
    "downloads fail), and input() is unavailable. An error comes back as a traceback: "
    "read it, fix the code and run it again."
)


class NotebookInput(BaseModel):
    """Arguments of one call of the notebook tool."""

    code: str = Field(
        description="Python code to run, like a notebook cell.",
        examples=["import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\ndf.describe()"],
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds the code may run before it is interrupted "
        "(default: the sandbox's limit).",
    )


class EnclaveNotebookTool(BaseTool):
    """Stateful Python notebook in a hardened container (enclave-tools).

    Each call runs a cell in one Jupyter kernel, so state persists from call to call.
    Errors in the model's code come back as ordinary content (a traceback); a failure of
    the sandbox itself raises ``ToolException``, which the agent receives as an error
    ``ToolMessage`` (``handle_tool_error=True``).

    Setup:
        Install ``langchain-enclave`` and have a Docker daemon running.

        .. code-block:: bash

            pip install -U langchain-enclave

    Instantiation:
        .. code-block:: python

            from enclave_tools import Sandbox
            from langchain_enclave import EnclaveNotebookTool

            tool = EnclaveNotebookTool()  # its own sandbox, started on the first call
            # or share one sandbox (it stays open until you close it):
            sandbox = Sandbox(memory="4g")
            tool = EnclaveNotebookTool(sandbox=sandbox, include_images=True)
            # or one kernel per LangGraph thread_id:
            tool = EnclaveNotebookTool(sandbox_factory=lambda thread_id: Sandbox())

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
        the tool as a context manager) to remove the sandboxes the tool created.
    """

    name: str = "notebook_executor"
    description: str = DESCRIPTION
    args_schema: type[BaseModel] = NotebookInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], str] | None = True

    sandbox: Sandbox | None = None
    """A sandbox to use (shared; the tool never closes it). None: the tool creates one."""
    sandbox_config: SandboxConfig | None = None
    """Settings of the sandbox the tool creates when ``sandbox`` is not given."""
    sandbox_factory: Callable[[str], Sandbox] | None = None
    """Makes one sandbox per LangGraph ``thread_id``; the tool closes them in ``close()``.
    Calls without a thread_id use the default sandbox."""
    include_images: bool = False
    """Also put PNG images into the content as image blocks (for models that read
    images in tool results). They are always in the artifact."""

    _own_sandbox: Sandbox | None = PrivateAttr(default=None)
    _thread_sandboxes: dict[str, Sandbox] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _run(
        self,
        code: str,
        timeout: float | None = None,
        *,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[dict[str, Any]], Execution]:
        try:
            execution = self._sandbox_for(config).run(code, timeout=timeout)
        except EnclaveError as exc:
            raise _tool_exception(exc) from exc
        return self._content(execution), execution

    async def _arun(
        self,
        code: str,
        timeout: float | None = None,
        *,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[dict[str, Any]], Execution]:
        try:
            execution = await self._sandbox_for(config).arun(code, timeout=timeout)
        except EnclaveError as exc:
            raise _tool_exception(exc) from exc
        return self._content(execution), execution

    def _sandbox_for(self, config: RunnableConfig | None) -> Sandbox:
        thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
        with self._lock:
            if self.sandbox_factory is not None and thread_id is not None:
                key = str(thread_id)
                if key not in self._thread_sandboxes:
                    self._thread_sandboxes[key] = self.sandbox_factory(key)
                return self._thread_sandboxes[key]
            if self.sandbox is not None:
                return self.sandbox
            if self._own_sandbox is None:
                self._own_sandbox = Sandbox(self.sandbox_config)
            return self._own_sandbox

    def _content(self, execution: Execution) -> str | list[dict[str, Any]]:
        images = execution.images if self.include_images else []
        if not images:
            return execution.text
        return [{"type": "text", "text": execution.text}] + [
            {"type": "image", "base64": base64.b64encode(png).decode(), "mime_type": "image/png"}
            for png in images
        ]

    def close(self) -> None:
        """Close the sandboxes this tool created (not a ``sandbox`` passed in).

        The tool stays usable: a later call starts a fresh sandbox.
        """
        for sandbox in self._take_created():
            sandbox.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        for sandbox in self._take_created():
            await sandbox.aclose()

    def _take_created(self) -> list[Sandbox]:
        with self._lock:
            made = list(self._thread_sandboxes.values())
            if self._own_sandbox is not None:
                made.append(self._own_sandbox)
            self._thread_sandboxes.clear()
            self._own_sandbox = None
        return made

    def __enter__(self) -> EnclaveNotebookTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EnclaveNotebookTool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _tool_exception(exc: EnclaveError) -> ToolException:
    if isinstance(exc, InvalidInput):
        return ToolException(f"Invalid input, the code was not run: {exc}")
    return ToolException(f"The notebook sandbox failed ({type(exc).__name__}): {exc}")
