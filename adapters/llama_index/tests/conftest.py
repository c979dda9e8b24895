"""Real sandboxes for the integration tests, from the core's pytest plugin: the image is
``$ENCLAVE_TEST_IMAGE`` (default: the project's own, built on first use); every sandbox is
closed when its test ends, and one that outlives the run fails it."""

from __future__ import annotations

import pytest

pytest_plugins = ["enclave_tools.testing"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration_tests" in str(item.path):
            item.add_marker(pytest.mark.docker)
