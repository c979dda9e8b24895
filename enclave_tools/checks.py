"""Checks of what a caller passes in (code, a timeout, a wait), before anything is queued:
bad input is refused with a clear :class:`~enclave_tools.errors.InvalidInput`."""

from __future__ import annotations

from typing import Any

from enclave_tools.errors import InvalidInput

__all__ = ["check_code", "check_timeout", "check_wait"]


def check_code(code: Any) -> str:
    """``code`` if it is runnable text; raises :class:`InvalidInput` otherwise."""
    if not isinstance(code, str):
        raise InvalidInput(f"code must be a string of Python, not {type(code).__name__}")
    if "\0" in code:
        raise InvalidInput("code contains a NUL byte; remove it")
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"code is not valid text (a lone surrogate at position {exc.start})") from exc
    return code.removeprefix("\ufeff").replace("\r\n", "\n")


def check_timeout(timeout: Any, default: float) -> float:
    """A usable timeout in seconds; raises :class:`InvalidInput` for a bad one."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidInput(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (0 < timeout <= 24 * 3600) or timeout != timeout:
        raise InvalidInput(f"timeout must be between 0 and 86400 seconds, not {timeout}")
    return float(timeout)


def check_wait(seconds: Any, name: str) -> float | None:
    """``seconds`` to wait (0 to a day, or None: no limit); raises :class:`InvalidInput`
    for anything else (NaN, inf, negative, a string)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 24 * 3600:
        raise InvalidInput(f"{name} must be a number of seconds from 0 to 86400, not {seconds!r}")
    return float(seconds)
