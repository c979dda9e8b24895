"""The core's tests run real sandboxes through the project's pytest plugin (fixtures
``docker_engine``, ``kernel_image``, ``sandbox_config``, ``make_sandbox``, ``sandbox``,
and a leak check). Tests under ``integration/`` are marked ``docker``."""

from __future__ import annotations

import pytest

pytest_plugins = ["enclave_tools.testing"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def sandbox(make_sandbox):
    """One sandbox, already started (the core's tests inspect its container)."""
    return make_sandbox().start()
