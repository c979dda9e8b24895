"""The lazy stand-ins (kernel_image/enclave_lazy.py), in a child
interpreter: a stand-in runs none of its module's code until a name it lacks is asked
for; then it becomes the real module (the same object); an eager name answers without
loading (one taken from a submodule too); submodules of a stand-in package import without
loading the package; once uninstalled, modules import the ordinary way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parents[2] / "kernel_image"

PROBE = """
import json, sys, enclave_lazy
finder = enclave_lazy.install({
    "heavy": {"double": enclave_lazy.forward("double")},
    "pkg": {"SUB": enclave_lazy.attribute_of("pkg.sub", "VALUE")},
    "later": {},
})
import heavy, pkg.sub
from heavy import double  # an eager name: still not loaded
from pkg import SUB  # an eager name taken from a submodule: the package still not loaded
seen = {"after_import": "heavy_ran" in sys.modules, "pkg_ran": "pkg_ran" in sys.modules,
        "sub_value": pkg.sub.VALUE, "is_package": hasattr(heavy, "__path__"), "eager_sub": SUB}
enclave_lazy.uninstall(finder)
import later  # after uninstall: the ordinary way
seen["later_ran"] = later.RAN
seen["double"] = double(21)  # loads heavy, calls the real function
seen["after_call"] = "heavy_ran" in sys.modules
seen["same_object"] = sys.modules["heavy"] is heavy
seen["other_name"] = heavy.OTHER
seen["file"] = heavy.__file__
from pkg import VALUE  # a name the package lacks: loads it
seen["pkg_value"], seen["pkg_ran_after"] = VALUE, "pkg_ran" in sys.modules
try:
    heavy.missing
except AttributeError:
    seen["missing"] = "AttributeError"
print(json.dumps(seen))
"""


def test_stand_ins_load_on_first_use_and_become_the_real_module(tmp_path: Path) -> None:
    (tmp_path / "heavy.py").write_text(
        "import sys\nsys.modules['heavy_ran'] = sys\nOTHER = 'other'\ndef double(x):\n    return 2 * x\n"
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("import sys\nsys.modules['pkg_ran'] = sys\nVALUE = 'pkg'\n")
    (tmp_path / "pkg" / "sub.py").write_text("VALUE = 'sub'\n")
    (tmp_path / "later.py").write_text("RAN = True\n")
    env = {**os.environ, "PYTHONPATH": f"{IMAGE_DIR}{os.pathsep}{tmp_path}", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    seen = json.loads(out.stdout)

    assert seen == {
        "after_import": False,
        "pkg_ran": False,
        "sub_value": "sub",
        "is_package": False,
        "eager_sub": "sub",
        "later_ran": True,
        "double": 42,
        "after_call": True,
        "same_object": True,
        "other_name": "other",
        "file": str(tmp_path / "heavy.py"),
        "pkg_value": "pkg",
        "pkg_ran_after": True,
        "missing": "AttributeError",
    }


SUBMODULE_PROBE = """
import importlib, json, sys, enclave_lazy
finder = enclave_lazy.install({"jc": {}, "again": {}, "flaky": {}})
import jc, again, flaky
enclave_lazy.uninstall(finder)  # stand-ins, as a kernel's cell finds jupyter_client after the boot
seen = {}
# A submodule imported first that takes a sibling from its package (jupyter_client.manager:
# `from . import kernelspec`): the package is not loaded in the middle of it (a circular import).
from jc.manager import Manager
seen["manager"] = Manager.SPEC
seen["package_ran"] = "jc_ran" in sys.modules
seen["package_name"] = jc.Manager is Manager  # a name the package lacks: loads it
seen["sub_attribute"] = jc.spec.NAME
# importlib.reload of a stand-in runs the real package, which is then whole.
seen["reloaded"] = importlib.reload(again) is again and again.Manager.SPEC
seen["reload_missing"] = hasattr(again, "missing")
seen["reload_ran"] = sys.modules["again_ran"]
# A load that fails is tried again at the next use, as a failed import is.
try:
    flaky.VALUE
except RuntimeError as exc:
    seen["first"] = str(exc)
seen["second"] = flaky.VALUE
print(json.dumps(seen))
"""


def test_a_stand_in_package_serves_its_submodules_and_can_be_reloaded(tmp_path: Path) -> None:
    for name in ("jc", "again"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"import sys\nsys.modules['{name}_ran'] = sys.modules.get('{name}_ran', 0) + 1\n"
            "from .manager import Manager\n"
        )
        (tmp_path / name / "manager.py").write_text(
            "from . import spec\nclass Manager:\n    SPEC = spec.NAME\n"
        )
        (tmp_path / name / "spec.py").write_text("NAME = 'spec'\n")
    (tmp_path / "flaky").mkdir()
    (tmp_path / "flaky" / "__init__.py").write_text(
        "import sys\nif 'flaky_ran' not in sys.modules:\n    sys.modules['flaky_ran'] = sys\n"
        "    raise RuntimeError('first load')\nVALUE = 'loaded'\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{IMAGE_DIR}{os.pathsep}{tmp_path}", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SUBMODULE_PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]

    assert json.loads(out.stdout) == {
        "manager": "spec",
        "package_ran": False,
        "package_name": True,
        "sub_attribute": "spec",
        "reloaded": "spec",
        "reload_missing": False,
        "reload_ran": 1,
        "first": "first load",
        "second": "loaded",
    }
