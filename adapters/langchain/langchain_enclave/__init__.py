"""LangChain integration of enclave-tools: a stateful Python notebook in a sandbox."""

from importlib import metadata
from typing import TYPE_CHECKING, Any

from langchain_enclave.tools import EnclaveNotebookTool, NotebookInput

if TYPE_CHECKING:
    from langchain_enclave.middleware import ToolImagesMiddleware

try:
    __version__ = metadata.version(__package__ or "langchain_enclave")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = ""

__all__ = ["EnclaveNotebookTool", "NotebookInput", "ToolImagesMiddleware", "__version__"]


def __getattr__(name: str) -> Any:
    # The middleware needs the `langchain` package (create_agent), not only langchain-core.
    if name == "ToolImagesMiddleware":
        from langchain_enclave.middleware import ToolImagesMiddleware

        return ToolImagesMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
