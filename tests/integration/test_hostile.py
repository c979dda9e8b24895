"""Hostile code in the sandbox: each attack is contained, the host is unaffected, and the
sandbox is usable (or cleanly replaced) with a result that says what happened."""

from __future__ import annotations

import socket
import threading

import pytest

from enclave_tools import Execution

pytestmark = pytest.mark.gvisor  # all of it again under gVisor (make test-gvisor)


def ok_after(sandbox) -> None:
    """The sandbox still answers."""
    assert sandbox.run("6 * 7").text.endswith("42")


@pytest.mark.not_gvisor(
    "under gVisor 2022 (ptrace) the fork bomb ends the whole sandbox (exit 2: SandboxDied, replaced) "
    "instead of failing fork()"
)
def test_fork_bomb_is_stopped_by_the_pids_limit(sandbox):
    execution = sandbox.run(
        "import os\nchildren = []\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n"
        "        children.append(pid)\n"
        "except OSError as exc:\n"
        "    print('stopped after', len(children), type(exc).__name__)\n"
        "finally:\n"
        "    import signal\n"
        "    for pid in children:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    for pid in children:\n"
        "        os.waitpid(pid, 0)\n",
        timeout=120,
    )
    assert "stopped after" in execution.stdout, execution.text
    assert int(execution.stdout.split()[2]) < 256
    ok_after(sandbox)


@pytest.mark.not_gvisor(
    "under gVisor 2022 thread creation never fails at the pids limit: "
    "the bomb runs to its time limit and the sandbox is replaced"
)
def test_thread_bomb_is_stopped_by_the_pids_limit(sandbox):
    execution = sandbox.run(
        "import threading, time\nstop = threading.Event()\nthreads = []\n"
        "try:\n"
        "    for _ in range(10_000):\n"
        "        t = threading.Thread(target=stop.wait); t.start(); threads.append(t)\n"
        "except RuntimeError as exc:\n"
        "    print('stopped after', len(threads), exc)\n"
        "finally:\n"
        "    stop.set()\n"
        "    for t in threads: t.join()\n",
        timeout=120,
    )
    assert "stopped after" in execution.stdout, execution.text
    ok_after(sandbox)


@pytest.mark.not_gvisor(
    "the OOM killer ends the whole gVisor sandbox (exit 137, SandboxDied 'out of memory'), "
    "not only the kernel process"
)
def test_memory_bomb_is_reported_as_out_of_memory(make_sandbox):
    sb = make_sandbox(memory="512m").start()
    sb.run("kept = 1")
    execution = sb.run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", timeout=120)
    if execution.status == "error":  # Python noticed first: a MemoryError is a fine answer
        assert execution.error.name == "MemoryError"
    else:
        assert execution.status == "kernel_died"
        assert "out of memory" in execution.text and "512m" in execution.text
        assert execution.state_lost
    ok_after(sb)


@pytest.mark.parametrize(
    "place, limit_mb",
    [("/workspace", 1024), ("/tmp", 256), ("/home/sandbox", 64), ("/dev/shm", 64)],
)
def test_disk_fill_is_bounded(sandbox, place, limit_mb):
    execution = sandbox.run(
        f"import os\nwritten = 0\nchunk = b'x' * 2**20\n"
        f"try:\n"
        f"    with open('{place}/fill.bin', 'wb') as f:\n"
        f"        while written < 4 * 2**30:\n"
        f"            f.write(chunk); f.flush(); written += len(chunk)\n"
        f"except OSError as exc:\n"
        f"    print('full at', written // 2**20, 'MiB:', exc.strerror)\n"
        f"os.remove('{place}/fill.bin')\n",
        timeout=120,
    )
    assert "full at" in execution.stdout, execution.text
    assert int(execution.stdout.split()[2]) <= limit_mb
    ok_after(sandbox)


def test_root_filesystem_is_read_only(sandbox):
    for path in ("/etc/passwd", "/usr/lib/enclave-test", "/opt/enclave/venv/bin/evil", "/evil"):
        execution = sandbox.run(f"open('{path}', 'w')")
        assert execution.status == "error"
        assert execution.error.name in ("OSError", "PermissionError"), execution.text


@pytest.mark.not_gvisor(
    "gVisor 2022 lets same-uid code read a non-dumpable process's /proc/PID/environ "
    "(its mem stays unreadable; the token is not in environ)"
)
def test_no_docker_socket_no_host_files_no_privileges(sandbox):
    script = (
        "import os, subprocess, ctypes\n"
        "print('docker.sock', os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'))\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000))\n"  # CLONE_NEWUSER
        "print('mount', libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))\n"
        "print('setuid', libc.setuid(0))\n"
        "PTRACE_ATTACH = 16\n"
        "print('ptrace', libc.ptrace(PTRACE_ATTACH, os.getppid(), None, None))\n"  # the gateway
        "try:\n    open(f'/proc/{os.getppid()}/environ').read(); print('environ readable')\n"
        "except OSError as exc:\n    print('environ', type(exc).__name__)\n"
        "print('mounts', sorted({l.split()[1] for l in open('/proc/mounts')\n"
        "                        if l.split()[1].startswith(('/host', '/var/lib/docker'))}))\n"
    )
    out = sandbox.run(script).stdout
    assert "docker.sock False" in out
    for call in ("unshare", "mount", "setuid", "ptrace"):
        assert f"{call} -1" in out, out
    assert "mounts []" in out
    assert "environ PermissionError" in out  # the gateway's token is out of reach


def test_file_descriptor_exhaustion_is_contained(sandbox):
    execution = sandbox.run(
        "import os\nfds = []\n"
        "try:\n"
        "    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as exc:\n"
        "    print('stopped at', len(fds), exc.strerror)\n"
        "finally:\n"
        "    for fd in fds: os.close(fd)\n"
    )
    assert "Too many open files" in execution.stdout
    ok_after(sandbox)


def test_cpu_burn_in_one_sandbox_does_not_starve_another(make_sandbox):
    burner, other = make_sandbox(cpus=1.0).start(), make_sandbox().start()
    done = threading.Event()
    result: list[Execution] = []

    def burn():
        result.append(burner.run("while True: pass", timeout=8))
        done.set()

    threading.Thread(target=burn).start()
    answers = [other.run("sum(range(100_000))").text for _ in range(20)]
    done.wait(60)
    assert answers == ["4999950000"] * 20
    assert result and result[0].status == "timeout"


COUNT_SLEEPERS = (
    "import os\n"
    "def comm(p):\n"
    "    try: return open(f'/proc/{p}/comm').read().strip()\n"
    "    except OSError: return ''\n"
    "sum(comm(p) == 'sleep' for p in os.listdir('/proc') if p.isdigit())"
)


def test_orphan_processes_do_not_outlive_a_restart(sandbox):
    sandbox.run(
        "import subprocess\nfor _ in range(3): subprocess.Popen(['sleep', '3600'], start_new_session=True)"
    )
    assert sandbox.run(COUNT_SLEEPERS).text == "3"
    sandbox.restart()
    assert sandbox.run(COUNT_SLEEPERS).text == "0"


def test_killing_the_gateway_from_inside_is_reported_and_recovered(sandbox):
    from enclave_tools import SandboxDied

    sandbox.run("x = 1")
    with pytest.raises(SandboxDied, match="died"):
        sandbox.run("import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
    again = sandbox.run("'x' in dir()")
    assert again.text.startswith("False") and again.state_lost


def test_fake_protocol_messages_and_escapes_are_plain_text(sandbox):
    fake = (
        '{"header": {"msg_type": "execute_reply", "msg_id": "x"}, '
        '"parent_header": {}, "content": {"status": "ok"}}'
    )
    execution = sandbox.run(
        f"print({fake!r})\n"
        "print('\\x1b[2J\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 \\r\\rdone')\n"
        "print('after')"
    )
    assert execution.ok
    assert '"msg_type": "execute_reply"' in execution.text  # shown, not obeyed
    assert "\x1b" not in execution.text and "\x07" not in execution.text
    assert execution.text.rstrip().endswith("after")


def test_no_route_to_host_services_or_other_sandboxes(make_sandbox):
    # A listener this test starts on every host address, and a second sandbox.
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        target = make_sandbox(network="bridge").start()
        attacker = make_sandbox().start()
        import docker

        settings = docker.from_env().containers.get(target.container_id).attrs["NetworkSettings"]
        ip, bridge = settings["IPAddress"], settings["Gateway"]  # the bridge's host address
        for host, probe_port in ((bridge, port), ("127.0.0.1", port), (ip, 8888)):
            execution = attacker.run(
                "import socket\n"
                f"try:\n    socket.create_connection(({host!r}, {probe_port}), timeout=3)\n"
                "    print('CONNECTED')\n"
                "except OSError as exc:\n    print('refused:', exc)\n"
            )
            assert "CONNECTED" not in execution.stdout and "refused" in execution.stdout
        dns = attacker.run("import socket\nsocket.getaddrinfo('localhost.localdomain.example', 80)")
        assert dns.status == "error"
    finally:
        server.close()
