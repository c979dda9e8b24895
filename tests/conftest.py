"""The core's tests run real sandboxes through the project's pytest plugin (fixtures
``docker_engine``, ``kernel_image``, ``sandbox_config``, ``make_sandbox``, ``sandbox``,
and a leak check). Tests under ``integration/`` are marked ``docker``.

Under gVisor: ``ENCLAVE_RUNTIME=runsc pytest -m gvisor tests`` (``make test-gvisor``) runs
the tests marked ``gvisor`` with every sandbox they start on that OCI runtime. The runtime
reaches the sandboxes through ``sandbox_config`` (which every fixture and test builds its
sandboxes from), and a check fails any test whose sandbox's container ran on another
runtime. ``@pytest.mark.not_gvisor("why")`` skips a test only under a gVisor runtime.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from enclave_tools.backends.docker import DockerBackend, limits_fixed_at_create
from enclave_tools.config import SandboxConfig

pytest_plugins = ["enclave_tools.testing"]

RUNTIME = os.environ.get("ENCLAVE_RUNTIME") or None
"""The OCI runtime of every test sandbox ("runsc" for gVisor); None: Docker's default."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.docker)
        mark = item.get_closest_marker("not_gvisor")
        if mark and limits_fixed_at_create(RUNTIME):
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"not run under gVisor ({RUNTIME}): {reason}"))


@pytest.fixture(scope="session")
def sandbox_config(sandbox_config: SandboxConfig, docker_engine: Any) -> SandboxConfig:
    """The plugin's test settings, on ``$ENCLAVE_RUNTIME`` when it is set (which must be
    registered with Docker: see deploy/gvisor/register-runsc.sh)."""
    if RUNTIME is None:
        return sandbox_config
    registered = docker_engine.info().get("Runtimes") or {}
    if RUNTIME not in registered:
        pytest.fail(
            f"ENCLAVE_RUNTIME={RUNTIME} but Docker has no such runtime (it has: "
            f"{', '.join(sorted(registered))}); register it with deploy/gvisor/register-runsc.sh",
            pytrace=False,
        )
    return sandbox_config.model_copy(update={"runtime": RUNTIME})


@pytest.fixture(autouse=True)
def _sandboxes_run_on_the_chosen_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With ``$ENCLAVE_RUNTIME`` set, fail a test that starts a container on another
    runtime (a sandbox built without ``sandbox_config`` would silently test runc)."""
    if RUNTIME is None:
        yield
        return
    wrong: list[str] = []
    start = DockerBackend.start

    def checked_start(self: DockerBackend, config: SandboxConfig, *args: Any, **kwargs: Any) -> Any:
        handle = start(self, config, *args, **kwargs)
        runtime = self.client.api.inspect_container(handle.container_id)["HostConfig"].get("Runtime")
        if runtime != RUNTIME:
            wrong.append(f"{handle.name} ran on {runtime!r}")
        return handle

    monkeypatch.setattr(DockerBackend, "start", checked_start)
    yield
    assert not wrong, f"sandboxes not on ENCLAVE_RUNTIME={RUNTIME}: {', '.join(wrong)}"


@pytest.fixture
def sandbox(make_sandbox):
    """One sandbox, already started (the core's tests inspect its container)."""
    return make_sandbox().start()
