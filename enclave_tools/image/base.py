"""The base the kernel image starts from, and what runs in it (Python version, glibc).

An explicit build takes, in this order: ``python:3.12-slim`` if it is local; the base
bootstrapped earlier if it is local; ``python:3.12-slim`` pulled, where a registry answers
(asked with a short timeout, so that an offline machine learns it at once); else a base
bootstrapped now from Debian packages. Starting a sandbox never comes here.
"""

from __future__ import annotations

import contextlib
import re
import time

import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from enclave_tools.errors import ImageBuildFailed
from enclave_tools.image._common import (
    DockerClient,
    Progress,
    client_or_default,
    find_image,
    first_line,
)
from enclave_tools.image.bootstrap import BOOTSTRAP_BASE, bootstrap_base
from enclave_tools.image.recipe import default_image

__all__ = ["SLIM_BASE", "base_python", "choose_base", "needs_bootstrap"]

SLIM_BASE = "python:3.12-slim"
"""The preferred base: local, or pulled where a registry answers."""

REGISTRY_TIMEOUT = 3.0
"""Seconds the daemon gets to say whether a registry has the base, before a pull."""

_PULL_TIMEOUT = 600.0


def choose_base(
    client: DockerClient,
    base: str | None,
    bootstrap: bool,
    report: Progress,
    base_tag: str = BOOTSTRAP_BASE,
) -> str:
    """Pick the base image (see the module's docstring), pulling or making it if needed.

    ``base`` names one explicitly (local, else pulled); ``bootstrap`` asks for the base
    made from Debian packages, ``base_tag``.
    """
    if base is not None and not bootstrap:
        if find_image(client, base) is not None:
            report(f"base: {base} (local)")
        else:
            reason = _registry_has(client, base)
            if reason:
                raise ImageBuildFailed(
                    f"Could not pull the base image {base} ({reason}). Where no registry is "
                    "reachable, build with `enclave-tools image build --bootstrap`: the base "
                    "is then made from Debian packages."
                )
            _pull(client, base, report)
        return base
    if not bootstrap:
        if find_image(client, SLIM_BASE) is not None:
            report(f"base: {SLIM_BASE} (local)")
            return SLIM_BASE
        if find_image(client, base_tag) is not None:
            report(f"base: {base_tag} (bootstrapped earlier from Debian packages)")
            return base_tag
        reason = _registry_has(client, SLIM_BASE)
        if not reason:
            _pull(client, SLIM_BASE, report)
            return SLIM_BASE
        report(f"base: cannot pull {SLIM_BASE} ({reason})")
    elif find_image(client, base_tag) is not None:
        report(f"base: {base_tag} (bootstrapped earlier from Debian packages)")
        return base_tag
    report(f"base: bootstrapping {base_tag} from Debian packages (no registry needed)")
    bootstrap_base(client, tag=base_tag, progress=report)
    return base_tag


def needs_bootstrap(client: DockerClient | None = None) -> bool:
    """Whether building the default kernel image now would bootstrap a base from Debian packages.

    False when the image exists, a base is local, or a registry serves python:3.12-slim.
    """
    client = client_or_default(client)
    if any(find_image(client, name) for name in (default_image(), SLIM_BASE, BOOTSTRAP_BASE)):
        return False
    return bool(_registry_has(client, SLIM_BASE))


def _registry_has(client: DockerClient, name: str) -> str:
    """Empty if a registry serves ``name``; else why not. Bounded by REGISTRY_TIMEOUT."""
    api = client.api
    try:
        # The daemon asks the registry for the manifest, with its own mirrors and proxy.
        # docker-py has no per-call timeout, hence the private helpers.
        response = api._get(api._url("/distribution/{0}/json", name), timeout=REGISTRY_TIMEOUT)
        api._raise_for_status(response)
    except requests.exceptions.Timeout:
        return f"no registry answered within {REGISTRY_TIMEOUT:.0f} s"
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        return first_line(exc)
    return ""


def _pull(client: DockerClient, name: str, report: Progress) -> None:
    """Pull ``name`` with a line per finished layer; ImageBuildFailed if it fails."""
    repository, tag = parse_repository_tag(name)
    report(f"base: pulling {name} (a registry answered)")
    started = time.monotonic()
    layers = 0
    try:
        events = client.api.pull(repository, tag=tag or "latest", stream=True, decode=True)
        for event in events:
            if "error" in event:
                raise docker.errors.APIError(event["error"])
            if event.get("status") == "Pull complete":
                layers += 1
                report(f"pull: {layers} layers done")
            if time.monotonic() - started > _PULL_TIMEOUT:
                raise ImageBuildFailed(f"pulling {name} took over {_PULL_TIMEOUT:.0f} s")
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ImageBuildFailed(
            f"Could not pull the base image {name} ({first_line(exc)}). Where no registry "
            "is reachable, build with `enclave-tools image build --bootstrap`: the base is "
            "then made from Debian packages.",
            log=str(exc),
        ) from exc
    report(f"base: {name} (pulled in {time.monotonic() - started:.0f} s)")


_PROBE = "import sys,platform;print('%d.%d.%d'%sys.version_info[:3]);print(*platform.libc_ver())"


def base_python(client: DockerClient, image: str) -> tuple[str, tuple[int, int] | None]:
    """The Python version (X.Y.Z) in ``image`` and its glibc (major, minor), by running it."""
    output = _run_once(client, image, ["python3", "-c", _PROBE])
    lines = output.split("\n")
    if not re.fullmatch(r"\d+\.\d+\.\d+", lines[0].strip()):
        raise ImageBuildFailed(f"The base image {image} has no usable python3.", log=output)
    libc = lines[1].split() if len(lines) > 1 else []
    glibc = None
    if len(libc) == 2 and libc[0] == "glibc" and re.fullmatch(r"\d+\.\d+", libc[1]):
        major, minor = libc[1].split(".")
        glibc = (int(major), int(minor))
    return lines[0].strip(), glibc


def _run_once(client: DockerClient, image: str, command: list[str]) -> str:
    """Run ``command`` in a throwaway, network-less container of a local image; its stdout."""
    api = client.api
    try:
        container = api.create_container(
            image,
            entrypoint=command[:1],
            command=command[1:],
            host_config=api.create_host_config(network_mode="none"),
        )
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(f"Could not run the base image {image}: {first_line(exc)}") from exc
    try:
        api.start(container)
        status = api.wait(container, timeout=120).get("StatusCode")
        out = api.logs(container, stdout=True, stderr=False).decode(errors="replace")
        if status != 0:
            err = api.logs(container, stdout=False, stderr=True).decode(errors="replace")
            raise ImageBuildFailed(f"`{' '.join(command[:2])} …` failed in {image}", log=out + err)
        return str(out)
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_container(container, force=True)
