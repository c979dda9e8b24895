"""The gateway's modules as one file of bytecode, so a start opens one file, not ~700.

On a storage driver such as fuse-overlayfs every file the gateway opens at start is a
round trip through a user-space daemon: importing the gateway from the image took about
twice as long as from a tmpfs copy. The image build imports the gateway once and writes
the bytecode of every pure-Python module it loaded into ``imports.bundle`` (``build``);
at start, ``install`` reads that one file and puts a finder first on ``sys.meta_path``
that serves those modules from memory. Each module keeps its real ``__file__``,
``__path__`` and loader methods, so data files next to it (templates, schemas) are read
from disk as before; extension modules and anything not in the bundle load the ordinary way.

A module is served from the bundle only while its source file has the size and mtime (in
whole seconds) it had when the bundle was written: one ``stat``, the check a timestamp
``.pyc`` makes (copying between build stages keeps whole seconds only), so a changed or
removed source is never shadowed by stale bytecode.

This file runs inside the container only; the host never imports it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys

BUNDLE_NAME = "imports.bundle"
FORMAT = 2


class BundleLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose bytecode comes from the bundle instead of a ``.pyc``."""

    def __init__(self, name: str, origin: str, code: bytes) -> None:
        super().__init__(name, origin)
        self._code = code

    def get_code(self, fullname: str):
        return marshal.loads(self._code)


class BundleFinder:
    """Finds the modules in the bundle whose sources are unchanged."""

    def __init__(self, modules: dict[str, tuple[str, tuple[str, ...] | None, int, int, bytes]]) -> None:
        self.modules = modules
        self.served = 0

    def find_spec(self, name: str, path=None, target=None):
        entry = self.modules.pop(name, None)
        if entry is None:
            return None
        origin, search_locations, size, mtime, code = entry
        try:
            info = os.stat(origin)
        except OSError:
            return None
        if info.st_size != size or int(info.st_mtime) != mtime:
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


def install(path: str) -> BundleFinder | None:
    """Serve the modules in the bundle at ``path`` from now on; None if it is missing or
    of another format or Python (then every import goes the ordinary way)."""
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
    finder = BundleFinder(modules)
    sys.meta_path.insert(0, finder)
    return finder


def build(path: str, import_name: str) -> int:
    """Import ``import_name``, then write every pure-Python module loaded meanwhile (its
    compiled code, source size and mtime) to ``path``; return how many."""
    __import__(import_name)
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
    # python -m enclave_bundle build PATH MODULE  (the image build)
    if len(sys.argv) != 4 or sys.argv[1] != "build":
        sys.exit("usage: python -m enclave_bundle build PATH MODULE")
    count = build(sys.argv[2], sys.argv[3])
    print(
        f"enclave_bundle: {count} modules in {sys.argv[2]} ({os.path.getsize(sys.argv[2]) / 2**20:.1f} MiB)"
    )
