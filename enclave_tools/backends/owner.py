"""Who owns a sandbox: this host and process, recorded on the container or pod, so that a
reaper can tell a live owner from one that crashed (a reused pid included)."""

from __future__ import annotations

import os
import socket

__all__ = ["OwnerRecord", "owner_alive", "process_start_time", "this_owner"]

OwnerRecord = tuple[str, str, str]
"""(host, pid, process start time)."""


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (from /proc), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def this_owner() -> OwnerRecord:
    """This process, as an owner record."""
    pid = os.getpid()
    return socket.gethostname(), str(pid), process_start_time(pid) or ""


def owner_alive(host: str | None, pid: str | None, started: str | None) -> bool:
    """Whether the recorded owner still runs. Another host's owner is presumed alive: it is
    not ours to judge (its own reaper, or a server-side deadline, ends its sandboxes)."""
    if host != socket.gethostname():
        return True
    try:
        number = int(pid or "")
    except ValueError:
        return False
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or started == process_start_time(number)
