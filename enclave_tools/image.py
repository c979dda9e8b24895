"""Build the kernel image: with a registry, or air-gapped.

The recipe is the Docker build context ``kernel_image/``. Its Dockerfile starts ``FROM`` a
base chosen by build argument and installs pinned packages from a wheelhouse, with no
network during the build. This module fills in what the build needs, all on the host:

1. a base image: ``python:3.12-slim`` if it is already in the local store, otherwise one
   bootstrapped from Debian packages (debootstrap or mmdebstrap) and ``docker import``-ed,
   so that no registry is needed;
2. a wheelhouse: ``pip download`` on the host for the base's Python version and the daemon's
   architecture, cached under ``~/.cache/enclave-tools/wheels/`` (or a pre-filled one named
   by ``ENCLAVE_WHEELHOUSE``, used with ``--no-index``);
3. the build itself, from a tar stream of the context plus the wheelhouse as ``wheels/``.

The default tag carries a hash of the recipe, so a changed recipe gets a new tag and an old
image is never silently reused. Nothing here ever pulls an image implicitly.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import docker.errors
from docker.utils import parse_repository_tag

from enclave_tools._docker import docker_client
from enclave_tools.errors import DockerUnavailable, ImageBuildFailed, ImageNotFound

__all__ = [
    "BOOTSTRAP_BASE",
    "IMAGE_REPOSITORY",
    "SLIM_BASE",
    "bootstrap_base",
    "build_image",
    "cache_dir",
    "context_dir",
    "debian_mirror",
    "default_image",
    "ensure_image",
    "list_images",
    "platform_tags",
    "recipe_hash",
]

Progress = Callable[[str], None]

IMAGE_REPOSITORY = "enclave-tools/kernel"
"""Repository of the kernel images; the tag is a hash of the recipe."""

SLIM_BASE = "python:3.12-slim"
"""The base used when it is already in the local image store."""

DEBIAN_SUITE = "bookworm"
BOOTSTRAP_BASE = f"enclave-tools/base:{DEBIAN_SUITE}"
"""The base bootstrapped from Debian packages where no registry is reachable."""

DEFAULT_MIRROR = "http://deb.debian.org/debian"
BOOTSTRAP_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
LABEL_RECIPE = "org.enclave-tools.recipe"
LABEL_BASE = "org.enclave-tools.base"

_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_TOP = {"wheels"}
_LOG_TAIL = 40

# One build at a time in this process; _build_lock() adds a file lock across processes.
_thread_lock = threading.Lock()


# --- the recipe ------------------------------------------------------------------------


def context_dir() -> pathlib.Path:
    """The Docker build context: the packaged copy if installed, else the repo's kernel_image/."""
    here = pathlib.Path(__file__).resolve().parent
    packaged = here / "_kernel_image"
    if (packaged / "Dockerfile").is_file():
        return packaged
    return here.parent / "kernel_image"


def _context_files(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
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
    for rel, path in _context_files(root or context_dir()):
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def default_image() -> str:
    """The kernel image's default name: ``enclave-tools/kernel:<12 hex of the recipe hash>``."""
    return f"{IMAGE_REPOSITORY}:{recipe_hash()[:12]}"


def cache_dir() -> pathlib.Path:
    """enclave-tools' cache directory (``$XDG_CACHE_HOME/enclave-tools``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "enclave-tools"


# --- progress and locking --------------------------------------------------------------


def _reporter(progress: Progress | None) -> Progress:
    if progress is not None:
        return progress
    return lambda line: print(f"enclave-tools: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _build_lock(report: Progress) -> Iterator[None]:
    """Hold the build lock: one thread in this process, one process per cache dir."""
    with _thread_lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: the thread lock must do
            yield
            return
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "build.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report("waiting for another enclave-tools process to finish building")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --- looking images up -----------------------------------------------------------------


def _client(client: Any) -> Any:
    if client is not None:
        return client

    return docker_client()


def _find_image(client: Any, name: str) -> Any | None:
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


def ensure_image(
    client: Any,
    name: str | None = None,
    *,
    build: bool = True,
    progress: Progress | None = None,
) -> str:
    """Return the id of the kernel image ``name`` (default: :func:`default_image`).

    The image is looked up locally, never pulled. The default image is built when it is
    missing and ``build`` is true; anything else missing raises ImageNotFound. Concurrent
    callers (threads, or processes sharing a cache dir) build it once.
    """
    client = _client(client)
    default = default_image()
    name = name or default
    image = _find_image(client, name)
    if image is not None:
        return image.id
    if name != default or not build:
        raise ImageNotFound(_not_found_message(name, is_default=name == default))
    report = _reporter(progress)
    with _build_lock(report):
        image = _find_image(client, name)  # another thread or process may have built it
        if image is not None:
            return image.id
        report(f"kernel image {name} is not built yet; building it (once, a few minutes)")
        return _build(client, name, base=None, bootstrap=False, report=report)


def _not_found_message(name: str, *, is_default: bool) -> str:
    if is_default:
        return (
            f"The kernel image {name} is not built. Run `enclave-tools image build` "
            "(it needs no registry: the base is bootstrapped from Debian packages when "
            "python:3.12-slim is not present), or let enclave-tools build it on first use."
        )
    return (
        f"The image {name} is not in the local Docker image store, and enclave-tools never "
        "pulls images implicitly. Build it, load it (`docker load -i FILE`), or pull it "
        "yourself (`docker pull NAME`)."
    )


# --- building --------------------------------------------------------------------------


def build_image(
    client: Any = None,
    *,
    tag: str | None = None,
    base: str | None = None,
    bootstrap: bool = False,
    progress: Progress | None = None,
    base_tag: str = BOOTSTRAP_BASE,
) -> str:
    """Build the kernel image and return its id.

    ``tag`` defaults to :func:`default_image`. The base: ``base`` if given (it must be local,
    or pullable); else ``python:3.12-slim`` if it is local; else (or with ``bootstrap``) the
    base bootstrapped from Debian packages, ``base_tag``, made first if missing.
    Raises ImageBuildFailed with the end of the log in ``.log``.
    """
    client = _client(client)
    report = _reporter(progress)
    with _build_lock(report):
        return _build(client, tag or default_image(), base, bootstrap, report, base_tag)


def _build(
    client: Any,
    tag: str,
    base: str | None,
    bootstrap: bool,
    report: Progress,
    base_tag: str = BOOTSTRAP_BASE,
) -> str:
    """Build ``tag``; the caller holds the build lock."""
    base = _choose_base(client, base, bootstrap, report, base_tag)
    python, glibc = _base_python(client, base)
    arch = _docker_arch(client)
    report(
        f"base runs Python {python} (glibc {'.'.join(map(str, glibc)) if glibc else '?'}) on {arch}"
    )
    wheels = _wheelhouse(python, arch, glibc, report)
    root = context_dir()
    labels = {LABEL_RECIPE: recipe_hash(root), LABEL_BASE: base}
    started = time.monotonic()
    with _context_tar(root, wheels) as context:
        image_id = _docker_build(client, context, tag, base, labels, report)
    report(f"built {tag} ({image_id[7:19]}) in {time.monotonic() - started:.0f} s")
    return image_id


def _choose_base(
    client: Any, base: str | None, bootstrap: bool, report: Progress, base_tag: str
) -> str:
    """Pick the base image, making or pulling it only as the caller asked."""
    if base is not None and not bootstrap:
        if _find_image(client, base) is not None:
            report(f"base: {base} (local)")
        else:
            _pull_base(client, base, report)
        return base
    if not bootstrap and _find_image(client, SLIM_BASE) is not None:
        report(f"base: {SLIM_BASE} (local)")
        return SLIM_BASE
    report("base: bootstrapped from Debian packages (no registry needed)")
    if _find_image(client, base_tag) is None:
        bootstrap_base(client, tag=base_tag, progress=report)
    else:
        report(f"base: reusing {base_tag}")
    return base_tag


def _pull_base(client: Any, base: str, report: Progress) -> None:
    """Pull a base the caller named explicitly; explain --bootstrap when there is no registry."""

    report(f"base: {base} is not local; pulling it (asked for explicitly)")
    repository, tag = parse_repository_tag(base)
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(event["error"])
            if event.get("status", "").startswith(("Status", "Digest", "Pulling from")):
                report(f"pull: {event['status']}")
    except Exception as exc:  # any failure means: no base
        raise ImageBuildFailed(
            f"Could not pull the base image {base} ({_first_line(exc)}). Where no registry "
            "is reachable, build with `enclave-tools image build --bootstrap`: the base is "
            "then made from Debian packages.",
            log=str(exc),
        ) from exc


def _docker_build(
    client: Any, context: IO[bytes], tag: str, base: str, labels: dict[str, str], report: Progress
) -> str:
    """Run the classic builder on a tar stream, offline; return the image id."""

    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
    steps = _StepTimer(report)
    report(f"building {tag} (network: none)")
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
                    f"Building {tag} failed: {_first_line(event['error'])}", log="\n".join(tail)
                )
            for line in str(event.get("stream", "")).splitlines():
                if line.strip():
                    tail.append(line)
                    if line.startswith(("Step ", "Successfully")):
                        steps.next(line)
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(
            f"Building {tag} failed: {_first_line(exc)}", log="\n".join(tail)
        ) from exc
    image = _find_image(client, tag)
    if image is None:
        raise ImageBuildFailed(f"The build of {tag} ended without an image.", log="\n".join(tail))
    return image.id


class _StepTimer:
    """Reports each build step, and how long the previous one took when that was long."""

    SLOW = 5.0

    def __init__(self, report: Progress) -> None:
        self.report = report
        self.step: str | None = None
        self.started = time.monotonic()

    def next(self, line: str) -> None:
        """A new step (or the final "Successfully ...") began."""
        now = time.monotonic()
        if self.step and now - self.started >= self.SLOW:
            self.report(f"  ({self.step} took {now - self.started:.0f} s)")
        self.step = line.split(" :", 1)[0] if line.startswith("Step ") else None
        self.started = now
        self.report(_shorten(line))


@contextlib.contextmanager
def _context_tar(root: pathlib.Path, wheels: list[pathlib.Path]) -> Iterator[IO[bytes]]:
    """A temporary tar of the context with ``wheels`` as wheels/, rewound for reading."""
    with tempfile.TemporaryFile() as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            for rel, path in _context_files(root):
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


# --- the base's Python and the daemon's architecture -----------------------------------

_PROBE = "import sys,platform;print('%d.%d.%d'%sys.version_info[:3]);print(*platform.libc_ver())"


def _base_python(client: Any, image: str) -> tuple[str, tuple[int, int] | None]:
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


def _run_once(client: Any, image: str, command: list[str]) -> str:
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
        raise ImageBuildFailed(f"Could not run the base image {image}: {_first_line(exc)}") from exc
    try:
        api.start(container)
        status = api.wait(container, timeout=120).get("StatusCode")
        out = api.logs(container, stdout=True, stderr=False).decode(errors="replace")
        if status != 0:
            err = api.logs(container, stdout=False, stderr=True).decode(errors="replace")
            raise ImageBuildFailed(f"`{' '.join(command[:2])} …` failed in {image}", log=out + err)
        return out
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_container(container, force=True)


_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def _normalize_arch(arch: str) -> str:
    arch = arch.lower()
    return _ARCH_ALIASES.get(arch, arch)


def _docker_arch(client: Any) -> str:
    """The daemon's CPU architecture, as wheel tags spell it (x86_64, aarch64)."""
    return _normalize_arch(str(client.info().get("Architecture") or platform.machine()))


def platform_tags(arch: str, glibc: tuple[int, int] | None = None) -> list[str]:
    """The wheel platform tags a glibc Linux of ``arch`` accepts, best first.

    pip does not expand ``--platform manylinux_2_X`` to older glibc versions, so every
    version down to manylinux2014 (glibc 2.17) is listed. ``glibc`` defaults to 2.28.
    """
    arch = _normalize_arch(arch)
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


# --- the wheelhouse --------------------------------------------------------------------


def _wheelhouse(
    python: str, arch: str, glibc: tuple[int, int] | None, report: Progress
) -> list[pathlib.Path]:
    """Fill (or check) the wheelhouse for this Python and arch; the wheels the build needs."""
    requirements = context_dir() / "requirements.txt"
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
    for offline in attempts:
        ok, log = _pip_download(directory, requirements, python, arch, glibc, offline, report)
        if ok:
            wheels = _needed_wheels(directory, requirements, log)
            report(
                f"wheels: {len(wheels)} ready in {directory} ({time.monotonic() - started:.0f} s)"
            )
            return wheels
        if offline and len(attempts) > 1:
            report("wheels: the cache is incomplete; downloading from the package index")
    hint = (
        "The pre-filled wheelhouse (ENCLAVE_WHEELHOUSE) lacks wheels for this Python/platform."
        if prefilled
        else "Is the package index reachable from this host (pip's proxy/CA settings)?"
    )
    raise ImageBuildFailed(
        f"pip could not gather the kernel's wheels. {hint}", log="\n".join(log[-_LOG_TAIL:])
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
    command += ["--progress-bar", "off", "--only-binary=:all:", "--implementation", "cp", "--no-deps"]
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
                report(f"pip: {_shorten(stripped)}")
        elif stripped.startswith("ERROR:"):
            report(f"pip: {_shorten(stripped)}")

    try:
        code = _stream(command, on_line)
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


def _parse_pins(text: str) -> dict[str, str | None]:
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


def _select_wheels(
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


def _needed_wheels(
    directory: pathlib.Path, requirements: pathlib.Path, log: list[str]
) -> list[pathlib.Path]:
    """The wheels in ``directory`` that this requirements file resolved to."""
    resolved = None
    for line in log:
        if line.startswith("Successfully downloaded "):
            resolved = {_canonical(name) for name in line.split()[2:]}
    pins = _parse_pins(requirements.read_text())
    wheels = _select_wheels(directory.glob("*.whl"), pins, resolved)
    have = {_canonical(wheel.name.split("-")[0]) for wheel in wheels}
    missing = sorted(n for n in pins if n not in have and (resolved is None or n in resolved))
    if missing:
        raise ImageBuildFailed(f"the wheelhouse {directory} lacks: {', '.join(missing)}")
    return wheels


# --- bootstrapping a base from Debian packages -----------------------------------------


def bootstrap_base(
    client: Any = None,
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
    client = _client(client)
    report = _reporter(progress)
    _check_same_arch(client)
    mirror = mirror or debian_mirror(suite)
    tool = _bootstrap_tool()
    report(f"bootstrap: {tool} {suite} from {mirror} (about a minute)")
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
        report(
            f"bootstrap: root filesystem ready in {time.monotonic() - started:.0f} s; importing as {tag}"
        )
        image_id = _import_rootfs(client, rootfs_tar, tag)
    finally:
        _remove_tree(workdir, report)
    report(f"bootstrap: {tag} ({image_id[7:19]}) made in {time.monotonic() - started:.0f} s")
    return image_id


def debian_mirror(
    suite: str = DEBIAN_SUITE, apt_dir: pathlib.Path = pathlib.Path("/etc/apt")
) -> str:
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
        if (
            "deb" in fields.get("types", "").split()
            and fields.get("enabled", "yes").lower() != "no"
        ):
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split()


def _bootstrap_tool() -> str:
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
        "Bootstrapping a base needs mmdebstrap or debootstrap: `sudo apt-get install "
        "mmdebstrap uidmap` (unprivileged) or `sudo apt-get install debootstrap` (as root). "
        "Alternatively load a python:3.12-slim image (`docker load -i FILE`)."
    )


def _check_same_arch(client: Any) -> None:
    host, daemon = _normalize_arch(platform.machine()), _docker_arch(client)
    if host != daemon:
        raise ImageBuildFailed(
            f"This host is {host} but the Docker daemon is {daemon}: bootstrap the base on "
            "a host of the daemon's architecture."
        )


def _debootstrap(
    suite: str, mirror: str, rootfs: pathlib.Path, out: pathlib.Path, report: Progress
) -> None:
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BOOTSTRAP_PACKAGES)}",
        suite,
        str(rootfs),
        mirror,
    ]
    _run_bootstrap(command, "debootstrap", report)
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    tail: list[str] = []
    if _stream(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(out), "."], tail.append):
        raise ImageBuildFailed(
            "could not tar the bootstrapped root filesystem", log="\n".join(tail)
        )


def _mmdebstrap(suite: str, mirror: str, out: pathlib.Path, report: Progress) -> None:
    command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BOOTSTRAP_PACKAGES)}"]
    if os.geteuid() != 0:
        command.append("--mode=unshare")
    # Without this hook mmdebstrap installs usrmerge, and with it perl (+50 MB).
    hooks = pathlib.Path(shutil.which("mmdebstrap") or "/usr/bin/mmdebstrap").resolve().parent
    merged_usr = hooks.parent / "share" / "mmdebstrap" / "hooks" / "maybe-merged-usr"
    if merged_usr.is_dir():
        command.append(f"--hook-dir={merged_usr}")
    _run_bootstrap([*command, suite, str(out), mirror], "mmdebstrap", report)


def _run_bootstrap(command: list[str], tool: str, report: Progress) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
    counter = _PackageCounter(tool, report)

    def on_line(line: str) -> None:
        tail.append(line)
        counter.feed(line)

    code = _stream(command, on_line)
    counter.finish()
    if code != 0:
        raise ImageBuildFailed(f"{tool} failed (exit {code}).", log="\n".join(tail))


class _PackageCounter:
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
            self.report(f"{self.tool}: {_shorten(line[3:])}")

    def _show(self, verb: str) -> None:
        self.shown[verb] = self.counts[verb]
        self.report(f"{self.tool}: {verb.lower()} packages… {self.counts[verb]}")

    def finish(self) -> None:
        """Report the counts not yet shown."""
        for verb in self.VERBS:
            if self.counts[verb] != self.shown[verb]:
                self._show(verb)


def _import_rootfs(client: Any, rootfs_tar: pathlib.Path, tag: str) -> str:
    """``docker import`` a root filesystem tar as ``tag``; return the image id."""

    repository, _, version = tag.rpartition(":")
    try:
        # A file object, not a path: a str src would be taken for a URL.
        with open(rootfs_tar, "rb") as data:
            result = client.api.import_image_from_data(
                data, repository=repository, tag=version, changes=list(BASE_CHANGES)
            )
    except docker.errors.DockerException as exc:
        raise ImageBuildFailed(f"docker import of the base failed: {_first_line(exc)}") from exc
    if '"error' in str(result):
        raise ImageBuildFailed("docker import of the base failed", log=str(result))
    image = _find_image(client, tag)
    if image is None:
        raise ImageBuildFailed(f"docker import did not produce {tag}", log=str(result))
    return image.id


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


# --- listing ---------------------------------------------------------------------------


def list_images(client: Any) -> list[dict[str, Any]]:
    """The local images tagged ``enclave-tools/*``: tag, short id, size (bytes), created."""
    rows = []
    for image in _client(client).images.list():
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


# --- small helpers ---------------------------------------------------------------------


def _stream(command: list[str], on_line: Callable[[str], None]) -> int:
    """Run ``command``, passing each line of its merged stdout/stderr to ``on_line``; exit code."""
    with subprocess.Popen(
        command,
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


def _shorten(line: str, width: int = 110) -> str:
    line = line.strip()
    return line if len(line) <= width else line[: width - 1] + "…"


def _first_line(exc: object) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return _shorten(text[0] if text else type(exc).__name__, 200)
