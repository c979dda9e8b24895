"""A process's start-up modules as one file of bytecode, so a start opens one file, not ~700.

On a storage driver such as fuse-overlayfs every file a process opens at start is a round
trip through a user-space daemon: importing the gateway from the image took about twice as
long as from a tmpfs copy. The image build runs a start once (the gateway's imports; a
kernel's boot, ``enclave_kernel_launcher``) and writes the bytecode of every pure-Python
module it loaded into one bundle file (``build``); at start, ``install`` reads that one
file and puts a finder first on ``sys.meta_path`` that serves those modules from memory.
Each module keeps its real ``__file__``, ``__path__`` and loader methods, so data files
next to it (templates, schemas) are read from disk as before; extension modules and
anything not in the bundle load the ordinary way.

The bundle is written in the same build step as the files it was made from, and the
image is read-only, so in the kernel image the sources cannot differ from it: a module is
served without touching its file. An image that adds packages on top (a derived image,
enclave_tools/image/derived.py) says so with ``CHANGED_MARKER``; there a module is served
only while its source file has the size and mtime (in whole seconds) it had when the bundle
was written: one ``stat``, the check a timestamp ``.pyc`` makes (copying between build
stages keeps whole seconds only), so a changed or removed source is never shadowed by
stale bytecode.

Installed into the image's site-packages (the gateway and every kernel import it). This
file runs inside the container only; the host never imports it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys

BUNDLE_NAME = "imports.bundle"
FORMAT = 2
CHANGED_MARKER = "/opt/enclave/site-packages-changed"
"""Present in an image whose packages were changed after its bundles were written: every
module served is checked against its source first."""


class BundleLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose bytecode comes from the bundle instead of a ``.pyc``."""

    def __init__(self, name: str, origin: str, code: bytes) -> None:
        super().__init__(name, origin)
        self._code = code

    def get_code(self, fullname: str):
        return marshal.loads(self._code)


class BundleFinder:
    """Finds the modules in the bundle whose sources are unchanged."""

    def __init__(
        self, modules: dict[str, tuple[str, tuple[str, ...] | None, int, int, bytes]], verify: bool = True
    ) -> None:
        self.modules = modules
        self.verify = verify
        self.served = 0

    def find_spec(self, name: str, path=None, target=None):
        entry = self.modules.pop(name, None)
        if entry is None:
            return None
        origin, search_locations, size, mtime, code = entry
        if self.verify and not _unchanged(origin, size, mtime):
            return None
        self.served += 1
        return importlib.util.spec_from_file_location(
            name,
            origin,
            loader=BundleLoader(name, origin, code),
            submodule_search_locations=list(search_locations) if search_locations is not None else None,
        )

    def invalidate_caches(self) -> None:
        pass


def _unchanged(origin: str, size: int, mtime: int) -> bool:
    try:
        info = os.stat(origin)
    except OSError:
        return False
    return info.st_size == size and int(info.st_mtime) == mtime


def install(path: str, verify: bool | None = None) -> BundleFinder | None:
    """Serve the modules in the bundle at ``path`` from now on; None if it is missing or
    of another format or Python (then every import goes the ordinary way). ``verify``:
    check each module's source before serving it (default: where ``CHANGED_MARKER`` is)."""
    try:
        with open(path, "rb") as handle:
            bundle = marshal.loads(handle.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if (
        not isinstance(bundle, dict)
        or bundle.get("format") != FORMAT
        or bundle.get("magic") != importlib.util.MAGIC_NUMBER
    ):
        return None
    modules = bundle.get("modules")
    if not isinstance(modules, dict):
        return None
    if verify is None:
        verify = os.path.exists(CHANGED_MARKER)
    finder = BundleFinder(modules, verify)
    sys.meta_path.insert(0, finder)
    return finder


def uninstall(finder: BundleFinder | None) -> None:
    """Stop serving from ``finder`` (what ``install`` returned): from now on every import
    goes the ordinary way, and the bytecode it still held is freed."""
    if finder is None:
        return
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass
    finder.modules.clear()


def build(path: str, target: str) -> int:
    """Run ``target`` (``module``: import it; ``module:function``: import it and call the
    function), then write every pure-Python module loaded meanwhile (its compiled code,
    source size and mtime) to ``path``; return how many."""
    import_name, _, function = target.partition(":")
    module = importlib.import_module(import_name)
    if function:
        getattr(module, function)()
    modules = {}
    for name, module in sorted(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        loader = getattr(spec, "loader", None)
        if (
            spec is None
            or not spec.has_location
            or not isinstance(loader, importlib.machinery.SourceFileLoader)
        ):
            continue
        if name != spec.name or not spec.origin or not spec.origin.endswith(".py"):  # an alias
            continue
        code = loader.get_code(name)
        if code is None:
            continue
        info = os.stat(spec.origin)
        locations = (
            tuple(spec.submodule_search_locations) if spec.submodule_search_locations is not None else None
        )
        modules[name] = (spec.origin, locations, info.st_size, int(info.st_mtime), marshal.dumps(code))
    data = marshal.dumps({"format": FORMAT, "magic": importlib.util.MAGIC_NUMBER, "modules": modules})
    with open(path, "wb") as handle:
        handle.write(data)
    return len(modules)


if __name__ == "__main__":
    # python -m enclave_bundle build PATH MODULE[:FUNCTION]  (the image build)
    if len(sys.argv) != 4 or sys.argv[1] != "build":
        sys.exit("usage: python -m enclave_bundle build PATH MODULE[:FUNCTION]")
    count = build(sys.argv[2], sys.argv[3])
    # To the original stderr (a booted kernel has replaced sys.stdout and sys.stderr), and
    # out at once: a booted kernel's threads would keep the interpreter from exiting.
    sys.__stderr__.write(
        f"enclave_bundle: {count} modules in {sys.argv[2]} ({os.path.getsize(sys.argv[2]) / 2**20:.1f} MiB)\n"
    )
    sys.__stderr__.flush()
    os._exit(0)
