"""Packages on real Docker: a derived image, and installs while the sandbox runs (egress off).

The host fetches wheels from its package index (it must be reachable); the sandboxes have
no network. tabulate is the small package these tests install.
"""

from __future__ import annotations

import pytest

from enclave_tools import InvalidInput, Sandbox
from enclave_tools.image.derived import image_facts
from enclave_tools.packages import split_cell

NUMPY = "import numpy; print(numpy.__version__)"


@pytest.fixture(scope="module")
def numpy_version(kernel_image):
    """numpy's version in the kernel image's lock."""
    return image_facts(None, kernel_image).pins()["numpy"]


def test_a_derived_image_has_the_package_and_keeps_the_lock(make_sandbox, numpy_version):
    lines: list[str] = []
    with make_sandbox(packages=["tabulate"], progress=lines.append) as sb:
        result = sb.run("import tabulate; print(tabulate.tabulate([[1, 2]]))")
        assert result.ok, result.text
        assert "1  2" in result.text
        assert sb.run(NUMPY).text == numpy_version
        lock = sb.read_file("/opt/enclave/requirements.txt").decode()
        assert "# Added for: tabulate" in lock and "\ntabulate==" in lock


def test_an_allowed_install_is_used_in_the_next_cell(make_sandbox, numpy_version):
    with make_sandbox(install_policy=["tabulate"]) as sb:
        assert not sb.run("import tabulate").ok  # not in the image
        installed = sb.run("%pip install -q tabulate")
        assert installed.ok, installed.text
        assert "Installed tabulate" in installed.text
        used = sb.run("from tabulate import tabulate; print(tabulate([['a', 1]]))")
        assert used.ok, used.text
        assert "a  1" in used.text
        # The rest of a cell runs after its pip lines, with the package importable.
        mixed = sb.run("!pip install tabulate\nimport tabulate\nprint('ok', tabulate.__name__)")
        assert mixed.ok, mixed.text
        assert "ok tabulate" in mixed.text
        assert sb.run(NUMPY).text == numpy_version


def test_a_refused_install_says_what_is_installed_and_how_to_ask(make_sandbox):
    with make_sandbox() as sb:  # install_policy="none"
        refused = sb.run("!pip install tabulate\nimport tabulate\nprint('ran')")
        assert refused.status == "error"
        assert refused.error.name == "PackageInstallRefused"
        assert "tabulate" in refused.text and "numpy" in refused.text
        assert "install_policy" in refused.text and "ran" not in refused.text
        assert not sb.run("import tabulate").ok
        # What the image has is no install at all, whatever the policy.
        have = sb.run("%pip install numpy pandas")
        assert have.ok and "Already installed: numpy" in have.text


def test_a_package_that_does_not_exist_is_named(make_sandbox):
    with make_sandbox(install_policy="any") as sb:
        missing = sb.run("%pip install enclave-no-such-package-zq7")
        assert missing.status == "error"
        assert missing.error.name == "PackageInstallFailed"
        assert "enclave-no-such-package-zq7" in missing.text
        assert sb.run("1 + 1").text == "2"


def test_the_lock_is_kept(make_sandbox, numpy_version):
    with make_sandbox(install_policy="any") as sb:
        other = sb.run("%pip install 'numpy<2'")
        assert other.status == "error"
        assert "numpy" in other.text and numpy_version in other.text
        assert sb.run(NUMPY).text == numpy_version


def test_options_and_urls_are_refused_in_words():
    cell = split_cell("!pip install --index-url https://evil.example/simple tabulate")
    assert cell.problem and "--index-url" in cell.problem
    assert split_cell("%pip install git+https://example.com/x.git").problem
    assert split_cell("x = 1\n    !pip install tabulate").requirements == []


def test_another_backend_refuses_packages():
    class Elsewhere:
        name = "kubernetes"

    with pytest.raises(InvalidInput, match="Docker backend"):
        Sandbox(backend=Elsewhere(), install_policy="any")  # type: ignore[arg-type]
