"""Removing a directory tree that hostile code may have shaped.

``shutil.rmtree`` recurses once per level (a chain a few thousand directories deep raises
RecursionError) and gives up on a directory it may not read. :func:`remove_tree` works
through directory file descriptors and never recurses: each subdirectory found is first
moved up to the top of the tree (so no path ever grows deep and at most two directories
are open at once), then emptied and removed. Symlinks are removed, never followed.
Permissions are fixed where this process may fix them (its own files); what still cannot
be removed is logged and reported, never raised.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat

__all__ = ["remove_tree"]

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str | None) -> list[str]:
    """Remove ``path`` and everything under it, never following a symlink and never
    raising; return what could not be removed (empty when all is gone). ``path`` itself
    may be a symlink (the link is removed) or absent (nothing to do)."""
    if not path:
        return []
    problems: list[str] = []
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return _report(path, [f"{path}: {exc.strerror}"])
    if stat.S_ISDIR(info.st_mode):
        _empty(path, problems)
    try:
        (os.rmdir if stat.S_ISDIR(info.st_mode) else os.unlink)(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror}")
    return _report(path, problems)


def _report(path: str, problems: list[str]) -> list[str]:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        log.warning("could not remove all of %s: %s", path, shown)
    return problems


def _empty(path: str, problems: list[str]) -> None:
    """Empty the directory ``path``: repeat passes over its entries (each pass removes
    files, and moves grandchildren up) until it is empty or a pass changes nothing."""
    try:
        top = _open_dir(path, None)
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror}")
        return
    stuck: set[str] = set()
    try:
        while True:
            try:
                names = [name for name in os.listdir(top) if name not in stuck]
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                return
            if not names:
                return
            for name in names:
                if not _clear_entry(top, name, path, problems):
                    stuck.add(name)
    finally:
        os.close(top)


def _clear_entry(top: int, name: str, where: str, problems: list[str]) -> bool:
    """Remove entry ``name`` of ``top``; a directory's own subdirectories are moved up
    into ``top`` (removed by a later pass). False when nothing could be done with it."""
    try:
        info = os.lstat(name, dir_fd=top)
    except FileNotFoundError:
        return True
    except OSError as exc:
        problems.append(f"{where}/{name}: {exc.strerror}")
        return False
    if not stat.S_ISDIR(info.st_mode):
        return _unlink(top, name, where, problems)
    try:
        child = _open_dir(name, top)
    except OSError as exc:
        problems.append(f"{where}/{name}: {exc.strerror}")
        return False
    try:
        moved_all = _hoist_children(child, top, f"{where}/{name}", problems)
    finally:
        os.close(child)
    try:
        os.rmdir(name, dir_fd=top)
        return True
    except OSError as exc:
        if moved_all:  # otherwise the entry that stayed was reported already
            problems.append(f"{where}/{name}: {exc.strerror}")
        return False


def _hoist_children(child: int, top: int, where: str, problems: list[str]) -> bool:
    """Unlink ``child``'s files, move its directories up into ``top``; True if all went."""
    try:
        names = os.listdir(child)
    except OSError as exc:
        problems.append(f"{where}: {exc.strerror}")
        return False
    done = True
    for name in names:
        try:
            info = os.lstat(name, dir_fd=child)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{where}/{name}: {exc.strerror}")
            done = False
            continue
        if stat.S_ISDIR(info.st_mode):
            done = _move_up(child, name, top, where, problems) and done
        else:
            done = _unlink(child, name, where, problems) and done
    return done


def _move_up(child: int, name: str, top: int, where: str, problems: list[str]) -> bool:
    """Rename directory ``name`` of ``child`` to a fresh name in ``top``. Moving a
    directory rewrites its ``..``, so it must be writable: fix it once if it is not."""
    for attempt in (0, 1):
        try:
            os.rename(name, f".rm-{secrets.token_hex(8)}", src_dir_fd=child, dst_dir_fd=top)
            return True
        except OSError as exc:
            if attempt or exc.errno not in (errno.EPERM, errno.EACCES) or not _make_accessible(name, child):
                problems.append(f"{where}/{name}: {exc.strerror}")
                return False
    return False


def _unlink(parent: int, name: str, where: str, problems: list[str]) -> bool:
    try:
        os.unlink(name, dir_fd=parent)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        problems.append(f"{where}/{name}: {exc.strerror}")
        return False


def _open_dir(name: str, parent: int | None) -> int:
    """A descriptor of directory ``name`` (never through a symlink), made readable,
    writable and searchable first if it was not and this process owns it."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        if not _make_accessible(name, parent):
            raise
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    _make_accessible_fd(fd)
    return fd


def _make_accessible(name: str, parent: int | None) -> bool:
    """chmod u+rwx directory ``name`` without following a symlink; True if it changed."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o700 == 0o700:
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(info.st_mode) | 0o700)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _make_accessible_fd(fd: int) -> None:
    """Make an open directory writable (to unlink its entries), where this process may."""
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(mode) | 0o700)
    except OSError:
        pass
