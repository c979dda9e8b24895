"""What the image modules share: progress lines, the cache dir, running a command, the store."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import docker.errors
from docker import DockerClient

from enclave_tools.errors import DockerUnavailable

Progress = Callable[[str], None]
"""Receives one human-readable progress line at a time."""

LOG_TAIL = 40
"""How many lines of a failed tool's output an ImageBuildFailed keeps."""


def reporter(progress: Progress | None) -> Progress:
    """``progress``, or one that prints ``enclave-tools: LINE`` to stderr."""
    if progress is not None:
        return progress
    return lambda line: print(f"enclave-tools: {line}", file=sys.stderr, flush=True)


def cache_dir() -> pathlib.Path:
    """enclave-tools' cache directory (``$XDG_CACHE_HOME/enclave-tools``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "enclave-tools"


def client_or_default(client: DockerClient | None) -> DockerClient:
    """``client``, or the process's shared Docker client."""
    if client is not None:
        return client
    from enclave_tools._docker import docker_client

    return docker_client()


def find_image(client: DockerClient, name: str) -> Any | None:
    """The local image called ``name``, or None. Never pulls."""
    import requests.exceptions

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError) and exc.status_code == 404:
            return None
        raise DockerUnavailable(f"could not look up image {name!r}: {exc}") from exc


_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def normalize_arch(arch: str) -> str:
    """An architecture as wheel tags spell it (x86_64, aarch64)."""
    arch = arch.lower()
    return _ARCH_ALIASES.get(arch, arch)


def docker_arch(client: DockerClient) -> str:
    """The daemon's CPU architecture, as wheel tags spell it (x86_64, aarch64)."""
    return normalize_arch(str(client.info().get("Architecture") or platform.machine()))


def stream(command: list[str], on_line: Callable[[str], None], env: dict[str, str] | None = None) -> int:
    """Run ``command``, passing each line of its merged stdout/stderr to ``on_line``; exit code.

    ``env`` adds to (or overrides) this process's environment.
    """
    with subprocess.Popen(
        command,
        env={**os.environ, **env} if env else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()


def shorten(line: str, width: int = 110) -> str:
    """``line`` stripped, cut to ``width`` characters with an ellipsis."""
    line = line.strip()
    return line if len(line) <= width else line[: width - 1] + "…"


def first_line(exc: object) -> str:
    """The first line of an exception's message (docker's explanation when it has one)."""
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return shorten(text[0] if text else type(exc).__name__, 200)
