"""Attacks that need real Docker: records and containers the host must not take on trust."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from enclave_tools import Sandbox, registry
from enclave_tools.errors import SandboxGone


def test_connect_to_a_record_naming_a_foreign_container_and_dir_deletes_neither(
    kernel_image: str, docker_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A damaged or planted record: its container is a stopped container that is not a
    # sandbox, its run directory a directory of the user's that is not ours. Before, connect
    # judged the sandbox expired and force-removed that container and deleted that
    # directory (remove_container(record.container_id, record.run_dir), no checks).
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    precious = tmp_path / "precious"
    (precious / "gw").mkdir(parents=True)
    (precious / "work.txt").write_text("a user's work")
    foreign = docker_engine.containers.create(kernel_image, entrypoint=["true"], labels={"test": "foreign"})
    try:
        registry.save(
            registry.Record(
                id="a1b2c3d4e5f6",
                backend="docker",
                container_id=foreign.id,
                name="not-a-sandbox",
                token="t",
                run_dir=str(precious),
                unix_path=str(precious / "gw" / "gateway.sock"),
                created=time.time(),
            )
        )
        with pytest.raises(SandboxGone):
            Sandbox.connect("a1b2c3d4e5f6")
        assert (precious / "work.txt").read_text() == "a user's work", (
            "connect deleted a directory not its own"
        )
        try:
            docker_engine.api.inspect_container(foreign.id)
        except NotFound:
            pytest.fail("connect force-removed a container that is not a sandbox")
    finally:
        try:
            docker_engine.api.remove_container(foreign.id, force=True)
        except NotFound:
            pass
