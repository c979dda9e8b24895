"""The wheelhouse: the pinned wheels the build installs, fetched on the host with ``pip download``.

Cached under ``~/.cache/enclave-tools/wheels/cpXY-ARCH/``; a pre-filled one named by
``ENCLAVE_WHEELHOUSE`` is used with ``--no-index``. The build itself has no network.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import sys
import time
from collections.abc import Iterable

from enclave_tools.errors import ImageBuildFailed
from enclave_tools.image._common import (
    LOG_TAIL,
    Progress,
    cache_dir,
    normalize_arch,
    shorten,
    stream,
)

__all__ = ["platform_tags", "wheelhouse"]


def platform_tags(arch: str, glibc: tuple[int, int] | None = None) -> list[str]:
    """The wheel platform tags a glibc Linux of ``arch`` accepts, best first.

    pip does not expand ``--platform manylinux_2_X`` to older glibc versions, so every
    version down to manylinux2014 (glibc 2.17) is listed. ``glibc`` defaults to 2.28.
    """
    arch = normalize_arch(arch)
    _, minor = glibc if glibc and glibc[0] == 2 else (2, 28)
    tags = [f"manylinux_2_{m}_{arch}" for m in range(max(minor, 17), 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch in ("x86_64", "i686"):
        tags += [
            f"manylinux_2_12_{arch}",
            f"manylinux2010_{arch}",
            f"manylinux_2_5_{arch}",
            f"manylinux1_{arch}",
        ]
    return tags + [f"linux_{arch}", "any"]


def wheelhouse(
    requirements: pathlib.Path,
    python: str,
    arch: str,
    glibc: tuple[int, int] | None,
    report: Progress,
) -> list[pathlib.Path]:
    """Fill (or check) the wheelhouse for this Python and arch; the wheels the build needs."""
    prefilled = os.environ.get("ENCLAVE_WHEELHOUSE")
    if prefilled:
        directory = pathlib.Path(prefilled).expanduser()
        report(f"wheels: using the pre-filled wheelhouse {directory} (no index)")
        attempts = [True]
    else:
        major, minor = python.split(".")[:2]
        directory = cache_dir() / "wheels" / f"cp{major}{minor}-{arch}"
        directory.mkdir(parents=True, exist_ok=True)
        # Try the cache alone first: a complete cache needs no network at all.
        attempts = [True, False] if any(directory.glob("*.whl")) else [False]
    started = time.monotonic()
    log: list[str] = []
    for offline in attempts:
        ok, log = _pip_download(directory, requirements, python, arch, glibc, offline, report)
        if ok:
            wheels = needed_wheels(directory, requirements, log)
            report(f"wheels: {len(wheels)} ready in {directory} ({time.monotonic() - started:.0f} s)")
            return wheels
        if offline and len(attempts) > 1:
            report("wheels: the cache is incomplete; downloading from the package index")
    hint = (
        "The pre-filled wheelhouse (ENCLAVE_WHEELHOUSE) lacks wheels for this Python/platform."
        if prefilled
        else "Is the package index reachable from this host (pip's proxy/CA settings)?"
    )
    raise ImageBuildFailed(
        f"pip could not gather the kernel's wheels. {hint}", log="\n".join(log[-LOG_TAIL:])
    )


def _pip_download(
    directory: pathlib.Path,
    requirements: pathlib.Path,
    python: str,
    arch: str,
    glibc: tuple[int, int] | None,
    offline: bool,
    report: Progress,
) -> tuple[bool, list[str]]:
    """Run ``pip download`` for the base's Python and platform; (success, output lines)."""
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
    # The requirements file is a complete lock: take exactly it, no resolution of extras.
    command += [
        "--progress-bar",
        "off",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--no-deps",
    ]
    command += ["--python-version", python, "-d", str(directory), "-r", str(requirements)]
    for tag in platform_tags(arch, glibc):
        command += ["--platform", tag]
    if offline:
        command += ["--no-index", "--find-links", str(directory)]
    lines: list[str] = []
    downloads: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        stripped = line.strip()
        if offline:
            return
        if stripped.startswith("Downloading "):
            downloads.append(stripped)
            if stripped.endswith(" MB)"):  # the big ones only; the small ones are counted
                report(f"pip: {shorten(stripped)}")
        elif stripped.startswith("ERROR:"):
            report(f"pip: {shorten(stripped)}")

    try:
        code = stream(command, on_line)
    except FileNotFoundError as exc:  # pragma: no cover - sys.executable vanished
        raise ImageBuildFailed(f"could not run pip: {exc}") from exc
    if code != 0 and any("No module named pip" in line for line in lines):
        raise ImageBuildFailed(
            f"pip is not installed for {sys.executable}; install it (`python -m ensurepip`)."
        )
    if downloads:
        report(f"pip: downloaded {len(downloads)} wheels")
    return code == 0, lines


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str | None]:
    """Requirement names (canonical) to their ``==`` version, or None when not pinned."""
    pins: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", line)
        if not line or line.startswith("-") or not match:
            continue
        spec = match.group(3).split(";", 1)[0].strip()
        pinned = re.fullmatch(r"==\s*([^\s,*]+)", spec)
        pins[_canonical(match.group(1))] = pinned.group(1) if pinned else None
    return pins


def select_wheels(
    wheels: Iterable[pathlib.Path], pins: dict[str, str | None], resolved: set[str] | None
) -> list[pathlib.Path]:
    """The wheels a build needs out of a wheelhouse that may hold other versions too.

    ``resolved`` are the canonical names pip resolved (None: unknown, keep every name).
    A pinned name keeps its pinned version only (all its wheels if that version is not
    spelled the same in any file name); an unpinned name keeps all its wheels.
    """
    by_name: dict[str, list[tuple[str, pathlib.Path]]] = collections.defaultdict(list)
    for wheel in wheels:
        parts = wheel.name.split("-")
        if len(parts) >= 5:
            by_name[_canonical(parts[0])].append((parts[1], wheel))
    chosen = []
    for name, candidates in by_name.items():
        if resolved is not None and name not in resolved:
            continue
        pinned = [path for version, path in candidates if version == pins.get(name)]
        chosen += pinned or [path for _, path in candidates]
    return sorted(chosen)


def needed_wheels(directory: pathlib.Path, requirements: pathlib.Path, log: list[str]) -> list[pathlib.Path]:
    """The wheels in ``directory`` that this requirements file resolved to."""
    resolved = None
    for line in log:
        if line.startswith("Successfully downloaded "):
            resolved = {_canonical(name) for name in line.split()[2:]}
    pins = parse_pins(requirements.read_text())
    wheels = select_wheels(directory.glob("*.whl"), pins, resolved)
    have = {_canonical(wheel.name.split("-")[0]) for wheel in wheels}
    missing = sorted(n for n in pins if n not in have and (resolved is None or n in resolved))
    if missing:
        raise ImageBuildFailed(f"the wheelhouse {directory} lacks: {', '.join(missing)}")
    return wheels
