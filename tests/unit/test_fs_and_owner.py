"""remove_tree on trees hostile code could have shaped; who is judged an owner that is
gone; which run directories gc may take. No Docker needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from enclave_tools._fs import remove_tree
from enclave_tools.backends import docker as docker_backend
from enclave_tools.backends import owner as owner_module
from enclave_tools.backends.owner import Owner, OwnerCheck, machine_processes, owner_alive

ROOT = os.geteuid() == 0
NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A temporary directory that another user may enter (pytest's own is private)."""
    path = tempfile.mkdtemp(prefix="remove-tree-test-")
    os.chmod(path, 0o755)
    yield path
    assert remove_tree(path) == []


def _in_child(work: Callable[[], list[str]], uid: int | None = None) -> list[str]:
    """Run ``work`` in a forked child (as ``uid`` if given) and return its answer."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(reader)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            os.write(writer, json.dumps(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(answer)


def _build_and_remove(tree: str, outside: str) -> list[str]:
    """A 5,000-deep chain with odd permissions and symlinks out of it, then remove_tree."""
    os.mkdir(tree)
    fd = os.open(tree, os.O_RDONLY)
    for level in range(5000):
        os.mkdir("d", dir_fd=fd)
        os.symlink(outside, "to-dir", dir_fd=fd)
        os.symlink(os.path.join(outside, "keep"), "to-file", dir_fd=fd)
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o000, dir_fd=fd))
        deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
        if level % 7 == 0:  # some levels unreadable, some read-only
            os.fchmod(fd, 0o000 if level % 2 else 0o500)
        os.close(fd)
        fd = deeper
    os.close(fd)
    return remove_tree(tree)


def _hostile_tree(base: str, uid: int | None) -> list[str]:
    """Build the hostile tree and remove it, as ``uid`` (a non-root remover) if given."""
    outside = os.path.join(base, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "keep"), "w") as handle:
        handle.write("must survive")
    if uid is not None:
        os.chmod(base, 0o777)
    tree = os.path.join(base, "tree")
    problems = _in_child(lambda: _build_and_remove(tree, outside), uid)
    assert not os.path.lexists(tree)
    assert os.listdir(outside) == ["keep"]
    with open(os.path.join(outside, "keep")) as handle:
        assert handle.read() == "must survive"
    return problems


def test_remove_tree_takes_a_5000_deep_chain_with_odd_permissions_and_symlinks_out(tmp_path):
    assert _hostile_tree(str(tmp_path), uid=None) == []


@pytest.mark.skipif(not ROOT, reason="needs root to run the remover as another user")
def test_remove_tree_fixes_the_permissions_of_its_own_files(shared_tmp):
    assert _hostile_tree(shared_tmp, uid=NOBODY) == []


def test_remove_tree_removes_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    (target / "inside").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert remove_tree(str(link)) == []
    assert not os.path.lexists(link)
    assert (target / "inside").is_dir()
    assert remove_tree(str(tmp_path / "absent")) == []
    assert remove_tree(None) == []


@pytest.mark.skipif(not ROOT, reason="needs root to make files another user cannot remove")
def test_remove_tree_reports_what_it_cannot_remove_and_never_raises(shared_tmp):
    base = Path(shared_tmp) / "base"
    base.mkdir()
    os.chown(base, NOBODY, NOBODY)
    (base / "theirs").mkdir()  # root's directory: nobody may not empty it
    (base / "theirs" / "file").write_text("x")
    (base / "mine").mkdir()
    os.chown(base / "mine", NOBODY, NOBODY)
    problems = _in_child(lambda: remove_tree(str(base)), NOBODY)
    assert any("theirs/file" in problem for problem in problems)
    assert not (base / "mine").exists()
    assert (base / "theirs" / "file").exists()


# -- owners ---------------------------------------------------------------------------------


def _me(**changes: str) -> Owner:
    here = Owner.current()
    return Owner(**{**here.__dict__, **changes})


def _ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_this_process_is_alive():
    assert OwnerCheck().alive(_me())


def test_same_namespace_gone_when_the_pid_is_absent_or_reused():
    assert not OwnerCheck().alive(_me(pid=str(_ended_pid())))
    assert not OwnerCheck().alive(_me(started="1"))  # our pid, another start: a reused pid


def test_another_host_or_boot_is_presumed_alive():
    assert OwnerCheck().alive(_me(host="elsewhere", started="1"))
    assert OwnerCheck().alive(_me(boot_id="another-boot", started="1"))


def test_garbage_is_presumed_alive():
    for pid in ("", "x", "0", "-1"):
        assert OwnerCheck().alive(_me(pid=pid, started="1"))


def test_another_namespace_is_alive_unless_the_machine_shows_it_gone(monkeypatch):
    me = _me()
    foreign = _me(pid_namespace="1", pid="4242", started="777")
    monkeypatch.setattr(owner_module, "machine_processes", lambda: None)  # cannot see it all
    assert OwnerCheck().alive(foreign)
    monkeypatch.setattr(owner_module, "machine_processes", lambda: frozenset({(4242, "777")}))
    assert OwnerCheck().alive(foreign)  # it runs, with that pid in its own namespace
    monkeypatch.setattr(owner_module, "machine_processes", lambda: frozenset({(4242, "778")}))
    assert not OwnerCheck().alive(foreign)  # every process seen: none is it
    assert OwnerCheck().alive(_me(pid_namespace="1", started=""))  # no start time: no proof
    assert me.pid_namespace != "1"


def test_legacy_records_are_judged_only_by_the_whole_machine(monkeypatch):
    me = Owner.current()
    gone_pid = str(_ended_pid())
    monkeypatch.setattr(owner_module, "machine_processes", lambda: None)
    assert owner_alive(me.host, gone_pid, "777")  # not provable: presumed alive (main said gone)
    monkeypatch.setattr(owner_module, "machine_processes", lambda: frozenset({(int(gone_pid), "777")}))
    assert owner_alive(me.host, gone_pid, "777")
    monkeypatch.setattr(owner_module, "machine_processes", lambda: frozenset())
    assert not owner_alive(me.host, gone_pid, "777")
    assert owner_alive("elsewhere", gone_pid, "777")


def test_the_machine_view_includes_this_process_when_it_is_complete():
    view = machine_processes()
    me = Owner.current()
    in_initial = os.stat("/proc/self/ns/pid").st_ino == owner_module.INITIAL_PID_NAMESPACE
    if not in_initial:
        assert view is None
    else:
        assert view is not None and (int(me.pid), me.started) in view


def test_a_single_check_reads_the_process_table_once(monkeypatch):
    reads = []
    monkeypatch.setattr(owner_module, "machine_processes", lambda: reads.append(1) or frozenset())
    check = OwnerCheck()
    for pid in ("11", "12", "13"):
        assert not check.alive(_me(pid_namespace="1", pid=pid, started="5"))
    assert reads == [1]


# -- run directories ------------------------------------------------------------------------


def _run_dir(tmp: str, name: str, owner: Owner | None, age: float = 0.0) -> str:
    path = os.path.join(tmp, name)
    os.mkdir(path, 0o700)
    os.mkdir(os.path.join(path, "gw"))
    if owner is not None:
        docker_backend._write_owner_record(path, owner)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_reap_run_dirs_takes_only_abandoned_run_dirs(tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(docker_backend.tempfile, "tempdir", tmp)
    dead = _me(started="1")
    old = docker_backend.RUN_DIR_GRACE_S + 60
    gone = _run_dir(tmp, "enclave-gone-1", dead)
    legacy_old = _run_dir(tmp, "enclave-legacy-1", None, age=old)
    kept = {
        _run_dir(tmp, "enclave-live-1", _me()),
        _run_dir(tmp, "enclave-legacy-2", None),  # young: its container may be on its way
        _run_dir(tmp, "enclave-named-1", dead),  # a container still names it
        _run_dir(tmp, "other-1", dead),
    }
    notes = tmp_path / "enclave-notes"  # not shaped like a run directory
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    os.utime(notes, (time.time() - old,) * 2)
    (tmp_path / "enclave-link").symlink_to(tmp_path / "enclave-notes")
    named = SimpleNamespace(labels={docker_backend.RUN_DIR: os.path.join(tmp, "enclave-named-1")})
    backend = docker_backend.DockerBackend(client=SimpleNamespace())
    removed: list[str] = []
    assert backend.reap_run_dirs(removed.append, containers=[named]) == 2
    assert sorted(removed) == sorted([gone, legacy_old])
    assert all(os.path.isdir(path) for path in kept)
    assert (notes / "todo.txt").read_text() == "keep me"
    assert os.path.islink(tmp_path / "enclave-link")


def test_lock_shared_dir_refuses_what_the_gateway_would_not_leave(tmp_path):
    shared = tmp_path / "gw"
    shared.mkdir(mode=0o777)
    (shared / "gateway.sock").write_text("not a socket")
    with pytest.raises(docker_backend.SandboxStartFailed, match="not a socket"):
        docker_backend.lock_shared_dir(str(shared), expect_socket=True)
    assert shared.stat().st_mode & 0o777 == 0o700
    (shared / "extra").write_text("x")
    with pytest.raises(docker_backend.SandboxStartFailed, match="something other than its gateway"):
        docker_backend.lock_shared_dir(str(shared), expect_socket=True)
