"""Who owns a sandbox, recorded on the container or pod, so that a reaper can tell a live
owner from one that is gone.

An owner is a process: its host name, pid and start time, the boot of the machine it ran
on (``/proc/sys/kernel/random/boot_id``) and its PID namespace (the inode of
``/proc/self/ns/pid``). A pid means something only inside its own PID namespace: a
process in a container (``--network host`` shares the host name), or another CI job on
the same Docker daemon, has pids this process cannot see. So an owner is judged gone only
when that is provable:

* same host name, same boot and same PID namespace as the judge, and its pid is absent
  or now belongs to a process that started at another time; or
* same host name and boot, and the judge sees every process of this machine (it runs in
  the initial PID namespace with a full ``/proc``) and none of them has the owner's pid
  (in its own namespace) and start time.

Anything else (another host, another boot, a namespace the judge cannot see into, a
record it cannot read) is presumed alive: removing a live owner's sandbox destroys its
work, while a stale sandbox only waits for a reaper that can judge it (or for
``enclave-tools stop``).

Records written before the boot and namespace were recorded ("legacy": host, pid and start
time only) are judged by the machine-wide rule alone, with the host name taken to name
this machine, as before: where the judge cannot see every process, they are presumed
alive. (The old rule, "the pid is absent here", judged owners in other namespaces dead.)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = [
    "Owner",
    "OwnerCheck",
    "OwnerRecord",
    "boot_id",
    "machine_processes",
    "owner_alive",
    "pid_namespace",
    "process_start_time",
    "this_owner",
]

OwnerRecord = tuple[str, str, str]
"""(host, pid, process start time)."""

INITIAL_PID_NAMESPACE = 0xEFFFFFFC
"""The inode of the initial (the machine's own) PID namespace: PROC_PID_INIT_INO in Linux."""


@dataclass(frozen=True)
class Owner:
    """One owner record; empty strings for what was not recorded."""

    host: str
    pid: str
    started: str
    boot_id: str = ""
    pid_namespace: str = ""

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(socket.gethostname(), str(pid), process_start_time(pid) or "", boot_id(), pid_namespace())


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (from /proc), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    """This machine's current boot (shared by every container on its kernel); '' if unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """The inode number of this process's PID namespace; '' if unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def this_owner() -> OwnerRecord:
    """This process, as a (host, pid, start time) record."""
    owner = Owner.current()
    return owner.host, owner.pid, owner.started


class OwnerCheck:
    """Judges owner records against this machine. One check reads the machine's process
    table at most once: make a new one for each reaping pass."""

    def __init__(self) -> None:
        self._here = Owner.current()
        self._machine: frozenset[tuple[int, str]] | None = None
        self._machine_read = False

    def alive(self, owner: Owner) -> bool:
        """False only when ``owner`` is provably gone (see the module's docstring)."""
        if owner.host != self._here.host:
            return True  # not ours to judge: its own reaper, or a deadline, ends its sandboxes
        try:
            pid = int(owner.pid)
        except ValueError:
            return True
        if pid <= 0:
            return True
        if owner.boot_id and owner.pid_namespace:
            if owner.boot_id != self._here.boot_id:
                return True  # another machine of the same name, or an earlier boot: unknowable
            if owner.pid_namespace == self._here.pid_namespace:
                return _runs_here(pid, owner.started)
        return not self._gone_from_machine(pid, owner.started)

    def _gone_from_machine(self, pid: int, started: str) -> bool:
        """Whether no process of this machine has ``pid`` (in its own namespace) and
        ``started``; False when that cannot be known."""
        if not started:
            return False  # a pid alone matches a process in any namespace
        if not self._machine_read:
            self._machine, self._machine_read = machine_processes(), True
        return self._machine is not None and (pid, started) not in self._machine


def owner_alive(
    host: str | None,
    pid: str | None,
    started: str | None,
    *,
    boot: str | None = None,
    namespace: str | None = None,
) -> bool:
    """Whether the recorded owner may still run: False only when it is provably gone."""
    owner = Owner(host or "", pid or "", started or "", boot or "", namespace or "")
    return OwnerCheck().alive(owner)


def _runs_here(pid: int, started: str) -> bool:
    """Whether ``pid`` of this PID namespace runs, and started at ``started`` (if known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or started == process_start_time(pid)


def machine_processes() -> frozenset[tuple[int, str]] | None:
    """Every process of this machine as (its pid in its own PID namespace, its start time);
    None unless this process sees them all: it runs in the initial PID namespace, /proc is
    that namespace's, and no entry is hidden from it (``hidepid``)."""
    try:
        if os.stat("/proc/self/ns/pid").st_ino != INITIAL_PID_NAMESPACE:
            return None
        if int(os.readlink("/proc/self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    seen: set[tuple[int, str]] = set()
    init_seen = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            innermost = _innermost_pid(entry)
            started = _start_time(entry)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended while we looked
        except (OSError, ValueError, IndexError):
            return None  # hidden or unreadable: the table is not complete
        if innermost is None:
            return None  # a kernel without NSpid: namespaces cannot be seen through
        seen.add((innermost, started))
        init_seen = init_seen or entry == "1"
    if not init_seen:
        return None  # not even init is visible: /proc hides processes from us
    return frozenset(seen)


def _innermost_pid(entry: str) -> int | None:
    with open(f"/proc/{entry}/status") as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return None


def _start_time(entry: str) -> str:
    with open(f"/proc/{entry}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[19]
