"""What keep-alive reads back is bounded (a hostile gateway's lifetimes), and stale lock
files are pruned without breaking a lock anyone holds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from enclave_tools import Sandbox, registry
from enclave_tools.attach import MAX_REPORTED_S, clean_limits
from enclave_tools.ps import duration as _duration


def test_reported_limits_are_finite_and_clamped() -> None:
    hostile = {"idle_limit": math.nan, "lifetime": math.inf, "age": -5, "idle": True, "expires_in": 1e308}
    assert clean_limits(hostile) == {
        "idle_limit": None,
        "lifetime": None,
        "age": 0.0,
        "idle": None,
        "expires_in": MAX_REPORTED_S,
    }
    assert clean_limits("not a dict") == dict.fromkeys(
        ("idle_limit", "lifetime", "age", "idle", "expires_in")
    )
    assert [_duration(v) for v in (math.nan, math.inf, -math.inf, 90)] == ["-", "-", "-", "2m"]


def test_stale_lock_files_are_pruned_and_held_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    held = registry.attach("a1b2c3d4e5f6")
    stale = registry.attach("f6e5d4c3b2a1")
    stale.release()
    with registry.creation_lock("c0ffee000001", wait=0):
        pass
    directory = registry.state_dir()
    assert registry.prune_locks() == 2  # the released lock and the creation lock
    assert sorted(p.name for p in directory.iterdir()) == ["a1b2c3d4e5f6.lock"]
    with pytest.raises(registry.SandboxInUse):
        registry.attach("a1b2c3d4e5f6")  # still held: the file was not pruned from under it
    held.release()
    again = registry.attach("f6e5d4c3b2a1")  # a pruned lock is made again
    assert again.held
    again.release()


def test_a_lifetime_without_keep_alive_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="lifetime applies only to a sandbox made with keep_alive"):
        Sandbox(lifetime="1h")
    assert Sandbox(keep_alive="30m", lifetime="1h").config.lifetime_limit == 3600
