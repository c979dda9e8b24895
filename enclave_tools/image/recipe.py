"""The recipe: the Docker build context ``kernel_image/``, its hash, and its tar stream."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["IMAGE_REPOSITORY", "context_dir", "context_tar", "default_image", "recipe_hash"]

IMAGE_REPOSITORY = "enclave-tools/kernel"
"""Repository of the kernel images; the tag is a hash of the recipe."""

_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_TOP = {"wheels"}


def context_dir() -> pathlib.Path:
    """The Docker build context: the packaged copy if installed, else the repo's kernel_image/."""
    package = pathlib.Path(__file__).resolve().parent.parent  # enclave_tools/
    packaged = package / "_kernel_image"
    if (packaged / "Dockerfile").is_file():
        return packaged
    return package.parent / "kernel_image"


def context_files(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """The context's files as (posix relative path, path), sorted; no wheels/ or caches."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _EXCLUDED_DIRS and not (rel_dir == pathlib.Path(".") and d in _EXCLUDED_TOP)
        )
        for name in filenames:
            if not name.endswith(".pyc"):
                found.append(((rel_dir / name).as_posix(), pathlib.Path(dirpath) / name))
    return sorted(found)


def recipe_hash(root: pathlib.Path | None = None) -> str:
    """sha256 (hex) over the context's relative paths and contents."""
    digest = hashlib.sha256()
    for rel, path in context_files(root or context_dir()):
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def default_image() -> str:
    """The kernel image's default name: ``enclave-tools/kernel:<12 hex of the recipe hash>``."""
    return f"{IMAGE_REPOSITORY}:{recipe_hash(context_dir())[:12]}"


@contextlib.contextmanager
def context_tar(root: pathlib.Path, wheels: list[pathlib.Path]) -> Iterator[IO[bytes]]:
    """A temporary tar of the context with ``wheels`` as wheels/, rewound for reading."""
    with tempfile.TemporaryFile() as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            for rel, path in context_files(root):
                tar.add(path, arcname=rel, filter=_root_owned)
            tar.add(root, arcname="wheels", recursive=False, filter=_root_owned)
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheels/{wheel.name}", filter=_root_owned)
        handle.seek(0)
        yield handle


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info
