"""Fakes for unit tests of code that drives a sandbox (an agent, a tool), without Docker.

Importable without pytest::

    from enclave_tools.fakes import FakeSandbox, printed

    tool = MyTool(sandbox=FakeSandbox(printed("42\\n")))

The pytest fixtures that run real sandboxes are in :mod:`enclave_tools.testing`.
"""

from __future__ import annotations

import base64
import inspect
from typing import Any

from enclave_tools.checks import check_code, check_timeout
from enclave_tools.config import SandboxConfig
from enclave_tools.errors import EnclaveError
from enclave_tools.execution import Execution, ExecutionError, Result
from enclave_tools.live import events_from_execution
from enclave_tools.sandbox import Sandbox

__all__ = ["PNG", "FakeSandbox", "failed", "plotted", "printed"]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
"""The smallest valid PNG (1x1, transparent)."""


def printed(text: str) -> Execution:
    """An Execution whose code printed ``text``."""
    return Execution(stdout=text, _transcript=[("stdout", text)])


def plotted() -> Execution:
    """An Execution whose code displayed one PNG figure."""
    result = Result(data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})
    return Execution(results=[result], _transcript=[("result", result)])


def failed() -> Execution:
    """An Execution whose code raised ZeroDivisionError."""
    return Execution(
        status="error",
        error=ExecutionError("ZeroDivisionError", "division by zero", "ZeroDivisionError: division by zero"),
    )


class FakeSandbox(Sandbox):
    """A Sandbox that never touches Docker: ``run``/``arun`` check their arguments as a
    real sandbox does, record the call and answer with ``answer`` (an Execution, or an
    EnclaveError to raise). ``config`` is the settings it claims to have."""

    def __init__(
        self,
        answer: Execution | EnclaveError | None = None,
        *_ignored: object,
        config: SandboxConfig | None = None,
    ) -> None:
        super().__init__(config)
        self.answer = answer if answer is not None else printed("ok\n")
        self.calls: list[tuple[str, str, float | None]] = []
        self.closed = False

    def run(self, code: str, timeout: float | None = None, *, on_output: Any = None) -> Execution:
        """Record the call; return (or raise) the prepared answer (its outputs go to
        ``on_output`` first, as live events)."""
        check_code(code)
        check_timeout(timeout, self.config.timeout)
        self.calls.append(("run", code, timeout))
        if on_output is not None and isinstance(self.answer, Execution):
            for event in events_from_execution(self.answer):
                on_output(event)
        return self._answer()

    async def arun(self, code: str, timeout: float | None = None, *, on_output: Any = None) -> Execution:
        """Record the call; return (or raise) the prepared answer (its outputs go to
        ``on_output`` first, as live events)."""
        check_code(code)
        check_timeout(timeout, self.config.timeout)
        self.calls.append(("arun", code, timeout))
        if on_output is not None and isinstance(self.answer, Execution):
            for event in events_from_execution(self.answer):
                result = on_output(event)
                if inspect.isawaitable(result):
                    await result
        return self._answer()

    def close(self) -> None:
        """Mark the fake closed."""
        self.closed = True

    async def aclose(self) -> None:
        """Mark the fake closed."""
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeSandbox closed={self.closed}>"

    def _answer(self) -> Execution:
        if isinstance(self.answer, EnclaveError):
            raise self.answer
        return self.answer
