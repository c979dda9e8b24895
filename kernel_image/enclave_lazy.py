"""Lazy stand-ins for modules a process imports at start but seldom or never uses: the
module is loaded for real the first time anything asks it for a name it does not have.

Kernel Gateway imports ``jupyter_server.serverapp`` for one small function
(``random_ports``), and that module imports all of Jupyter Server: the contents managers,
nbformat and with it jsonschema (notebook validation), the gateway client, extensions. A
kernel's boot imports the ``jupyter_client`` package for two functions of its ``connect``
module, and the package's ``__init__`` imports every client and kernel manager.
``install`` puts a finder first on ``sys.meta_path`` that answers the first import of each
named module with a stand-in: the real module's spec (file, package path), nothing
executed, and optionally a few names served without loading it (``forward``: a function
that loads the module and calls the real one; ``attribute_of``: a name taken from a
submodule). The first other name asked for (an attribute, ``from module import name``)
runs the real module's code in that same module object, so every holder of the stand-in
then holds the real module: a path that needs it is slower once, never wrong. A submodule
of a stand-in package imported first (``from . import sibling`` in it) gets the sibling,
not the package loaded in its middle; a load that raises is tried again at the next use.

Used by the gateway (kernel_image/gateway/enclave_gateway.py) and by a kernel's boot
(enclave_kernel_launcher), which removes its finder before the kernel runs any code.
Installed into the image's site-packages. This file runs inside the container only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType

Eager = dict[str, Callable[[ModuleType], object]]
"""Names a stand-in serves without loading: each makes its value from the module."""


class StandInLoader(importlib.abc.Loader):
    """Makes a module that runs ``real``'s code the first time a missing name is asked for."""

    def __init__(self, real: importlib.machinery.ModuleSpec, eager: Eager) -> None:
        self.real = real
        self.eager = eager
        self.loaded = False
        self.lock = threading.RLock()

    def create_module(self, spec):
        return None  # a plain module, made by the import system

    def exec_module(self, module: ModuleType) -> None:
        stand_in = module.__spec__

        def __getattr__(name: str) -> object:
            if name == "__path__":  # the import system asking whether it is a package: no
                raise AttributeError(name)
            if module.__spec__ is not stand_in:  # run since by another loader (importlib.reload)
                self.loaded = True
                module.__dict__.pop("__getattr__", None)
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
            if stand_in.submodule_search_locations is not None and _submodule_running(module.__name__):
                # `from . import sibling` in a submodule imported before its package: the
                # package's code now would import that half-run submodule (a circular import).
                try:
                    return importlib.import_module(f"{module.__name__}.{name}")
                except ModuleNotFoundError as exc:
                    if exc.name != f"{module.__name__}.{name}":
                        raise
            self.load(module)
            return object.__getattribute__(module, name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        for name, make in self.eager.items():
            setattr(module, name, make(module))

    def load(self, module: ModuleType) -> None:
        """Run the real module's code in ``module`` (once; again at the next use if it
        raised, as a failed import is tried again)."""
        with self.lock:
            if self.loaded:
                return
            self.loaded = True
            kept = {
                name: module.__dict__.pop(name)
                for name in ("__getattr__", *self.eager)
                if name in module.__dict__
            }
            stand_in = module.__spec__, module.__loader__
            module.__spec__ = self.real
            module.__loader__ = self.real.loader
            try:
                self.real.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                module.__spec__, module.__loader__ = stand_in
                module.__dict__.update(kept)
                self.loaded = False
                raise


def _submodule_running(package: str) -> bool:
    """Whether a submodule of ``package`` is being imported (its code is running)."""
    prefix = package + "."
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith(prefix)
    )


class StandInFinder:
    """Answers the first import of each named module with a stand-in."""

    def __init__(self, names: dict[str, Eager]) -> None:
        self.names = dict(names)

    def find_spec(self, name: str, path=None, target=None):
        eager = self.names.pop(name, None)
        if eager is None:
            return None
        real = _real_spec(self, name)
        if real is None or real.loader is None:
            return None
        loader = StandInLoader(real, eager)
        spec = importlib.machinery.ModuleSpec(
            name, loader, origin=real.origin, is_package=real.submodule_search_locations is not None
        )
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec

    def invalidate_caches(self) -> None:
        pass


def _real_spec(finder: StandInFinder, name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec the other finders give ``name``."""
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        parent = sys.modules.get(name.rpartition(".")[0]) if "." in name else None
        spec = other.find_spec(name, getattr(parent, "__path__", None), None)
        if spec is not None:
            return spec
    return None


def forward(name: str) -> Callable[[ModuleType], object]:
    """An eager name for a function: calling it loads the module and calls the real one."""

    def make(module: ModuleType) -> object:
        def call(*args, **kwargs):
            loader = module.__spec__.loader
            if isinstance(loader, StandInLoader):
                loader.load(module)
            return getattr(module, name)(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    return make


def attribute_of(module_name: str, name: str) -> Callable[[ModuleType], object]:
    """An eager name whose value is ``name`` of another module (a submodule, say),
    imported when the stand-in is made."""

    def make(_module: ModuleType) -> object:
        return getattr(importlib.import_module(module_name), name)

    return make


def install(names: dict[str, Eager]) -> StandInFinder:
    """Serve a stand-in for each of ``names`` (module name: its eager names) from now on."""
    finder = StandInFinder(names)
    sys.meta_path.insert(0, finder)
    return finder


def uninstall(finder: StandInFinder) -> None:
    """Serve no more stand-ins (those already made stay, and load on first use)."""
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
