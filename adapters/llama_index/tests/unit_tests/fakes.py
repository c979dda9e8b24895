"""A stand-in for enclave_tools.Sandbox: records calls and returns prepared Executions."""

from __future__ import annotations

import base64

from enclave_tools import EnclaveError, Execution, ExecutionError, Result, Sandbox

# The smallest valid PNG (1x1, transparent).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def printed(text: str) -> Execution:
    """An Execution that printed ``text``."""
    return Execution(stdout=text, _transcript=[("stdout", text)])


def plotted() -> Execution:
    """An Execution that displayed one PNG figure."""
    result = Result(data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})
    return Execution(results=[result], _transcript=[("result", result)])


def failed() -> Execution:
    """An Execution whose code raised ZeroDivisionError."""
    return Execution(
        status="error",
        error=ExecutionError(
            "ZeroDivisionError", "division by zero", "ZeroDivisionError: division by zero"
        ),
    )


class FakeSandbox(Sandbox):
    """Answers run/arun with ``answer`` (an Execution, or an EnclaveError to raise).

    A Sandbox subclass that never touches Docker (it skips ``Sandbox.__init__``).
    """

    def __init__(self, answer: Execution | EnclaveError | None = None, *_: object) -> None:  # noqa: D107
        self.answer = answer if answer is not None else printed("ok\n")
        self.calls: list[tuple[str, str, float | None]] = []
        self.closed = False

    def run(self, code: str, timeout: float | None = None) -> Execution:
        self.calls.append(("run", code, timeout))
        return self._answer()

    async def arun(self, code: str, timeout: float | None = None) -> Execution:
        self.calls.append(("arun", code, timeout))
        return self._answer()

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeSandbox closed={self.closed}>"

    def _answer(self) -> Execution:
        if isinstance(self.answer, EnclaveError):
            raise self.answer
        return self.answer
