"""Exceptions raised by enclave-tools.

An error in the *user's* code is not an exception: it comes back as an
:class:`~enclave_tools.Execution` with ``status == "error"``.  The exceptions below are
for the sandbox itself, and every message says what to do next.

Exception tree::

    EnclaveError
    ├── DockerUnavailable        the Docker daemon cannot be reached
    ├── ImageError
    │   ├── ImageNotFound        the kernel image is not present and was not built
    │   └── ImageBuildFailed     building the kernel image (or its base) failed
    ├── SandboxStartFailed       the container or its gateway did not come up
    ├── SandboxDied              the container stopped or vanished; its state is lost
    │   └── SandboxGone          a kept-alive sandbox to connect to has ended or is unknown
    ├── SandboxInUse             a kept-alive sandbox is attached to another process
    ├── SandboxAccessDenied      a kept-alive sandbox belongs to another user
    ├── SandboxClosed            the sandbox was closed and cannot run code
    ├── GatewayError             the gateway answered an unexpected error
    ├── FileTransferError        a file could not be read or written in the sandbox
    └── InvalidInput             an argument was rejected before reaching the kernel
                                 (also a ``ValueError``)
"""

from __future__ import annotations

__all__ = [
    "DockerUnavailable",
    "EnclaveError",
    "FileTransferError",
    "GatewayError",
    "GatewayMisbehaved",
    "GatewayUnreachable",
    "ImageBuildFailed",
    "ImageError",
    "ImageNotFound",
    "InvalidInput",
    "SandboxAccessDenied",
    "SandboxClosed",
    "SandboxDied",
    "SandboxGone",
    "SandboxInUse",
    "SandboxStartFailed",
]


class EnclaveError(Exception):
    """Base class of every exception enclave-tools raises."""


class DockerUnavailable(EnclaveError):
    """The Docker daemon could not be reached."""


class ImageError(EnclaveError):
    """Base class for problems with the kernel image."""


class ImageNotFound(ImageError):
    """The kernel image is not in the local image store."""


class ImageBuildFailed(ImageError):
    """Building the kernel image, or the base it starts from, failed.

    ``log`` holds the last lines of the build output.
    """

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class SandboxStartFailed(EnclaveError):
    """The container or the gateway inside it did not start."""


class SandboxDied(EnclaveError):
    """The sandbox's container stopped or was removed; everything in it is lost."""


class SandboxGone(SandboxDied):
    """The kept-alive sandbox to connect to has ended (idle or lifetime limit, stopped) or
    was never known to this user."""


class SandboxInUse(EnclaveError):
    """The kept-alive sandbox is attached to another process; it lets go on ``detach()``,
    ``close()`` or its exit."""


class SandboxAccessDenied(EnclaveError):
    """The kept-alive sandbox (its record or lock) is not this user's: only the user who
    created it may connect."""


class SandboxClosed(EnclaveError):
    """The sandbox was closed; create a new one to run more code."""


class GatewayError(EnclaveError):
    """The gateway in the container answered with an unexpected error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnreachable(GatewayError):
    """The gateway could not be reached: refused, reset, gone, or its socket replaced."""


class GatewayMisbehaved(GatewayError):
    """The gateway broke the protocol or a bound: an answer too large, too slow, or malformed.
    The sandbox's code may control the gateway, so this is treated as hostile."""


class FileTransferError(EnclaveError):
    """A file could not be copied into or out of the sandbox."""


class InvalidInput(EnclaveError, ValueError):
    """An argument was rejected before it reached the kernel (bad type, too large, ...)."""
