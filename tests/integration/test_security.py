"""Safe defaults, checked on the real container: loopback only, a token on every request,
non-root, no capabilities, limits, no network, a clean kernel environment."""

from __future__ import annotations

import http.client
import json
import os
import stat

import pytest

from enclave_tools.errors import GatewayError
from enclave_tools.wire import Deadline, websocket

pytestmark = pytest.mark.gvisor  # all of it again under gVisor (make test-gvisor)


def test_bridge_sandbox_is_still_reached_through_the_private_socket(make_sandbox, docker_engine):
    sb = make_sandbox(network="bridge").start()
    assert sb.handle.endpoint.unix_path  # egress for the code; no port for anyone else
    assert not docker_engine.api.inspect_container(sb.container_id)["HostConfig"]["PortBindings"]
    assert sb.run("'reached'").text == "'reached'"


def test_default_sandbox_has_no_network_and_no_port(sandbox, docker_engine):
    attrs = docker_engine.api.inspect_container(sandbox.container_id)
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert not attrs["HostConfig"]["PortBindings"]
    assert sandbox.handle.endpoint.unix_path
    interfaces = sandbox.run("import socket; sorted(n for _, n in socket.if_nameindex())").text
    assert interfaces == "['lo']"
    lookup = sandbox.run("import socket\nsocket.getaddrinfo('pypi.org', 443)")
    assert lookup.status == "error" and lookup.error.name == "gaierror"


@pytest.mark.not_gvisor(
    "runsc is registered with --network=none (its netstack cannot start here): no TCP transport"
)
def test_published_port_is_loopback_only_and_docker_picked(make_sandbox, docker_engine):
    sb = make_sandbox(network="bridge", transport="tcp").start()
    bindings = docker_engine.api.inspect_container(sb.container_id)["NetworkSettings"]["Ports"]["8888/tcp"]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
    assert int(bindings[0]["HostPort"]) != 8888
    assert sb.run("40 + 2").text == "42"


def _raw_request(endpoint, path, token=None):
    conn = http.client.HTTPConnection(endpoint.netloc, timeout=10)
    conn.sock = endpoint.connect(10)
    headers = {"Authorization": f"token {token}"} if token else {}
    conn.request("GET", path, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize(
    "network, transport",
    [
        ("none", "unix"),
        pytest.param(
            "bridge",
            "tcp",
            marks=pytest.mark.not_gvisor("runsc is registered with --network=none here: no TCP transport"),
        ),
    ],
)
def test_every_request_needs_the_token(make_sandbox, network, transport):
    sb = make_sandbox(network=network, transport=transport).start()
    endpoint = sb.handle.endpoint
    assert _raw_request(endpoint, "/api", endpoint.token) == 200
    for path in (
        "/api",
        "/api/kernels",
        "/api/kernelspecs",
        "/api/enclave/files?path=/etc/hostname",
        "/api/enclave/info",
    ):
        assert _raw_request(endpoint, path) == 401, path
        assert _raw_request(endpoint, path, "wrong-token") == 401, path
    kernel_id = sb._kernel.kernel_id
    with pytest.raises(GatewayError) as refused:
        websocket.connect(
            endpoint.connect(10),
            endpoint.netloc,
            f"/api/kernels/{kernel_id}/channels",
            {},
            [],
            Deadline(10),
        )
    assert refused.value.status == 401


@pytest.mark.not_gvisor(
    "gVisor mounts no cgroupfs at /sys/fs/cgroup, so the code cannot read its CPU quota there"
)
def test_container_is_hardened(sandbox, docker_engine):
    host = docker_engine.api.inspect_container(sandbox.container_id)["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == 2 * 2**30 and host["MemorySwap"] == host["Memory"]
    # The CPU limit is set once the kernel is up (the boot runs without it), before any
    # user code: the code itself sees the quota.
    assert (host["CpuQuota"], host["CpuPeriod"]) == (100_000, 100_000)
    seen = sandbox.run(
        "import pathlib\n"
        "v2 = pathlib.Path('/sys/fs/cgroup/cpu.max')\n"
        "v1 = pathlib.Path('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')\n"
        "print(v2.read_text().split()[0] if v2.exists() else v1.read_text().strip())"
    )
    assert seen.stdout.strip() == "100000"
    assert host["PidsLimit"] == 256
    assert host["Init"] is True
    status = sandbox.run("print(open('/proc/self/status').read())").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == "10001"
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    denied = sandbox.run("open('/etc/passwd', 'a')")
    assert denied.status == "error" and denied.error.name in ("OSError", "PermissionError")


def test_kernel_environment_has_no_token_and_no_host_variables(make_sandbox, monkeypatch):
    monkeypatch.setenv("ENCLAVE_TEST_HOST_SECRET", "host-secret-value")
    sb = make_sandbox(env={"MY_SETTING": "visible"}).start()
    env = json.loads(sb.run("import os, json; print(json.dumps(dict(os.environ)))").stdout)
    assert env["MY_SETTING"] == "visible"
    assert "KG_AUTH_TOKEN" not in env
    assert sb.handle.endpoint.token not in json.dumps(env)
    assert "ENCLAVE_TEST_HOST_SECRET" not in env
    assert "host-secret-value" not in json.dumps(env)


def test_socket_directory_is_private_to_the_host_user(sandbox):
    run_dir = sandbox.handle.run_dir
    assert os.stat(run_dir).st_mode & 0o077 == 0
    unix_path = sandbox.handle.endpoint.unix_path
    assert unix_path.startswith(run_dir)
    assert stat.S_ISSOCK(os.stat(unix_path).st_mode)  # the endpoint is a socket in there


def test_token_is_out_of_reach_of_the_sandboxed_code(sandbox):
    """Nothing the code can read holds the token: not the environment of any process it
    can see (init's included), not the shared directory, not the gateway's memory."""
    dump = sandbox.run(
        "import os\n"
        "for pid in sorted(p for p in os.listdir('/proc') if p.isdigit()):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(pid, name, open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "        except OSError as exc:\n"
        "            print(pid, name, type(exc).__name__)\n"
        "try:\n"
        "    print('shared dir:', os.listdir('/run/enclave'))\n"
        "except OSError as exc:\n"
        "    print('shared dir:', type(exc).__name__)\n"
    )
    assert dump.ok, dump.text
    assert "1 environ" in dump.stdout  # init's environment was readable, and is clean
    assert sandbox.handle.endpoint.token not in dump.stdout
    # Locked once the socket existed: the code cannot even list it (the token file was
    # deleted before that anyway).
    assert dump.stdout.split("shared dir:")[1].strip() == "PermissionError"
