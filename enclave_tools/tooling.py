"""What every framework adapter shares: the tool's name, description and arguments, the
text a model reads, how a failure is put to it, and which sandbox a call uses.

The adapters (``langchain_enclave``, ``llama_index.tools.enclave``) add only what their
framework needs on top of this.
"""

from __future__ import annotations

import threading

from pydantic import BaseModel, Field, ValidationError

from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError, InvalidInput
from enclave_tools.execution import Execution
from enclave_tools.packages import policy_sentence
from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions

__all__ = [
    "NO_OUTPUT",
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "TOOL_FAILURES",
    "NotebookInput",
    "ToolSandboxes",
    "describe_bad_arguments",
    "describe_failure",
    "describe_tool",
    "describe_tool_failure",
    "model_text",
]

TOOL_NAME = "notebook_executor"
"""The tool's name, as a model sees it."""

_DESCRIPTION = (
    "Run Python code in a stateful Jupyter notebook kernel inside an isolated sandbox. "
    "Variables, imports, functions and loaded data persist between calls, so build on "
    "earlier results instead of repeating them. {installed} As in a notebook cell, the "
    "value of the last expression is shown; print() anything else you need to see. Plots "
    "come back as images: call plt.show() or display a figure. {network} input() is "
    "unavailable. An error comes back as a traceback: read it, fix the code and run it again."
)


DESCRIPTION_LIMIT = 1024
"""The most characters a tool's description has: OpenAI refuses a function description
longer than this, so long package lists are cut (the first names, then how many more)."""

LISTED_CHARS = 120
"""The most characters of package names one list in the description takes."""


def describe_tool(config: SandboxConfig | None = None) -> str:
    """The tool's description for a sandbox of ``config``: what is installed, and whether
    (and what) the model may install with ``%pip install``; at most
    :data:`DESCRIPTION_LIMIT` characters."""
    config = config or SandboxConfig()
    extra = (["the packages of its requirements file"] if config.requirements else []) + [*config.packages]
    installed = "numpy, pandas and matplotlib are installed" + (
        f", and also {_listed(extra)}." if extra else "."
    )
    if config.install_policy == "none":
        network = (
            "There is no network access by default (downloads fail) and pip install is refused."
            if not config.egress
            else "The sandbox has network access, but pip install is refused."
        )
    else:
        policy = config.install_policy
        if not isinstance(policy, str) and len(", ".join(policy)) > LISTED_CHARS:
            network = (
                f"You may install only these packages with `%pip install NAME`: {_listed(sorted(policy))} "
                "(a refused install lists them all; the host fetches them, the sandbox stays offline)."
            )
        else:
            network = policy_sentence(policy)
        network += " There is no other network access." if not config.egress else ""
    return _DESCRIPTION.format(installed=installed, network=network)[:DESCRIPTION_LIMIT]


def _listed(names: list[str]) -> str:
    """``names`` joined, the first ones within :data:`LISTED_CHARS`, then how many more."""
    shown: list[str] = []
    for name in names:
        if len(", ".join([*shown, name])) > LISTED_CHARS:
            break
        shown.append(name)
    rest = len(names) - len(shown)
    if not shown:
        return f"{rest} more package{'s' if rest > 1 else ''}"
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


TOOL_DESCRIPTION = describe_tool()
"""What the tool tells a model about itself."""

NO_OUTPUT = "(no output)"
"""The text for code that printed and displayed nothing (some providers reject an empty
tool result)."""


class NotebookInput(BaseModel):
    """Arguments of one call of the notebook tool."""

    code: str = Field(
        description="Python code to run, like a notebook cell.",
        examples=["import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\ndf.describe()"],
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds the code may run before it is interrupted (default: the sandbox's limit).",
    )


def model_text(execution: Execution) -> str:
    """What a model reads of ``execution``: its text, or a marker when there is none."""
    return execution.text or NO_OUTPUT


def describe_bad_arguments(error: ValidationError) -> str:
    """Arguments that do not fit :class:`NotebookInput`, as a tool should put it to a model."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
    return (
        f"Invalid arguments, the code was not run ({problems}). {TOOL_NAME} takes `code`, a "
        "string of Python, and optionally `timeout`, a number of seconds."
    )


def describe_failure(exc: EnclaveError) -> str:
    """``exc`` as a tool should report it to a model: what failed, and whether the code ran."""
    if isinstance(exc, InvalidInput):
        return f"Invalid input, the code was not run: {exc}"
    return f"The notebook sandbox failed ({type(exc).__name__}): {exc}"


TOOL_FAILURES: tuple[type[Exception], ...] = (ValidationError, EnclaveError)
"""What a tool call turns into a message to the model instead of raising: bad arguments
and sandbox failures (errors in the model's code are ordinary results)."""


def describe_tool_failure(exc: Exception) -> str:
    """One of :data:`TOOL_FAILURES` as a tool should put it to a model; the one mapping
    the adapters' sync and async paths share."""
    if isinstance(exc, ValidationError):
        return describe_bad_arguments(exc)
    if isinstance(exc, EnclaveError):
        return describe_failure(exc)
    raise TypeError(f"not a tool failure: {exc!r}") from exc


class ToolSandboxes:
    """Which sandbox a tool call uses, for the framework adapters.

    A call that belongs to a session (a LangGraph thread, a LlamaIndex Context) uses that
    session's sandbox from ``sessions``; any other call uses the shared ``sandbox``, or
    else one made here on first use from ``config``. :meth:`close` closes only that last
    one: a ``sandbox`` or ``sessions`` passed in belong to the caller.
    """

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        sessions: SandboxSessions | None = None,
        config: SandboxConfig | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.sessions = sessions
        self.config = config
        self._own: Sandbox | None = None
        self._lock = threading.Lock()

    def pick(self, session: str | None = None) -> Sandbox:
        """The sandbox for a call of ``session`` (None: a call outside any session)."""
        if self.sessions is not None and session is not None:
            return self.sessions.get(session)
        if self.sandbox is not None:
            return self.sandbox
        with self._lock:
            if self._own is None:
                self._own = Sandbox(self.config)
            return self._own

    def describe(self) -> str:
        """The tool's description for the sandboxes calls run in (:func:`describe_tool` of
        the sessions', the shared sandbox's or the given config)."""
        if self.sessions is not None:
            return describe_tool(self.sessions.config)
        if self.sandbox is not None:
            return describe_tool(self.sandbox.config)
        return describe_tool(self.config)

    def close(self) -> None:
        """Close the sandbox made here, if any; a later call makes a fresh one."""
        if own := self._take_own():
            own.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        if own := self._take_own():
            await own.aclose()

    @property
    def own(self) -> Sandbox | None:
        """The sandbox made here, if one was."""
        return self._own

    def _take_own(self) -> Sandbox | None:
        with self._lock:
            own, self._own = self._own, None
        return own
