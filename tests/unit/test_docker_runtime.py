"""The Docker backend's handling of runtimes that cannot update limits (gVisor's runsc)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from enclave_tools.backends.docker import DockerBackend, limits_fixed_at_create
from enclave_tools.config import SandboxConfig
from enclave_tools.transport import Endpoint


class RecordingApi:
    """The one call of the Docker API that ready() makes, recorded."""

    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update_container(self, container_id: str, **limits: int) -> None:
        self.updates.append({"id": container_id, **limits})


@pytest.mark.parametrize(
    "runtime, fixed",
    [(None, False), ("runc", False), ("runsc", True), ("runsc-kvm", True), ("gvisor", True)],
)
def test_which_runtimes_fix_limits_at_create(runtime, fixed):
    assert limits_fixed_at_create(runtime) is fixed


@pytest.mark.parametrize("runtime, updates", [(None, 1), ("runsc", 0)])
def test_ready_updates_the_cpu_quota_only_where_the_runtime_can(runtime, updates):
    api = RecordingApi()
    backend = DockerBackend(client=SimpleNamespace(api=api))
    # A TCP handle with no run directory: ready()'s directory lock has nothing to do.
    handle = SimpleNamespace(container_id="c1", run_dir=None, endpoint=Endpoint(token="t", port=1))
    backend.ready(handle, SandboxConfig(runtime=runtime, cpus=0.5))
    assert len(api.updates) == updates
    if updates:
        assert api.updates[0]["cpu_quota"] == 50_000
