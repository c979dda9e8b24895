"""The fakes for users' unit tests import without pytest, and answer as a sandbox would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enclave_tools.errors import InvalidInput, SandboxDied
from enclave_tools.fakes import FakeSandbox, printed


def test_the_fakes_import_without_pytest():
    probe = (
        "import sys; sys.modules['pytest'] = None\n"
        "from enclave_tools.fakes import FakeSandbox, printed\n"
        "print(FakeSandbox(printed('hi')).run('1').stdout)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi\n"


def test_the_fake_checks_arguments_records_calls_and_raises_a_prepared_error():
    fake = FakeSandbox(printed("ok"))
    with pytest.raises(InvalidInput):
        fake.run("x = 1\0")
    assert fake.run("x = 1", timeout=5).stdout == "ok"
    assert fake.calls == [("run", "x = 1", 5)]
    failing = FakeSandbox(SandboxDied("gone"))
    with pytest.raises(SandboxDied):
        failing.run("1")
