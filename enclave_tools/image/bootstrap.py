"""A base image made from Debian packages, for machines that reach no container registry.

mmdebstrap (where installed; unprivileged in unshare mode) or debootstrap (root) builds a
minimal bookworm with python3 and venv from the host's Debian mirror; the root filesystem
is then ``docker import``-ed as ``enclave-tools/base:bookworm``.
"""

from __future__ import annotations

import collections
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import docker.errors

from enclave_tools.errors import ImageBuildFailed
from enclave_tools.image._common import (
    LOG_TAIL,
    DockerClient,
    Progress,
    cache_dir,
    client_or_default,
    docker_arch,
    find_image,
    first_line,
    normalize_arch,
    reporter,
    shorten,
    stream,
)

__all__ = ["BOOTSTRAP_BASE", "DEBIAN_SUITE", "DEFAULT_MIRROR", "bootstrap_base", "debian_mirror"]

DEBIAN_SUITE = "bookworm"
BOOTSTRAP_BASE = f"enclave-tools/base:{DEBIAN_SUITE}"
"""The base bootstrapped from Debian packages where no registry is reachable."""

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
# dpkg fsyncs every file it unpacks; a throwaway root filesystem does not need that, and
# skipping it halves debootstrap's second stage. Removed before the image is made.
_UNSAFE_IO = pathlib.PurePosixPath("etc/dpkg/dpkg.cfg.d/enclave-tools-unsafe-io")
# Left out of the image: what apt downloaded and indexed, documentation, locales.
_DROPPED = (
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
)

_INSTALL_HINT = (
    "`sudo apt-get install mmdebstrap uidmap` (works unprivileged) or `sudo apt-get install "
    "debootstrap` (then build as root). `make image` installs one for you when it can."
)


def bootstrap_base(
    client: DockerClient | None = None,
    *,
    tag: str = BOOTSTRAP_BASE,
    suite: str = DEBIAN_SUITE,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Make a minimal Debian base with python3 and venv, without a registry; return its id.

    Uses mmdebstrap where installed (unshare mode when not root), else debootstrap (root
    only), from the host's Debian mirror; then ``docker import``-s the result as ``tag``.
    """
    client = client_or_default(client)
    report = reporter(progress)
    _check_same_arch(client)
    mirror = mirror or debian_mirror(suite)
    tool = bootstrap_tool()
    report(f"bootstrap: {tool} {suite} from {mirror}")
    started = time.monotonic()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bootstrap-", dir=cache))
    try:
        rootfs_tar = workdir / "rootfs.tar"
        if tool == "mmdebstrap":
            _mmdebstrap(suite, mirror, rootfs_tar, report)
        else:
            _debootstrap(suite, mirror, workdir / "rootfs", rootfs_tar, report)
        size = rootfs_tar.stat().st_size / 2**20
        report(
            f"bootstrap: root filesystem ({size:.0f} MB) ready in "
            f"{time.monotonic() - started:.0f} s; importing it as {tag}"
        )
        image_id = _import_rootfs(client, rootfs_tar, tag)
    finally:
        _remove_tree(workdir, report)
    report(f"bootstrap: {tag} ({image_id[7:19]}) made in {time.monotonic() - started:.0f} s")
    return image_id


def debian_mirror(suite: str = DEBIAN_SUITE, apt_dir: pathlib.Path = pathlib.Path("/etc/apt")) -> str:
    """The host's apt mirror that serves ``suite`` (sources.list or deb822 .sources), else deb.debian.org."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        parse = _deb822_mirrors if path.suffix == ".sources" else _one_line_mirrors
        for uri, suites in parse(text):
            if suite in suites and uri.startswith(("http://", "https://", "ftp://")):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _one_line_mirrors(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", raw)
        if match:
            yield match.group(1), [match.group(2)]


def _deb822_mirrors(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split()


def bootstrap_tool() -> str:
    """mmdebstrap (faster, works unprivileged) or debootstrap (root only); else ImageBuildFailed."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if shutil.which("mmdebstrap"):
        return "mmdebstrap"
    if shutil.which("debootstrap"):
        if is_root:
            return "debootstrap"
        raise ImageBuildFailed(
            "Bootstrapping a base needs root for debootstrap. Run `sudo enclave-tools image "
            "build --bootstrap` once, or install mmdebstrap (`sudo apt-get install "
            "mmdebstrap uidmap`), which works unprivileged."
        )
    raise ImageBuildFailed(
        "No container registry answered and python:3.12-slim is not local, so the base is "
        "made from Debian packages, which needs mmdebstrap or debootstrap: "
        f"{_INSTALL_HINT} Alternatively load a python:3.12-slim image (`docker load -i FILE`)."
    )


def _check_same_arch(client: DockerClient) -> None:
    host, daemon = normalize_arch(platform.machine()), docker_arch(client)
    if host != daemon:
        raise ImageBuildFailed(
            f"This host is {host} but the Docker daemon is {daemon}: bootstrap the base on "
            "a host of the daemon's architecture."
        )


def _debootstrap(suite: str, mirror: str, rootfs: pathlib.Path, out: pathlib.Path, report: Progress) -> None:
    """debootstrap in two stages, so that dpkg's second stage can skip its fsyncs."""
    first = [
        "debootstrap",
        "--foreign",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        suite,
        str(rootfs),
        mirror,
    ]
    _run_bootstrap(first, "debootstrap", report)
    unsafe_io = rootfs / _UNSAFE_IO
    unsafe_io.parent.mkdir(parents=True, exist_ok=True)
    unsafe_io.write_text("force-unsafe-io\n")
    second = ["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"]
    _run_bootstrap(second, "debootstrap", report, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    unsafe_io.unlink()
    _drop_unneeded(rootfs)
    tail: list[str] = []
    if stream(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(out), "."], tail.append):
        raise ImageBuildFailed("could not tar the bootstrapped root filesystem", log="\n".join(tail))


def _drop_unneeded(rootfs: pathlib.Path) -> None:
    for pattern in _DROPPED:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _mmdebstrap(suite: str, mirror: str, out: pathlib.Path, report: Progress) -> None:
    command = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ]
    if os.geteuid() != 0:
        command.append("--mode=unshare")
    # Without this hook mmdebstrap installs usrmerge, and with it perl (+50 MB).
    hooks = pathlib.Path(shutil.which("mmdebstrap") or "/usr/bin/mmdebstrap").resolve().parent
    merged_usr = hooks.parent / "share" / "mmdebstrap" / "hooks" / "maybe-merged-usr"
    if merged_usr.is_dir():
        command.append(f"--hook-dir={merged_usr}")
    _run_bootstrap([*command, suite, str(out), mirror], "mmdebstrap", report)


def _run_bootstrap(
    command: list[str], tool: str, report: Progress, env: dict[str, str] | None = None
) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    counter = PackageCounter(tool, report)

    def on_line(line: str) -> None:
        tail.append(line)
        counter.feed(line)

    code = stream(command, on_line, env=env)
    counter.finish()
    if code != 0:
        raise ImageBuildFailed(f"{tool} failed (exit {code}).", log="\n".join(tail))


class PackageCounter:
    """Condenses debootstrap's one-line-per-package output into a count every N packages."""

    VERBS = ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")
    EVERY = 25

    def __init__(self, tool: str, report: Progress) -> None:
        self.tool, self.report = tool, report
        self.counts: collections.Counter[str] = collections.Counter()
        self.shown: collections.Counter[str] = collections.Counter()

    def feed(self, line: str) -> None:
        """Take one output line: count a per-package line, pass on the others, shortened."""
        line = line.strip()
        # One package: "I: Retrieving libc6 2.36-9" or "I: Unpacking libc6...".
        words = line.split()
        verb = words[1] if len(words) > 1 and words[0] == "I:" else ""
        per_package = (len(words) == 4 and not words[3].endswith("...")) or (
            len(words) == 3 and words[2].endswith("...")
        )
        if verb in self.VERBS and per_package:
            self.counts[verb] += 1
            if self.counts[verb] % self.EVERY == 0:
                self._show(verb)
        elif line.startswith(("I: ", "W: ", "E: ")):
            self.finish()
            self.report(f"{self.tool}: {shorten(line[3:])}")

    def _show(self, verb: str) -> None:
        self.shown[verb] = self.counts[verb]
        self.report(f"{self.tool}: {verb.lower()} packages… {self.counts[verb]}")

    def finish(self) -> None:
        """Report the counts not yet shown."""
        for verb in self.VERBS:
            if self.counts[verb] != self.shown[verb]:
                self._show(verb)


def _import_rootfs(client: DockerClient, rootfs_tar: pathlib.Path, tag: str) -> str:
    """``docker import`` a root filesystem tar as ``tag``; return the image id."""
    repository, _, version = tag.rpartition(":")
    try:
        # A file object, not a path: a str src would be taken for a URL.
        with open(rootfs_tar, "rb") as data:
            result = client.api.import_image_from_data(
                data, repository=repository, tag=version, changes=list(BASE_CHANGES)
            )
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(f"docker import of the base failed: {first_line(exc)}") from exc
    if '"error' in str(result):
        raise ImageBuildFailed("docker import of the base failed", log=str(result))
    image = find_image(client, tag)
    if image is None:
        raise ImageBuildFailed(f"docker import did not produce {tag}", log=str(result))
    return str(image.id)


def _remove_tree(path: pathlib.Path, report: Progress) -> None:
    """Remove a work dir, unmounting first anything a failed bootstrap left mounted in it."""
    for mount in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    if _mounts_under(path):
        report(f"bootstrap: {path} still has mounts; left in place")
        return
    shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: pathlib.Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = pathlib.Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.split()[1].startswith(prefix)]
