"""The build: base, wheelhouse and recipe into ``docker build``, offline, one at a time.

``ensure_image`` finds the kernel image (never pulling it) and builds the default one when
missing; ``build_image`` builds on request. Either holds a lock, so that threads and
processes sharing a cache dir build once. A build leaves no dangling image behind.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import re
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import docker.errors

from enclave_tools.errors import ImageBuildFailed, ImageNotFound
from enclave_tools.image._common import (
    LOG_TAIL,
    DockerClient,
    Progress,
    cache_dir,
    client_or_default,
    docker_arch,
    find_image,
    first_line,
    reporter,
    shorten,
)
from enclave_tools.image.base import base_python, choose_base
from enclave_tools.image.bootstrap import BOOTSTRAP_BASE
from enclave_tools.image.recipe import context_dir, context_tar, default_image, recipe_hash
from enclave_tools.image.wheelhouse import wheelhouse

__all__ = ["LABEL_BASE", "LABEL_RECIPE", "build_image", "ensure_image", "list_images"]

LABEL_RECIPE = "org.enclave-tools.recipe"
LABEL_BASE = "org.enclave-tools.base"

_thread_locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(threading.Lock)


@contextlib.contextmanager
def cache_lock(name: str, waiting: str, report: Progress) -> Iterator[None]:
    """Hold the lock ``name`` (e.g. ``"build"``): one thread in this process, one process
    per cache dir; ``waiting`` is said while another process holds it."""
    with _thread_locks[name]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: the thread lock must do
            yield
            return
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report(f"waiting for another enclave-tools process to finish {waiting}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _build_lock(report: Progress) -> contextlib.AbstractContextManager[None]:
    return cache_lock("build", "building", report)


def ensure_image(
    client: DockerClient | None,
    name: str | None = None,
    *,
    build: bool = True,
    progress: Progress | None = None,
) -> str:
    """Return the id of the kernel image ``name`` (default: :func:`default_image`).

    The image is looked up locally, never pulled. The default image is built when it is
    missing and ``build`` is true (its base may then be pulled, see ``base``); anything else
    missing raises ImageNotFound. Concurrent callers (threads, or processes sharing a cache
    dir) build it once.
    """
    client = client_or_default(client)
    default = default_image()
    name = name or default
    image = find_image(client, name)
    if image is not None:
        return str(image.id)
    if name != default or not build:
        raise ImageNotFound(_not_found_message(name, is_default=name == default))
    report = reporter(progress)
    with _build_lock(report):
        image = find_image(client, name)  # another thread or process may have built it
        if image is not None:
            return str(image.id)
        report(f"kernel image {name} is not built yet; building it (once, a few minutes)")
        return _build(client, name, base=None, bootstrap=False, report=report)


def _not_found_message(name: str, *, is_default: bool) -> str:
    if is_default:
        return (
            f"The kernel image {name} is not built. Run `enclave-tools image build` "
            "(it needs no registry: the base is bootstrapped from Debian packages when "
            "python:3.12-slim is neither local nor pullable), or let enclave-tools build it "
            "on first use."
        )
    return (
        f"The image {name} is not in the local Docker image store, and enclave-tools never "
        "pulls images implicitly. Build it, load it (`docker load -i FILE`), or pull it "
        "yourself (`docker pull NAME`)."
    )


def build_image(
    client: DockerClient | None = None,
    *,
    tag: str | None = None,
    base: str | None = None,
    bootstrap: bool = False,
    progress: Progress | None = None,
    base_tag: str = BOOTSTRAP_BASE,
) -> str:
    """Build the kernel image and return its id.

    ``tag`` defaults to :func:`default_image`. The base: ``base`` if given (local, or
    pulled); else ``python:3.12-slim`` if local, the bootstrapped ``base_tag`` if local,
    ``python:3.12-slim`` pulled where a registry answers, else ``base_tag`` bootstrapped
    from Debian packages; ``bootstrap`` goes straight to ``base_tag``.
    Raises ImageBuildFailed with the end of the log in ``.log``.
    """
    client = client_or_default(client)
    report = reporter(progress)
    with _build_lock(report):
        return _build(client, tag or default_image(), base, bootstrap, report, base_tag)


def _build(
    client: DockerClient,
    tag: str,
    base: str | None,
    bootstrap: bool,
    report: Progress,
    base_tag: str = BOOTSTRAP_BASE,
) -> str:
    """Build ``tag``; the caller holds the build lock."""
    started = time.monotonic()
    base = choose_base(client, base, bootstrap, report, base_tag)
    python, glibc = base_python(client, base)
    arch = docker_arch(client)
    libc = ".".join(map(str, glibc)) if glibc else "?"
    report(f"base runs Python {python} (glibc {libc}) on {arch}")
    root = context_dir()
    wheels = wheelhouse(root / "requirements.txt", python, arch, glibc, report)
    labels = {LABEL_RECIPE: recipe_hash(root), LABEL_BASE: base}
    with context_tar(root, wheels) as context:
        image_id = _docker_build(client, context, tag, base, labels, report)
    image = client.images.get(image_id)
    size = image.attrs.get("Size", 0) / 1e6
    report(f"built {tag} ({image_id[7:19]}, {size:.0f} MB) in {time.monotonic() - started:.0f} s")
    return image_id


def _docker_build(
    client: DockerClient,
    context: IO[bytes],
    tag: str,
    base: str,
    labels: dict[str, str],
    report: Progress,
) -> str:
    """Run the classic builder on a tar stream, offline; return the image id.

    The builder keeps each stage but the last as an untagged image; those are removed,
    whether the build succeeded or not.
    """
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    steps = _StepTimer(report)
    report(f"docker build {tag} (network: none)")
    try:
        events = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            buildargs={"BASE_IMAGE": base},
            labels=labels,
            network_mode="none",
            rm=True,
            forcerm=True,
            decode=True,
            pull=False,
        )
        for event in events:
            if "error" in event:
                tail.append(event["error"])
                raise ImageBuildFailed(
                    f"Building {tag} failed: {first_line(event['error'])}", log="\n".join(tail)
                )
            for line in str(event.get("stream", "")).splitlines():
                if line.strip():
                    tail.append(line)
                    steps.line(line)
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(f"Building {tag} failed: {first_line(exc)}", log="\n".join(tail)) from exc
    finally:
        steps.finish()
        _remove_stages(client, steps.stage_images, report)
    image = find_image(client, tag)
    if image is None:
        raise ImageBuildFailed(f"The build of {tag} ended without an image.", log="\n".join(tail))
    return str(image.id)


class _StepTimer:
    """Reports each build step and how long the slow ones took; notes each stage's image."""

    SLOW = 5.0

    def __init__(self, report: Progress) -> None:
        self.report = report
        self.step: str | None = None
        self.started = time.monotonic()
        self.last_image: str | None = None
        self.stage_images: list[str] = []

    def line(self, line: str) -> None:
        """One line of the builder's output."""
        layer = re.fullmatch(r"\s*---> ([0-9a-f]{12,})", line)
        if layer:
            self.last_image = layer.group(1)
        elif line.startswith("Step "):
            # A FROM after the first one ends a stage: its last image is now an orphan.
            if re.match(r"Step \d+/\d+ : FROM\b", line, re.IGNORECASE):
                if self.last_image:
                    self.stage_images.append(self.last_image)
                self.last_image = None
            self._next(line)
        elif line.startswith("Successfully built"):
            self._next(line)

    def _next(self, line: str) -> None:
        now = time.monotonic()
        if self.step and now - self.started >= self.SLOW:
            self.report(f"  ({self.step} took {now - self.started:.0f} s)")
        self.step = line.split(" :", 1)[0] if line.startswith("Step ") else None
        self.started = now
        self.report(shorten(line))

    def finish(self) -> None:
        """The build ended (or failed): report the last step if it was slow."""
        now = time.monotonic()
        if self.step and now - self.started >= self.SLOW:
            self.report(f"  ({self.step} took {now - self.started:.0f} s)")
        self.step = None


def _remove_stages(client: DockerClient, images: list[str], report: Progress) -> None:
    """Remove the images the builder left for finished stages (and their untagged parents)."""
    for image in images:
        with contextlib.suppress(docker.errors.DockerException):
            found = find_image(client, image)
            # Only an image with no tag: a stage that starts from a named image (FROM base)
            # and adds nothing would leave that named image's id here.
            if found is not None and not found.tags:
                client.images.remove(image)
                report(f"removed the build stage image {image}")


def list_images(client: DockerClient | None) -> list[dict[str, Any]]:
    """The local images tagged ``enclave-tools/*``: tag, short id, size (bytes), created."""
    rows = []
    for image in client_or_default(client).images.list():
        for tag in image.tags:
            if tag.startswith("enclave-tools/"):
                rows.append(
                    {
                        "tag": tag,
                        "id": image.id.split(":")[-1][:12],
                        "size": image.attrs.get("Size", 0),
                        "created": _iso(image.attrs.get("Created", "")),
                    }
                )
    return sorted(rows, key=lambda row: row["tag"])


def _iso(created: str) -> str:
    """Docker's nanosecond timestamp, to seconds (ISO 8601, UTC)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", created)
    if not match:
        return created
    return datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.UTC).isoformat()
