"""Shared fixtures: the real Docker engine, the real kernel image, and a leak check.

Tests marked ``docker`` need a daemon. Where ``ENCLAVE_REQUIRE_DOCKER=1`` (as in CI) a
missing daemon fails the run instead of skipping those tests.
"""

from __future__ import annotations

import os

import pytest

from enclave_tools.backends.docker import LABEL

REQUIRE_DOCKER = os.environ.get("ENCLAVE_REQUIRE_DOCKER") == "1"


def _docker_or_reason():
    try:
        from enclave_tools._docker import docker_client

        return docker_client(), None
    except Exception as exc:  # noqa: BLE001 - reported below
        return None, str(exc)


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker client; fails (CI) or skips (elsewhere) when there is no daemon."""
    client, reason = _docker_or_reason()
    if client is None:
        if REQUIRE_DOCKER:
            pytest.fail(f"ENCLAVE_REQUIRE_DOCKER=1 but Docker is unreachable: {reason}", pytrace=False)
        pytest.skip(f"no Docker daemon: {reason}")
    return client


@pytest.fixture(scope="session")
def kernel_image(docker_engine):
    """The kernel image's id (built once if missing, with progress on stderr)."""
    from enclave_tools.image import ensure_image

    return ensure_image(docker_engine, os.environ.get("ENCLAVE_TEST_IMAGE") or None)


@pytest.fixture
def make_sandbox(kernel_image):
    """A factory of sandboxes on the test image; each is closed when the test ends."""
    from enclave_tools import Sandbox

    made = []

    def make(**overrides):
        overrides.setdefault("image", kernel_image)
        sandbox = Sandbox(**overrides)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()


@pytest.fixture
def sandbox(make_sandbox):
    """One started sandbox with default settings."""
    return make_sandbox().start()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any container made by enclave-tools outlived the tests."""
    client, _ = _docker_or_reason()
    if client is None:
        return
    leaked = client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
    if leaked:
        names = ", ".join(c.name for c in leaked)
        print(f"\nLEAK: {len(leaked)} sandbox container(s) outlived the tests: {names}")
        for container in leaked:
            container.remove(force=True)
        session.exitstatus = 1
