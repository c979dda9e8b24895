"""enclave-tools: a stateful Python kernel in a hardened container, for LLM agents.

from enclave_tools import Sandbox

with Sandbox() as sb:
    sb.run("x = [1, 2, 3]")
    print(sb.run("sum(x)").text)   # 6
"""

from enclave_tools.config import SandboxConfig
from enclave_tools.errors import (
    DockerUnavailable,
    EnclaveError,
    FileTransferError,
    GatewayError,
    GatewayMisbehaved,
    GatewayUnreachable,
    ImageBuildFailed,
    ImageError,
    ImageNotFound,
    InvalidInput,
    SandboxAccessDenied,
    SandboxClosed,
    SandboxDied,
    SandboxGone,
    SandboxInUse,
    SandboxStartFailed,
)
from enclave_tools.execution import Execution, ExecutionError, Result
from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions
from enclave_tools.tooling import describe_failure

__version__ = "0.1.0"

__all__ = [
    "DockerUnavailable",
    "EnclaveError",
    "Execution",
    "ExecutionError",
    "FileTransferError",
    "GatewayError",
    "GatewayMisbehaved",
    "GatewayUnreachable",
    "ImageBuildFailed",
    "ImageError",
    "ImageNotFound",
    "InvalidInput",
    "Result",
    "Sandbox",
    "SandboxClosed",
    "SandboxConfig",
    "SandboxDied",
    "SandboxGone",
    "SandboxInUse",
    "SandboxAccessDenied",
    "SandboxSessions",
    "SandboxStartFailed",
    "__version__",
    "describe_failure",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__"):
        try:
            _obj.__module__ = "enclave_tools"
        except (AttributeError, TypeError):
            pass
del _name, _obj
