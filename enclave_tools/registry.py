"""Kept-alive sandboxes on this host: one private record per sandbox, and the locks that
say which process is attached to it.

A record (``$XDG_STATE_HOME/enclave-tools/sandboxes/<id>.json``, else
``~/.local/state/...``) holds what a process needs to reach a detached sandbox: its
container, its socket and its token. The directory is 0700 and each record 0600, both owned
by this user; a record that is not (another user's, a symlink, readable by others) is
refused. The token is in the record only: never in labels, command lines, logs or errors.

Who is attached: a process attached to a sandbox holds an exclusive ``flock`` on
``<id>.lock`` until it detaches, closes the sandbox or exits (the kernel releases the lock
of a process that died, even by SIGKILL). Another process's :func:`attach` waits for it up
to ``wait`` seconds, then raises :class:`~enclave_tools.errors.SandboxInUse`.

Which sandbox is a session's: :func:`session_sandbox_id` derives the id (and so the
container's name) from this user and the session key, so every process finds the same
one, and :func:`creation_lock` lets one process at a time create it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from enclave_tools.errors import EnclaveError, SandboxAccessDenied, SandboxGone, SandboxInUse

__all__ = [
    "AttachLock",
    "Record",
    "attach",
    "creation_lock",
    "load",
    "prune_locks",
    "records",
    "remove",
    "save",
    "session_sandbox_id",
    "state_dir",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_RECORD_LIMIT = 1 << 20
_POLL = 0.05


@dataclass
class Record:
    """What this host user knows of one kept-alive sandbox."""

    id: str
    backend: str
    container_id: str
    name: str
    token: str = field(repr=False)
    kernel_id: str = ""
    run_dir: str | None = None
    unix_path: str | None = None
    port: int | None = None
    session: str | None = None
    created: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    expires: float = 0.0
    """When (epoch seconds) its lifetime is up, as last set from the host; 0: unknown."""


def state_dir() -> Path:
    """This user's private directory of records (created 0700); raises
    :class:`SandboxAccessDenied` if it exists but is not private to this user."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    path = Path(base) / "enclave-tools" / "sandboxes"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except PermissionError:
        raise SandboxAccessDenied(
            f"{path} belongs to another user: only the user who created a sandbox may connect to it"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SandboxAccessDenied(
            f"{path} is not a directory of this user; refusing to keep sandbox records there"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_id(sandbox_id: str) -> str:
    """``sandbox_id`` if it is a well-formed id; raises :class:`SandboxGone` otherwise."""
    if not isinstance(sandbox_id, str) or not _ID.match(sandbox_id):
        raise SandboxGone(f"{sandbox_id!r} is not a sandbox id (ids are like 'a1b2c3d4e5f6')")
    return sandbox_id


def session_sandbox_id(key: str) -> str:
    """The id of session ``key``'s kept-alive sandbox for this host user (the same in every
    process)."""
    digest = hashlib.sha256(f"{os.getuid()}\0{key}".encode()).hexdigest()
    return f"s{digest[:15]}"


def save(record: Record) -> None:
    """Write ``record`` (0600, replaced atomically)."""
    directory = state_dir()
    target = directory / f"{check_id(record.id)}.json"
    temp = directory / f".{record.id}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def load(sandbox_id: str) -> Record:
    """The record of ``sandbox_id``. Raises :class:`SandboxGone` if there is none, and
    :class:`SandboxAccessDenied` if it is not this user's private file."""
    path = state_dir() / f"{check_id(sandbox_id)}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SandboxGone(
            f"sandbox {sandbox_id} is gone: it ended (idle or lifetime limit, closed or stopped) or "
            "was never kept alive by this user on this host. Create a new Sandbox."
        ) from None
    except OSError as exc:
        raise SandboxAccessDenied(f"cannot read the record of sandbox {sandbox_id}: {exc.strerror}") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise SandboxAccessDenied(
                f"sandbox {sandbox_id} belongs to another user: only the user who created it may connect"
            )
        if info.st_mode & 0o077:
            raise SandboxAccessDenied(
                f"the record of sandbox {sandbox_id} is readable by other users, so its token may be "
                "known to them; refusing to use it. Stop it with `enclave-tools stop`."
            )
        try:
            fields = json.loads(handle.read(_RECORD_LIMIT))
            return Record(**{key: fields[key] for key in Record.__dataclass_fields__ if key in fields})
        except (ValueError, TypeError, KeyError):
            raise SandboxGone(
                f"the record of sandbox {sandbox_id} is damaged; the sandbox cannot be reached"
            ) from None


def remove(sandbox_id: str) -> None:
    """Forget ``sandbox_id`` (its lock file stays: another process may hold or wait on it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir() / f"{check_id(sandbox_id)}.json")


def prune_locks() -> int:
    """Delete the lock files (``<id>.lock``, ``<id>.create``) of sandboxes that have no
    record and that no process holds; return how many. A file is deleted only while this
    process holds its lock, so a waiter that opened it then finds it gone and retries."""
    directory = state_dir()
    removed = 0
    for path in [*directory.glob("*.lock"), *directory.glob("*.create")]:
        if (directory / f"{path.stem}.json").exists():
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not (directory / f"{path.stem}.json").exists():
                os.unlink(path)
                removed += 1
        except OSError:
            pass  # held, or gone already
        finally:
            os.close(fd)
    return removed


def records() -> list[Record]:
    """Every readable record of this user."""
    found = []
    for path in sorted(state_dir().glob("*.json")):
        with contextlib.suppress(EnclaveError):
            found.append(load(path.stem))
    return found


class AttachLock:
    """This process's hold on one sandbox (an exclusive ``flock``); :meth:`release` lets go."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this process still holds it."""
        return self._fd is not None

    def release(self) -> None:
        """Let go (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock


def _lock(name: str, wait: float) -> int | None:
    """An exclusive flock on ``name`` in the state directory, or None after ``wait`` s. A
    lock file may be deleted by :func:`prune_locks` (only while locked): a lock taken on a
    file that is no longer the one at the path is let go, and the new file locked instead."""
    path = state_dir() / name
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_uid != os.getuid():
            os.close(fd)
            raise SandboxAccessDenied(f"the lock file {path} belongs to another user")
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(_POLL)
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # pruned meanwhile: lock the file now at the path


def attach(sandbox_id: str, wait: float = 0.0) -> AttachLock:
    """Attach this process to ``sandbox_id``, waiting up to ``wait`` seconds for another
    process to let go; raises :class:`SandboxInUse` if it does not."""
    fd = _lock(f"{check_id(sandbox_id)}.lock", wait)
    if fd is None:
        holder = _holder(sandbox_id)
        raise SandboxInUse(
            f"sandbox {sandbox_id} is in use by another process{holder}: one process at a time may be "
            "attached. It lets go on detach(), close() or exit; connect again later, or pass "
            "wait=SECONDS to Sandbox.connect to wait for it."
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return AttachLock(fd)


def _holder(sandbox_id: str) -> str:
    try:
        with open(state_dir() / f"{sandbox_id}.lock") as handle:
            pid = handle.read(32).strip()
        return f" (pid {int(pid)})" if pid else ""
    except (OSError, ValueError):
        return ""


@contextlib.contextmanager
def creation_lock(sandbox_id: str, wait: float) -> Iterator[None]:
    """Held while one process looks for, or creates, ``sandbox_id``; raises
    :class:`SandboxInUse` if another process holds it for more than ``wait`` seconds."""
    fd = _lock(f"{check_id(sandbox_id)}.create", wait)
    if fd is None:
        raise SandboxInUse(f"another process has been creating sandbox {sandbox_id} for more than {wait:g} s")
    try:
        yield
    finally:
        os.close(fd)
