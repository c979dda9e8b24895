"""LlamaIndex integration of enclave-tools: a stateful Python notebook in a sandbox."""

from llama_index.tools.enclave.agent import ToolImagesFunctionAgent
from llama_index.tools.enclave.base import (
    EnclaveNotebookToolSpec,
    NotebookFunctionTool,
    NotebookInput,
    NotebookOutputEvent,
)

__all__ = [
    "EnclaveNotebookToolSpec",
    "NotebookFunctionTool",
    "NotebookInput",
    "NotebookOutputEvent",
    "ToolImagesFunctionAgent",
]
