"""Imports only point down (docs/architecture.md): nothing below the Sandbox façade imports
it, not even lazily inside a function or for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

import enclave_tools

PACKAGE = Path(enclave_tools.__file__).parent
ABOVE_SANDBOX = {"__init__", "fakes", "sessions", "tooling", "cli", "testing", "mcp"}
"""The rooms that sit on top of the façade (module names, or the first part of a package's)."""


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Every module ``tree`` imports, anywhere in it, as a dotted name (``from x import y``
    counts as both ``x`` and ``x.y``: ``y`` may be a module)."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_nothing_below_the_sandbox_imports_it() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[0] in ABOVE_SANDBOX or relative.parts == ("sandbox",):
            continue
        module = ".".join(("enclave_tools", *relative.parts))
        if "enclave_tools.sandbox" in imported_modules(ast.parse(path.read_text()), module):
            offenders.append(module)
    assert offenders == []


def test_the_check_sees_a_lazy_import() -> None:
    lazy = "def f():\n    from enclave_tools import sandbox\n"
    assert "enclave_tools.sandbox" in imported_modules(ast.parse(lazy), "enclave_tools.attach")
    relative = "from .sandbox import Sandbox\n"
    assert "enclave_tools.sandbox" in imported_modules(ast.parse(relative), "enclave_tools.attach")
