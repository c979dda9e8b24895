"""The bytecode bundle (kernel_image/enclave_bundle.py), in a child interpreter: a bundled
module is served from the bundle with its real file and package path; a module whose
source changed since the bundle was written loads from its source; once uninstalled,
every import goes the ordinary way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "kernel_image"

PROBE = """
import json, sys, enclave_bundle
finder = enclave_bundle.install(sys.argv[1], verify=sys.argv[2:] != ["trust"])
import pkg.mod, pkg.other
print(json.dumps({
    "served": finder.served,
    "mod_file": pkg.mod.__file__, "pkg_path": list(pkg.__path__),
    "mod_value": pkg.mod.VALUE, "other_value": pkg.other.VALUE,
    "data": (pkg.__spec__.loader.get_data(pkg.__path__[0] + "/data.txt")).decode(),
}))
"""


def _python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{BUNDLE_DIR}{os.pathsep}{tmp_path}", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True
    )


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 'bundled'\n")
    (pkg / "other.py").write_text("VALUE = 'other'\n")
    (pkg / "data.txt").write_text("beside the module")
    (tmp_path / "both.py").write_text("import pkg.mod, pkg.other\n")
    return pkg


def test_bundled_modules_come_from_the_bundle_with_their_real_paths(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "both")

    answer = json.loads(_python(tmp_path, "-c", PROBE, str(bundle)).stdout)

    assert answer["served"] == 3  # pkg, pkg.mod, pkg.other
    assert answer["mod_file"] == str(pkg / "mod.py")
    assert answer["pkg_path"] == [str(pkg)]
    assert answer["mod_value"] == "bundled"
    assert answer["data"] == "beside the module"


def test_a_changed_source_is_loaded_from_the_source(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "both")
    (pkg / "mod.py").write_text("VALUE = 'changed since the bundle'\n")

    answer = json.loads(_python(tmp_path, "-c", PROBE, str(bundle)).stdout)

    assert answer["mod_value"] == "changed since the bundle"
    assert answer["other_value"] == "other"
    assert answer["served"] == 2


def test_where_the_sources_cannot_change_they_are_not_checked(tmp_path: Path) -> None:
    # The kernel image: bundle and sources from one build step, on a read-only filesystem.
    pkg = _package(tmp_path)
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "both")
    (pkg / "mod.py").write_text("VALUE = 'changed since the bundle'\n")

    answer = json.loads(_python(tmp_path, "-c", PROBE, str(bundle), "trust").stdout)

    assert answer["served"] == 3
    assert answer["mod_value"] == "bundled"


def test_the_changed_marker_turns_the_checks_on(tmp_path: Path) -> None:
    code = (
        "import sys, enclave_bundle; enclave_bundle.CHANGED_MARKER = sys.argv[2]; "
        "print(enclave_bundle.install(sys.argv[1]).verify)"
    )
    _package(tmp_path)
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "both")
    marker = tmp_path / "site-packages-changed"

    unmarked = _python(tmp_path, "-c", code, str(bundle), str(marker)).stdout.strip()
    marker.write_text("")
    marked = _python(tmp_path, "-c", code, str(bundle), str(marker)).stdout.strip()

    assert (unmarked, marked) == ("False", "True")


def test_a_missing_or_foreign_bundle_installs_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.bundle").write_bytes(b"not marshal data")
    code = (
        "import sys, enclave_bundle; print(enclave_bundle.install(sys.argv[1]), "
        "enclave_bundle.install(sys.argv[2]))"
    )

    out = _python(tmp_path, "-c", code, str(tmp_path / "missing.bundle"), str(tmp_path / "bad.bundle")).stdout

    assert out.split() == ["None", "None"]


def test_a_function_target_is_run_and_what_it_imports_is_bundled(tmp_path: Path) -> None:
    _package(tmp_path)
    (tmp_path / "boot.py").write_text("def run():\n    import pkg.mod, pkg.other\n")
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "boot:run")

    answer = json.loads(_python(tmp_path, "-c", PROBE, str(bundle)).stdout)

    assert answer["served"] == 3


UNINSTALLED = """
import json, sys, enclave_bundle
finder = enclave_bundle.install(sys.argv[1])
import pkg.mod
enclave_bundle.uninstall(finder)
import pkg.other
print(json.dumps({
    "served": finder.served, "left": len(finder.modules),
    "finders": [type(f).__name__ for f in sys.meta_path],
    "other_loader": type(pkg.other.__spec__.loader).__name__,
}))
"""


def test_after_uninstall_imports_go_the_ordinary_way(tmp_path: Path) -> None:
    _package(tmp_path)
    bundle = tmp_path / "imports.bundle"
    _python(tmp_path, "-m", "enclave_bundle", "build", str(bundle), "both")

    answer = json.loads(_python(tmp_path, "-c", UNINSTALLED, str(bundle)).stdout)

    assert answer["served"] == 2  # pkg, pkg.mod: before uninstall
    assert answer["left"] == 0  # the rest of the bytecode is freed
    assert "BundleFinder" not in answer["finders"]
    assert answer["other_loader"] == "SourceFileLoader"
