"""The directory shared with the container (/run/enclave, holding the gateway's socket) is
locked before user code runs: code in the sandbox cannot fill it, replace or remove the
socket, plant a symlink or a deep chain of directories; and close() removes it all."""

from __future__ import annotations

import os
import stat

import pytest

from enclave_tools.backends.docker import SHARED_DIR, SOCKET_NAME

ATTACKS = {
    "write a file": "open('/run/enclave/fill', 'wb').write(b'x' * 2**20)",
    "unlink the socket": "import os; os.unlink('/run/enclave/gateway.sock')",
    "replace the socket": (
        "import os\nopen('/tmp/plain', 'w').close()\nos.rename('/tmp/plain', '/run/enclave/gateway.sock')"
    ),
    "rename the socket away": "import os; os.rename('/run/enclave/gateway.sock', '/run/enclave/old')",
    "symlink over the socket": "import os; os.symlink('/tmp/elsewhere.sock', '/run/enclave/gateway.sock')",
    "bind another server": (
        "import socket\nserver = socket.socket(socket.AF_UNIX)\nserver.bind('/run/enclave/evil.sock')"
    ),
    "make a deep chain": (
        "import os\nos.chdir('/run/enclave')\nfor _ in range(3000):\n    os.mkdir('d'); os.chdir('d')"
    ),
    "chmod the directory back": "import os; os.chmod('/run/enclave', 0o777)",
}


def _shared(sandbox) -> str:
    return os.path.join(sandbox._handle.run_dir, "gw")


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_code_in_the_sandbox_cannot_touch_the_socket_dir(sandbox, attack):
    sandbox.run("1")
    socket_path = os.path.join(_shared(sandbox), SOCKET_NAME)
    before = os.lstat(socket_path)
    execution = sandbox.run(ATTACKS[attack])
    assert not execution.ok
    assert execution.error.name == "PermissionError", execution.error.traceback
    assert os.listdir(_shared(sandbox)) == [SOCKET_NAME]
    after = os.lstat(socket_path)
    assert stat.S_ISSOCK(after.st_mode) and after.st_ino == before.st_ino
    assert sandbox.run("print(6 * 7)").text.strip() == "42"  # the next run works


def test_the_directory_is_locked_to_the_host_user(sandbox):
    sandbox.run("1")
    info = os.lstat(_shared(sandbox))
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    seen = sandbox.run(f"import os; print(os.access({SHARED_DIR!r}, os.W_OK))").text.strip()
    assert seen == "False"


def test_tcp_transport_locks_the_directory_too(make_sandbox):
    sandbox = make_sandbox(transport="tcp", network="bridge")
    execution = sandbox.run(ATTACKS["write a file"])
    assert execution.error.name == "PermissionError"
    assert os.listdir(_shared(sandbox)) == []
    assert sandbox.run("print('ok')").text.strip() == "ok"


def test_close_removes_the_run_directory(make_sandbox):
    sandbox = make_sandbox()
    sandbox.run("1")
    run_dir = sandbox._handle.run_dir
    assert os.path.isdir(run_dir)
    sandbox.close()
    assert not os.path.lexists(run_dir)
