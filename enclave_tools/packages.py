"""Packages an agent needs: requirement checks, the install policy, and host-side fetching.

The sandbox has no network by default, so nothing is ever installed from inside it. The
host fetches wheels with ``pip download`` (binary wheels only: nothing is built or run on
the host) for the image's Python and platform, constrained by the image's lock (its
``/opt/enclave/requirements.txt``) so that numpy, pandas and the rest never change. Two
users of this module:

- :mod:`enclave_tools.image.derived`: an image with more packages, built offline from
  the fetched wheels (``SandboxConfig(packages=[...])``, ``enclave-tools image build --with``);
- :class:`LiveInstaller`: ``%pip install X`` / ``!pip install X`` lines in a cell, handled
  by the host before the rest of the cell runs (see :func:`split_cell`), if the sandbox's
  ``install_policy`` allows X: the wheels are uploaded through the file API and installed
  offline into ``/workspace/.packages``, which the kernel appends to ``sys.path``.

The host intercepts the lines rather than the kernel asking the host for packages: the
host then never acts on a request that the (hostile) kernel makes up, only on what the
model wrote, and the image needs no change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from enclave_tools.errors import EnclaveError, FileTransferError, InvalidInput
from enclave_tools.execution import Execution, ExecutionError

__all__ = [
    "FETCH_TIMEOUT",
    "PACKAGES_DIR",
    "ImageFacts",
    "InstallPolicy",
    "LiveInstaller",
    "PackageError",
    "PipCell",
    "canonical",
    "check_requirement",
    "fetch_wheels",
    "policy_sentence",
    "read_requirements_file",
    "split_cell",
]

InstallPolicy = Literal["none", "any"] | list[str]
"""Which packages a running sandbox may install: none, any, or the listed names (and
whatever those depend on)."""

PACKAGES_DIR = "/workspace/.packages"
"""Where live installs go in the sandbox (on the workspace tmpfs, within its size)."""

FETCH_TIMEOUT = 600.0
"""Seconds one ``pip download`` on the host may take."""

# Names and version specifiers only: no URLs, paths, options or markers.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPEC = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(
    rf"({_NAME})\s*(\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*({_SPEC}(?:\s*,\s*{_SPEC})*)?"
)
# pip options a model writes out of habit; they change nothing here.
_HARMLESS_FLAGS = {
    "-q",
    "-qq",
    "-qqq",
    "--quiet",
    "-U",
    "--upgrade",
    "--user",
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-warn-script-location",
    "--break-system-packages",
    "--prefer-binary",
    "--no-input",
    "-v",
    "--verbose",
    "--root-user-action=ignore",
    "--progress-bar=off",
}
_PIP_LINE = re.compile(
    r"(?:[%!]\s*)?(?:pip3?|python3?\s+-m\s+pip|\{sys\.executable\}\s+-m\s+pip|uv\s+pip)"
    r"\s+(install|list|freeze)\b(.*)"
)
_INFRA = {"jupyter-kernel-gateway", "jupyter-server", "jupyter-client", "ipykernel"}


class PackageError(EnclaveError):
    """A package could not be resolved or fetched; the message names it and says why."""


def canonical(name: str) -> str:
    """A project name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_requirement(text: str) -> str:
    """``text`` if it is a requirement by name (``pkg``, ``pkg[extra]``, ``pkg>=1,<2``);
    else InvalidInput saying what is accepted."""
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped or not _REQUIREMENT.fullmatch(stripped):
        raise InvalidInput(
            f"{text!r} is not a package requirement. Give a name from the package index, "
            "optionally with extras and versions: 'scikit-learn', 'pandas[excel]', "
            "'polars>=1.0,<2' (no URLs, paths or pip options)."
        )
    return stripped


def requirement_name(requirement: str) -> str:
    """The canonical project name of a checked requirement."""
    match = _REQUIREMENT.match(requirement.strip())
    assert match is not None
    return canonical(match.group(1))


def read_requirements_file(path: str | pathlib.Path) -> list[str]:
    """The requirements in a requirements file: one per line, ``#`` comments allowed.
    Options (``-r``, ``-e``, ``--index-url`` ...) and URLs are refused: InvalidInput."""
    file = pathlib.Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read the requirements file {file}: {exc.strerror}") from exc
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            found.append(check_requirement(line))
        except InvalidInput as exc:
            raise InvalidInput(f"{file}, line {number}: {exc}") from None
    return found


def policy_allows(policy: InstallPolicy, name: str) -> bool:
    """Whether ``policy`` lets a running sandbox install the project ``name``."""
    if policy == "any":
        return True
    if policy == "none":
        return False
    return canonical(name) in {canonical(n) for n in policy}


def policy_sentence(policy: InstallPolicy) -> str:
    """The install policy, in words for a model."""
    if policy == "any":
        return (
            "You may install packages from the package index with `%pip install NAME` "
            "(the host fetches them; the sandbox itself stays offline)."
        )
    if policy == "none":
        return "Installing packages is not allowed here (`pip install` is refused, and there is no network)."
    names = ", ".join(sorted(policy)) or "(none)"
    return (
        f"You may install only these packages with `%pip install NAME`: {names} (the host "
        "fetches them; the sandbox itself stays offline)."
    )


# -- what an image holds -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What fetching wheels for an image needs: its Python, platform and lock."""

    python: str
    """X.Y.Z"""
    arch: str
    glibc: tuple[int, int] | None
    lock: str
    """The text of the image's /opt/enclave/requirements.txt."""

    def pins(self) -> dict[str, str]:
        """Canonical name to pinned version, for every ``name==version`` line of the lock."""
        pins = {}
        for raw in self.lock.splitlines():
            match = re.fullmatch(rf"\s*({_NAME})\s*==\s*([^\s;#]+)\s*(?:#.*)?", raw)
            if match:
                pins[canonical(match.group(1))] = match.group(2)
        return pins

    def highlights(self) -> list[str]:
        """The packages worth naming to a model: the lock's direct requirements (before its
        ``# Transitive`` line, less the kernel's own machinery) and any added later."""
        shown, section = [], "direct"
        for raw in self.lock.splitlines():
            if raw.startswith("#"):
                lowered = raw.lower()
                if lowered.startswith("# transitive"):
                    section = "transitive"
                elif lowered.startswith("# added"):
                    section = "added"
                continue
            match = re.fullmatch(rf"\s*({_NAME})\s*==\s*([^\s;#]+).*", raw)
            if match and section != "transitive" and canonical(match.group(1)) not in _INFRA:
                shown.append(f"{match.group(1)} {match.group(2)}")
        return shown


# -- fetching wheels on the host --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The wheels a set of requirements resolved to, less those the image already has."""

    wheels: list[pathlib.Path]
    kept: list[str]
    """Packages the requirements need that the image's lock already pins (left as they are)."""

    def pins(self) -> dict[str, str]:
        """Canonical name to version of each new wheel."""
        return {canonical(w.name.split("-")[0]): w.name.split("-")[1] for w in self.wheels}


def fetch_wheels(
    requirements: Sequence[str],
    facts: ImageFacts,
    report: Callable[[str], None],
    *,
    also_pinned: dict[str, str] | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> Fetched:
    """Download the wheels ``requirements`` need for ``facts``'s Python and platform,
    constrained by its lock (and ``also_pinned``); raise PackageError naming what failed."""
    from enclave_tools.image._common import cache_dir
    from enclave_tools.image.wheelhouse import platform_tags

    major, minor = facts.python.split(".")[:2]
    directory = cache_dir() / "packages" / f"cp{major}{minor}-{facts.arch}"
    directory.mkdir(parents=True, exist_ok=True)
    pins = {**facts.pins(), **(also_pinned or {})}
    names = ", ".join(requirements)
    report(f"packages: resolving {names} for Python {major}.{minor} on {facts.arch} (the image's lock kept)")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="enclave-lock-") as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        constraints.flush()
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            facts.python,
            "-d",
            str(directory),
            "-c",
            constraints.name,
        ]
        for tag in platform_tags(facts.arch, facts.glibc):
            command += ["--platform", tag]
        started = time.monotonic()
        code, lines = _run(command + ["--", *requirements], timeout)
    if code != 0:
        raise PackageError(_pip_failure(requirements, lines, facts))
    resolved = []
    for line in lines:
        match = re.match(r"\s*(?:Saved|File was already downloaded)\s+(\S+\.whl)\s*$", line)
        if match:
            resolved.append(directory / pathlib.Path(match.group(1)).name)
    wheels, kept = [], []
    for wheel in dict.fromkeys(resolved):
        name, version = canonical(wheel.name.split("-")[0]), wheel.name.split("-")[1]
        if pins.get(name) == version:
            kept.append(f"{name} {version}")
        else:
            wheels.append(wheel)
    size = sum(w.stat().st_size for w in wheels) / 1e6
    report(
        f"packages: {len(wheels)} new wheels ({size:.1f} MB), {len(kept)} already in the "
        f"image, in {time.monotonic() - started:.0f} s"
    )
    return Fetched(wheels=sorted(wheels), kept=sorted(kept))


def _run(command: list[str], timeout: float) -> tuple[int, list[str]]:
    """Run ``command`` with merged output, at most ``timeout`` seconds; (exit code, lines)."""
    try:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PackageError(
            f"fetching the packages took over {timeout:.0f} s on the host; is the package "
            "index slow or unreachable?"
        ) from None
    except OSError as exc:  # pragma: no cover - the interpreter vanished
        raise PackageError(f"could not run pip on the host: {exc}") from exc
    return done.returncode, done.stdout.splitlines()


def _pip_failure(requirements: Sequence[str], lines: list[str], facts: ImageFacts) -> str:
    """pip's failure, in words that name the package and say what to do."""
    python = ".".join(facts.python.split(".")[:2])
    text = "\n".join(lines)
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if missing:
        name = missing.group(1)
        versions = re.search(rf"requirement {re.escape(name)} \(from versions: ([^)]*)\)", text)
        pinned = facts.pins().get(requirement_name(name)) if _REQUIREMENT.fullmatch(name) else None
        if pinned:
            return (
                f"{name} conflicts with the image, which has {requirement_name(name)} "
                f"{pinned} (kept as it is)."
            )
        if versions is None or versions.group(1).strip() == "none":
            return (
                f"No package named {name} could be found on the package index with a wheel "
                f"for Python {python} on Linux {facts.arch}. Check the name (the index's "
                "name, e.g. scikit-learn for sklearn); packages that need compiling from "
                "source are not supported."
            )
        return (
            f"No version of {name} fits (for Python {python} on Linux {facts.arch}); "
            f"available: {_cut(versions.group(1), 300)}."
        )
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        cause = [
            line.strip() for line in lines if re.match(r"\s+(The user requested|\S+ \S+ depends on)", line)
        ]
        what = re.search(r"Cannot install (.+?) because", text)
        subject = what.group(1) if what else ", ".join(requirements)
        return (
            f"{subject} cannot be installed: it needs versions that conflict with the "
            "packages the image has (numpy, pandas and the rest are kept as they are). "
            f"{_cut('; '.join(cause), 600)}. Ask for a version that works with them."
        )
    if re.search(r"Could not fetch URL|ConnectionError|Max retries|NewConnectionError", text):
        return f"The host could not reach the package index to fetch {', '.join(requirements)}."
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    return f"Fetching {', '.join(requirements)} failed: {_cut(' '.join(errors[-3:]) or text[-500:], 600)}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- pip lines in a cell ----------------------------------------------------------------


@dataclasses.dataclass
class PipCell:
    """A cell split into its pip lines and the rest."""

    requirements: list[str]
    """What the ``pip install`` lines ask for, checked."""
    listing: bool
    """A ``pip list`` / ``pip freeze`` line was there."""
    rest: str
    """The cell without its pip lines."""
    problem: str | None = None
    """Why a pip line cannot be done (an option or a requirement not accepted)."""

    @property
    def has_pip(self) -> bool:
        """Whether the host has pip lines to handle."""
        return bool(self.requirements or self.listing or self.problem)


def split_cell(code: str) -> PipCell:
    """Take the ``pip install|list|freeze`` lines out of a cell.

    A pip line starts in column 0 as ``%pip``, ``!pip``, ``pip`` (a syntax error in
    Python anyway), ``!pip3``, ``!python -m pip``, ``!{sys.executable} -m pip`` or
    ``!uv pip``. Anywhere else (indented, in a string) a line is left to the kernel.
    """
    requirements: list[str] = []
    rest: list[str] = []
    listing, problem = False, None
    for line in code.split("\n"):
        match = _PIP_LINE.fullmatch(line.rstrip())
        if not match:
            rest.append(line)
            continue
        rest.append("")  # keep line numbers of tracebacks in the rest
        if match.group(1) != "install":
            listing = True
            continue
        try:
            words = shlex.split(match.group(2), comments=True)
        except ValueError as exc:
            problem = problem or f"cannot read `{line.strip()}`: {exc}"
            continue
        skip_next = False
        for word in words:
            if skip_next:
                skip_next = False
            elif word in _HARMLESS_FLAGS:
                pass
            elif word == "--progress-bar":
                skip_next = True
            elif word.startswith("-"):
                problem = problem or (
                    f"the pip option {word} is not supported here: write `%pip install NAME` "
                    "with names and versions only (the host fetches from its package index)"
                )
            else:
                try:
                    requirements.append(check_requirement(word))
                except InvalidInput as exc:
                    problem = problem or str(exc)
    if not "\n".join(rest).strip():
        rest = []
    return PipCell(requirements=requirements, listing=listing, rest="\n".join(rest), problem=problem)


# -- installing into a running sandbox ---------------------------------------------------


class InstallTarget(Protocol):
    """What :class:`LiveInstaller` needs of a running sandbox."""

    def image_facts(self) -> ImageFacts:
        """The facts of the image the sandbox runs."""

    def upload(self, local: pathlib.Path, remote: str) -> None:
        """Copy a host file into the sandbox."""

    def run(self, code: str) -> Execution:
        """Run code in the kernel (in the current turn)."""


_INSTALL_CODE = """\
def _enclave_install(target, wheels):
    import glob, importlib, os, shutil, subprocess, sys
    found = sorted(glob.glob("/usr/share/python-wheels/pip-*.whl")
                   + glob.glob("/usr/local/lib/python3*/ensurepip/_bundled/pip-*.whl")
                   + glob.glob("/usr/lib/python3*/ensurepip/_bundled/pip-*.whl"))
    try:
        if not found:
            raise RuntimeError("the image has no pip wheel to install with")
        done = subprocess.run(
            [sys.executable, found[-1] + "/pip", "install", "--no-index", "--no-deps",
             "--no-compile", "--upgrade", "--disable-pip-version-check", "--no-cache-dir",
             "-q", "--target", target, *wheels],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if done.returncode:
            lines = [l for l in done.stdout.splitlines() if l.strip() and "WARNING" not in l]
            raise RuntimeError("\\n".join(lines[-8:]) or "pip failed")
    finally:
        shutil.rmtree(os.path.dirname(wheels[0]), ignore_errors=True)
    if target not in sys.path:
        sys.path.append(target)
    importlib.invalidate_caches()
    print("ENCLAVE-INSTALLED")
try:
    _enclave_install({target!r}, {wheels!r})
finally:
    del _enclave_install
"""


class LiveInstaller:
    """Handles the pip lines of a cell for one sandbox, under its install policy."""

    def __init__(self, policy: InstallPolicy, directory: str = PACKAGES_DIR) -> None:
        self.policy = policy
        self.directory = directory
        self.installed: dict[str, str] = {}
        """Canonical name to version of what was installed while the sandbox ran."""
        self._done: list[str] = []

    def handle(self, cell: PipCell, target: InstallTarget, limit: int) -> Execution | None:
        """Do the cell's pip lines. An Execution that ends the cell (a refusal, a failure,
        or a cell of pip lines only), or None: the rest of the cell runs, and
        :meth:`note` prepends what was done."""
        started = time.monotonic()
        self._done = []
        if cell.problem:
            return _failure("PipLineNotSupported", f"{cell.problem}. {self.advice(target)}", limit)
        wanted = self._not_installed(cell.requirements, target)
        if wanted:
            refused = [r for r in wanted if not policy_allows(self.policy, requirement_name(r))]
            if refused:
                return _failure(
                    "PackageInstallRefused",
                    f"Not installed: {', '.join(refused)} (this sandbox's install policy does "
                    f"not allow it; it has no network either). {self.advice(target)}",
                    limit,
                )
            try:
                self._done.append(self._install(wanted, target))
            except (PackageError, FileTransferError) as exc:
                return _failure("PackageInstallFailed", f"{exc} {self.advice(target)}", limit)
        if cell.listing:
            self._done.append(self._listing(target))
        if cell.rest:
            return None
        text = "\n".join(self._done)
        return Execution(
            status="ok",
            stdout=text + "\n",
            duration=time.monotonic() - started,
            output_limit=limit,
            _transcript=[("stdout", text + "\n")],
        )

    def note(self, execution: Execution) -> Execution:
        """``execution`` (the rest of the cell) with what the pip lines did in front."""
        if self._done:
            text = "\n".join(self._done) + "\n"
            execution.stdout = text + execution.stdout
            execution._transcript.insert(0, ("stdout", text))
        return execution

    def advice(self, target: InstallTarget) -> str:
        """What is installed, what the policy allows, and how to ask for more."""
        try:
            have = target.image_facts().highlights()
        except EnclaveError:
            have = []
        have += [f"{n} {v}" for n, v in sorted(self.installed.items())]
        more = (
            "If you need another package, say which and why in your answer: the user can "
            "allow it (install_policy) or add it to the image (packages)."
        )
        if self.policy == "any":
            more = "Check the package's name on the package index and try again."
        return f"Installed: {', '.join(have) or 'see %pip list'}. {policy_sentence(self.policy)} {more}"

    def _not_installed(self, requirements: list[str], target: InstallTarget) -> list[str]:
        """The requirements not already met by name alone (``numpy`` when the image has
        numpy); says which were, as models often ask for what the image has."""
        if not requirements:
            return []
        try:
            have = {**target.image_facts().pins(), **self.installed}
        except EnclaveError:
            return requirements
        met = [r for r in requirements if re.fullmatch(_NAME, r) and canonical(r) in have]
        if met:
            self._done.append(
                "Already installed: " + ", ".join(f"{canonical(r)} {have[canonical(r)]}" for r in met) + "."
            )
        return [r for r in requirements if r not in met]

    def _install(self, requirements: list[str], target: InstallTarget) -> str:
        facts = target.image_facts()
        fetched = fetch_wheels(requirements, facts, lambda _line: None, also_pinned=self.installed)
        if not fetched.wheels:
            return f"Already installed: {', '.join(fetched.kept)}."
        wheels_digest = hashlib.sha256(json.dumps([str(w) for w in fetched.wheels]).encode()).hexdigest()
        folder = f"{self.directory}/.incoming-{wheels_digest[:8]}"
        remote = []
        for wheel in fetched.wheels:
            path = f"{folder}/{wheel.name}"
            try:
                target.upload(wheel, path)
            except FileTransferError as exc:
                raise FileTransferError(
                    f"Copying {wheel.name} into the sandbox failed ({exc}); the workspace may be full."
                ) from exc
            remote.append(path)
        result = target.run(_INSTALL_CODE.format(target=self.directory, wheels=remote))
        if result.status != "ok" or "ENCLAVE-INSTALLED" not in result.stdout:
            why = result.error.value if result.error else result.text
            raise PackageError(
                f"Installing {', '.join(requirements)} in the sandbox failed: {_cut(why, 800)}."
            )
        self.installed.update(fetched.pins())
        new = ", ".join(f"{n} {v}" for n, v in sorted(fetched.pins().items()))
        kept = (
            f" Already in the image and kept as they are: {', '.join(fetched.kept)}." if fetched.kept else ""
        )
        return f"Installed {new} (fetched by the host; the sandbox stays offline).{kept}"

    def _listing(self, target: InstallTarget) -> str:
        pins = {**target.image_facts().pins(), **self.installed}
        return "\n".join(f"{name}=={version}" for name, version in sorted(pins.items()))


def _failure(name: str, message: str, limit: int) -> Execution:
    return Execution(
        status="error",
        error=ExecutionError(
            name=name, value=message, traceback=f"{name}: {message}\n[The rest of the cell was not run.]"
        ),
        output_limit=limit,
    )
