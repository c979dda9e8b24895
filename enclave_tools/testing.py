"""A pytest plugin for suites that run real sandboxes (this project's, and yours).

Enable it with ``pytest_plugins = ["enclave_tools.testing"]`` in a ``conftest.py``. It gives:

* ``sandbox_config``: the settings of every test sandbox (image from ``$ENCLAVE_TEST_IMAGE``,
  else the project's own, built once if missing) with a label unique to this run;
* ``make_sandbox``: a factory of sandboxes, each closed when its test ends (extra
  positional arguments are ignored, so it can serve as a ``sandbox_factory``);
* ``sandbox``: one sandbox, started on first use;
* ``sessions``: :class:`SandboxSessions` of test sandboxes (warm pool size 0, or ``n`` with
  ``@pytest.mark.parametrize("sessions", [n], indirect=True)``);
* ``docker_engine``: the Docker client.

The fakes (:class:`~enclave_tools.fakes.FakeSandbox` and the Executions it answers with)
live in :mod:`enclave_tools.fakes`, importable without pytest; they are re-exported here.
Install pytest with the ``testing`` extra: ``pip install "enclave-tools[testing]"``.

Without a Docker daemon those fixtures skip their tests, or fail them where
``ENCLAVE_REQUIRE_DOCKER=1`` (as in CI). At the end of the run, any container carrying
this run's label fails the run (and is removed): a leak check that never touches other
processes' sandboxes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enclave_tools.config import SandboxConfig
from enclave_tools.fakes import PNG, FakeSandbox, failed, plotted, printed
from enclave_tools.sandbox import Sandbox
from enclave_tools.sessions import SandboxSessions

__all__ = ["PNG", "RUN_ID", "RUN_LABEL", "FakeSandbox", "failed", "plotted", "printed"]

RUN_LABEL = "io.enclave-tools.test-run"
"""The label every test sandbox of this plugin carries; its value is :data:`RUN_ID`."""
RUN_ID = uuid.uuid4().hex[:12]
"""This test run's id (the leak check removes only this run's containers)."""
REQUIRE_DOCKER = os.environ.get("ENCLAVE_REQUIRE_DOCKER") == "1"


def _engine() -> tuple[Any, str | None]:
    try:
        from enclave_tools._docker import docker_client

        return docker_client(), None
    except Exception as exc:  # noqa: BLE001 - reported by the fixture
        return None, str(exc)


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """The Docker client; fails (CI) or skips (elsewhere) when there is no daemon."""
    client, reason = _engine()
    if client is None:
        if REQUIRE_DOCKER:
            pytest.fail(f"ENCLAVE_REQUIRE_DOCKER=1 but Docker is unreachable: {reason}", pytrace=False)
        pytest.skip(f"no Docker daemon: {reason}")
    return client


@pytest.fixture(scope="session")
def kernel_image(docker_engine: Any) -> str:
    """The test image's id (built once if missing, with progress on stderr)."""
    from enclave_tools.image import ensure_image

    return ensure_image(docker_engine, os.environ.get("ENCLAVE_TEST_IMAGE") or None)


@pytest.fixture(scope="session")
def sandbox_config(kernel_image: str) -> SandboxConfig:
    """Settings of every test sandbox: the test image, and this run's label."""
    return SandboxConfig(image=kernel_image, labels={RUN_LABEL: RUN_ID})


@pytest.fixture
def make_sandbox(sandbox_config: SandboxConfig) -> Iterator[Callable[..., Sandbox]]:
    """A factory of sandboxes (keyword overrides are config fields); each is closed when
    the test ends."""
    made: list[Sandbox] = []

    def make(*_ignored: object, **overrides: Any) -> Sandbox:
        made.append(Sandbox(sandbox_config, **overrides))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.close()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """One sandbox with the test settings, started on its first run."""
    return make_sandbox()


@pytest.fixture
def sessions(request: pytest.FixtureRequest, sandbox_config: SandboxConfig) -> Iterator[SandboxSessions]:
    """Started SandboxSessions of test sandboxes, closed when the test ends."""
    warm = getattr(request, "param", 0)
    with SandboxSessions(sandbox_config, warm=warm, factory=lambda: Sandbox(sandbox_config)) as made:
        yield made


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a sandbox container of this run outlived the tests."""
    client, _ = _engine()
    if client is None:
        return
    leaked = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
    if leaked:
        names = ", ".join(c.name for c in leaked)
        print(f"\nLEAK: {len(leaked)} sandbox container(s) outlived the tests: {names}")
        for container in leaked:
            container.remove(force=True)
        session.exitstatus = 1
