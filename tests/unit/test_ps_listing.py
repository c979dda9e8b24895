"""`enclave-tools ps` / `stop` / `gc` for every backend, the pure parts: the table (what a
cluster or a gateway wrote is bounded and printable), pods and kernels as rows, choosing a
backend from options."""

from __future__ import annotations

import os
import time

import pytest

from enclave_tools import ps
from enclave_tools.backends.base import IDLE_EXIT, SandboxInfo
from enclave_tools.backends.kubernetes.listing import pod_info
from enclave_tools.backends.kubernetes.manifests import (
    EXPIRES,
    HELD_UNTIL,
    HOLDER,
    KEEP_ALIVE,
    MANAGED_BY,
    MANAGER,
    OWNER_HOST,
    OWNER_PID,
    POOL,
    SANDBOX,
    SESSION,
)
from enclave_tools.backends.options import GATEWAY_TOKEN_ENV, make_backend
from enclave_tools.backends.remote import kernel_info
from enclave_tools.cli import main
from enclave_tools.errors import InvalidInput
from enclave_tools.registry import Record

NOW = 1_800_000_000.0
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\r\nFAKE ROW \u202egnp.exe\x9b" + "y" * 500


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def printable_and_bounded(text: str) -> bool:
    return text.isprintable() and len(text) <= ps.CELL_LIMIT + 3


def test_every_cell_is_bounded_and_printable_and_one_row_per_sandbox():
    infos = [
        SandboxInfo(
            name=HOSTILE, session=HOSTILE, owner=HOSTILE, where=HOSTILE, memory=HOSTILE, status=HOSTILE
        ),
        SandboxInfo(name="plain", idle=HOSTILE, expires_in=HOSTILE, created=NOW - 90),
    ]
    rows = ps.rows(infos, now=NOW)
    assert all(printable_and_bounded(cell) for row in rows for cell in row)
    lines = ps.table(ps.HEADER, rows)
    assert len(lines) == 3 and all(line.isprintable() for line in lines)
    assert rows[1][:7] == ["plain", "-", "-", "2m", rows[1][4], rows[1][5], "-"]
    assert rows[0][3] == "?"  # no creation time: unknown


def test_durations_words_and_absent_fields():
    info = SandboxInfo(name="n", created=NOW - 7200, idle=42.0, expires_in="ended", status="running")
    [row] = ps.rows([info], now=NOW)
    assert row == ["n", "-", "-", "2h", "42s", "ended", "-", "-", "running"]
    assert [ps.duration(v) for v in (float("nan"), float("inf"), -5, 1e300, True)] == [
        "-",
        "-",
        "0s",
        "3650d",
        "-",
    ]


def test_an_id_names_one_sandbox_by_name_id_or_prefix():
    infos = [
        SandboxInfo(name="enclave-aaa", sandbox_id="aaa", container_id="c0ffee1"),
        SandboxInfo(name="enclave-aab", sandbox_id="aab", container_id="c0ffee2"),
    ]
    assert [i.sandbox_id for i in ps.matching(infos, "aaa")] == ["aaa"]
    assert [i.sandbox_id for i in ps.matching(infos, "enclave-aab")] == ["aab"]
    assert [i.sandbox_id for i in ps.matching(infos, "c0ffee2")] == ["aab"]
    assert len(ps.matching(infos, "c0ffee")) == 2
    assert ps.matching(infos, "zzz") == []


def pod(labels=None, notes=None, status=None, **meta):
    return {
        "metadata": {
            "name": meta.pop("name", "enclave-abc"),
            "labels": {MANAGED_BY: MANAGER, SANDBOX: "abc", **(labels or {})},
            "annotations": notes or {},
            "creationTimestamp": iso(NOW - 300),
            **meta,
        },
        "status": {"phase": "Running", "podIP": "10.1.2.3"} if status is None else status,
    }


def test_a_kept_alive_pod_is_detached_or_shows_its_current_holder():
    kept = {KEEP_ALIVE: "1", SESSION: "chat-1"}
    detached = pod(kept, {EXPIRES: iso(NOW + 3600)})
    info = pod_info(detached, NOW)
    assert (info.name, info.sandbox_id, info.session) == ("enclave-abc", "abc", "chat-1")
    assert info.owner == "detached"
    assert (info.created, info.idle, info.where, info.status) == (NOW - 300, "?", "10.1.2.3:8888", "running")
    assert info.expires_in == pytest.approx(3600)
    held = pod(kept, {HOLDER: "worker-7/4242/9f8e7d6c", HELD_UNTIL: f"{time.time() + 20:.3f}"})
    assert pod_info(held, time.time()).owner == "worker-7/4242"  # not the nonce
    lapsed = pod(kept, {HOLDER: "worker-7/4242/9f8e7d6c", HELD_UNTIL: f"{time.time() - 60:.3f}"})
    assert pod_info(lapsed, time.time()).owner == "detached"


def test_pod_owners_pool_pods_and_how_pods_ended():
    here = pod(notes={OWNER_HOST: os.uname().nodename, OWNER_PID: str(os.getpid())})
    assert pod_info(here, NOW).owner == f"{os.uname().nodename}/{os.getpid()}"
    assert pod_info(pod({POOL: "idle"}), NOW).owner == "warm pool"
    ended = pod(
        {KEEP_ALIVE: "1"},
        status={
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": IDLE_EXIT}}}],
        },
    )
    info = pod_info(ended, NOW)
    assert (info.status, info.expires_in, info.idle) == ("failed (idle limit)", "ended", None)
    deadline = pod(status={"phase": "Failed", "reason": "DeadlineExceeded"})
    assert pod_info(deadline, NOW).status == "failed (DeadlineExceeded)"
    assert pod_info(pod(deletionTimestamp=iso(NOW)), NOW).status == "terminating"


def test_a_malformed_or_hostile_pod_still_makes_a_clean_row():
    junk = {
        "metadata": {
            "name": HOSTILE,
            "labels": {KEEP_ALIVE: "1", SESSION: HOSTILE, SANDBOX: 7},
            "annotations": {HOLDER: HOSTILE, HELD_UNTIL: "1e999", EXPIRES: "not a date"},
            "creationTimestamp": ["no"],
        },
        "status": {"phase": HOSTILE, "podIP": {"x": 1}, "containerStatuses": "nope"},
    }
    for shape in (junk, {}, {"metadata": "x", "status": 3}, "not a pod"):
        [row] = ps.rows([pod_info(shape, NOW)], now=NOW)
        assert all(printable_and_bounded(cell) for cell in row)
    info = pod_info(junk, NOW)
    assert info.owner == "detached"  # an absurd claim is lapsed
    assert (info.sandbox_id, info.created, info.expires_in, info.where) == ("", None, "?", None)


def record(**fields):
    base = {
        "id": "r0123456789abcde",
        "backend": "remote",
        "container_id": "remote-r0123456789abcde",
        "name": "http://gw:8888",
        "token": "",
        "kernel_id": "6c1f4a52-1111-2222-3333-444455556666",
        "session": "s1",
        "created": NOW - 600,
        "config": {"keep_alive": 300.0},
        "expires": NOW + 3600,
    }
    return Record(**{**base, **fields})


def test_a_remote_kernel_row_from_its_record_and_the_gateways_model():
    idle = kernel_info(record(), {"execution_state": "idle", "last_activity": iso(NOW - 100)}, NOW)
    assert (idle.name, idle.container_id, idle.owner, idle.status) == (
        "r0123456789abcde",
        "6c1f4a52-1111-2222-3333-444455556666",
        "detached",
        "idle",
    )
    assert idle.idle == pytest.approx(100) and idle.expires_in == pytest.approx(200)  # the idle limit first
    busy = kernel_info(record(), {"execution_state": "busy", "last_activity": iso(NOW - 1000)}, NOW)
    assert (busy.idle, busy.expires_in) == (0.0, pytest.approx(300))
    late = kernel_info(record(expires=NOW - 5), {"execution_state": "idle", "last_activity": iso(NOW)}, NOW)
    assert late.expires_in == "expired"
    gone = kernel_info(record(), None, NOW)
    assert (gone.status, gone.expires_in, gone.idle) == ("gone", "ended", None)
    silent = kernel_info(record(), "?", NOW)
    assert (silent.status, silent.idle, silent.expires_in) == ("?", "?", pytest.approx(3600))
    hostile = kernel_info(record(), {"execution_state": HOSTILE, "last_activity": HOSTILE}, NOW)
    [row] = ps.rows([hostile], now=NOW)
    assert all(printable_and_bounded(cell) for cell in row) and row[4] == "?"


def test_backends_from_options(tmp_path, monkeypatch):
    from enclave_tools.backends.docker import DockerBackend
    from enclave_tools.backends.kubernetes import KubernetesBackend
    from enclave_tools.backends.remote import RemoteGatewayBackend

    assert isinstance(make_backend(), DockerBackend)
    kube = make_backend("kubernetes", namespace="sandboxes", context="lab")
    assert isinstance(kube, KubernetesBackend) and kube.namespace == "sandboxes"
    remote = make_backend("remote", url="http://gw:8888", token="t0k3n")
    assert isinstance(remote, RemoteGatewayBackend) and remote.url == "http://gw:8888"
    with pytest.raises(InvalidInput, match="namespace: not an option of the docker backend"):
        make_backend("docker", namespace="x")
    with pytest.raises(InvalidInput, match="url: not an option of the kubernetes backend"):
        make_backend("kubernetes", url="http://gw")
    with pytest.raises(InvalidInput, match="needs the gateway's token"):
        make_backend("remote", url="http://gw:8888")
    with pytest.raises(InvalidInput, match="unknown backend"):
        make_backend("podman")


def test_the_command_line_takes_the_token_from_a_file_or_the_environment_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(GATEWAY_TOKEN_ENV, raising=False)
    assert main(["ps", "--backend", "remote", "--url", "http://127.0.0.1:9"]) == 2
    assert GATEWAY_TOKEN_ENV in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["ps", "--backend", "remote", "--url", "http://127.0.0.1:9", "--token-file", str(empty)]) == 2
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-token\n")
    remote = ["--backend", "remote", "--url", "http://127.0.0.1:9"]
    # The token is taken (no usage error); nothing listens on port 9, which is said.
    assert main(["ps", *remote, "--token-file", str(secret)]) == 3
    monkeypatch.setenv(GATEWAY_TOKEN_ENV, "s3cr3t-token")
    assert main(["gc", "--backend", "remote", "--url", "http://127.0.0.1:9"]) == 3
    assert main(["ps", "--namespace", "sandboxes"]) == 2  # Docker's: no namespace
    out = capsys.readouterr()
    assert "s3cr3t" not in out.out + out.err
    assert out.err.count("the gateway at http://127.0.0.1:9 does not answer") == 2
    assert "namespace: not an option of the docker backend" in out.err


def test_the_base_backend_lists_and_stops_its_registry_records(tmp_path, monkeypatch):
    from enclave_tools import registry
    from enclave_tools.backends.base import Backend, SandboxHandle

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    removed = []

    class Recorded(Backend):
        name = "recorded"
        can_attach = True
        start = state = wait_stopped = logs = None  # type: ignore[assignment]

        def attach(self, record):
            return SandboxHandle(record.container_id, record.name, None)  # type: ignore[arg-type]

        def remove(self, handle):
            removed.append(handle.container_id)

    Recorded.__abstractmethods__ = frozenset()
    backend = Recorded()
    registry.save(record(id="mine", backend="recorded", container_id="c-1", expires=time.time() + 600))
    registry.save(record(id="other", backend="remote"))
    [info] = backend.describe_sandboxes()
    assert (info.name, info.container_id, info.owner, info.status) == ("mine", "c-1", "detached", "?")
    assert 590 < info.expires_in <= 600  # type: ignore[operator]
    backend.stop_sandbox(info)
    assert removed == ["c-1"]
    assert [r.id for r in registry.records()] == ["other"]


def test_a_gateway_that_does_not_answer_is_said_so_and_its_records_are_kept(tmp_path, monkeypatch, capsys):
    import socket

    from enclave_tools import registry

    with socket.socket() as free:  # a port nothing listens on: connections are refused
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv(GATEWAY_TOKEN_ENV, "s3cr3t-token")
    registry.save(record(name=url, expires=time.time() + 600))
    remote = ["--backend", "remote", "--url", url]
    assert main(["ps", *remote]) == 3  # not a table that looks like "nothing there"
    assert main(["gc", *remote]) == 3  # not "0 removed"
    assert main(["stop", "r0123456789abcde", *remote]) == 3
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count(f"the gateway at {url} does not answer") == 3 and "s3cr3t" not in out.err
    assert [r.id for r in registry.records()] == ["r0123456789abcde"]
