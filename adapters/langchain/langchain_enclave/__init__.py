"""LangChain integration of enclave-tools: a stateful Python notebook in a sandbox."""

from importlib import metadata

from langchain_enclave.tools import EnclaveNotebookTool, NotebookInput

try:
    __version__ = metadata.version(__package__ or "langchain_enclave")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = ""

__all__ = ["EnclaveNotebookTool", "NotebookInput", "__version__"]
