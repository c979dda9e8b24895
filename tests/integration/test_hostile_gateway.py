"""The host client against a hostile gateway, on real Docker.

Code in the sandbox runs as the gateway's uid, so the worst case is code that took over the
gateway and answers the host with whatever hurts most. Two kinds of attack:

* **endpoint takeover** (``test_hostile_gateway_*``): kernel code starts
  ``tests/hostile/server.py`` inside a bridge/TCP sandbox, and :func:`take_over_endpoint`
  points the host at it; each mode is tried on the calls it can hit (run, read_file,
  restart), then the sandbox is closed while the attacker still owns its endpoint;
* **through the real gateway**: a gigabyte of output, a flood of 20 MiB images, a stopped
  gateway, a killed gateway.

Every call must end within :data:`WATCHDOG_S` (a watchdog thread, not a timing assert) with
an :class:`EnclaveError` subclass or an Execution, the host's memory must not grow by more
than :data:`MEMORY_BOUND` bytes, and ``close()`` must end within the watchdog and leave no
container. A call that hangs or eats memory is cut short by removing its containers, so a
failing test leaves the machine as it found it.

The attacker receives the token when the host talks to it: that is inherent to a takeover
(the README says so), so no test here asserts the token stays secret.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enclave_tools import EnclaveError, Execution, Sandbox, SandboxDied, closing
from enclave_tools.backends.docker import RUN_DIR, DockerBackend
from enclave_tools.config import SandboxConfig
from enclave_tools.sandbox import STATE_LOST
from enclave_tools.transport import Endpoint

WATCHDOG_S = 30.0
"""How long any one call may take before the test calls it hung."""
MEMORY_BOUND = 100 * 2**20
"""How much the host process's resident memory may grow during one call."""
MEMORY_ABORT = 2**30
"""Growth at which the watchdog stops an attack at once (to protect the machine)."""
SERVER_SOURCE = (Path(__file__).parent.parent / "hostile" / "server.py").read_text()
FIRST_PORT = 9000
"""Where the first hostile server listens in the container (its records: the next port);
each launch takes a new pair, so an old server still dying cannot answer for a new one."""
TEST_LABEL = "io.enclave-tools.hostile-test"
"""A label unique to each sandbox made here, so its containers can be force-removed."""
MARKER = "the real file's contents"


# -- bounds ------------------------------------------------------------------------------


def resident_bytes() -> int:
    """This process's resident memory (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Outcome:
    """How one call under the watchdog ended."""

    what: str
    value: Any = None
    error: BaseException | None = None
    hung: bool = False
    memory_abort: bool = False
    growth: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for a failure message (and the issue's table)."""
        if self.hung:
            how = f"hung past {WATCHDOG_S:g} s"
        elif self.memory_abort:
            how = f"stopped: memory grew past {MEMORY_ABORT >> 20} MiB"
        elif self.error is not None:
            how = (
                f"raised {type(self.error).__module__}.{type(self.error).__name__}: {str(self.error)[:160]!r}"
            )
        elif isinstance(self.value, Execution):
            how = f"returned Execution(status={self.value.status!r}, text={self.value.text[:80]!r})"
        else:
            how = f"returned {self.value!r:.80}"
        return f"{self.what}: {how} [{self.seconds:.1f} s, +{self.growth >> 20} MiB]"

    @property
    def bounded(self) -> bool:
        """Whether it ended in time and within the memory bound."""
        return not self.hung and not self.memory_abort and self.growth <= MEMORY_BOUND


def bounded_call(
    what: str, fn: Callable[[], Any], abort: Callable[[], None], limit: float = WATCHDOG_S
) -> Outcome:
    """Run ``fn`` in a thread, watching time and this process's memory; past ``limit``
    seconds or :data:`MEMORY_ABORT` bytes of growth, call ``abort`` (which removes the
    containers) and give up on the thread."""
    outcome = Outcome(what)

    def target() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome.error = exc

    baseline = peak = resident_bytes()
    started = time.monotonic()
    thread = threading.Thread(target=target, name=f"hostile-{what}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        peak = max(peak, resident_bytes())
        if peak - baseline > MEMORY_ABORT:
            outcome.memory_abort = True
        elif time.monotonic() - started > limit:
            outcome.hung = True
        if outcome.memory_abort or outcome.hung:
            abort()
            thread.join(10)
            break
    outcome.seconds = time.monotonic() - started
    outcome.growth = max(peak, resident_bytes()) - baseline
    return outcome


# -- sandboxes that are removed whatever happens -----------------------------------------------


class Sandboxes:
    """Makes labelled sandboxes; removes their containers at the end even if a call hung."""

    def __init__(self, config: SandboxConfig, docker: Any) -> None:
        self.config = config
        self.docker = docker
        self.made: list[tuple[Sandbox, str]] = []
        self.abandoned: set[int] = set()

    def new(self, **overrides: Any) -> Sandbox:
        """A started sandbox with its own label."""
        label = uuid.uuid4().hex
        labels = {**self.config.labels, TEST_LABEL: label}
        sb = Sandbox(self.config, labels=labels, **overrides)
        self.made.append((sb, label))
        sb.start()
        return sb

    def label(self, sb: Sandbox) -> str:
        return next(label for made, label in self.made if made is sb)

    def containers(self, sb: Sandbox) -> list[Any]:
        """The containers of ``sb`` that Docker still has."""
        return self.docker.containers.list(all=True, filters={"label": f"{TEST_LABEL}={self.label(sb)}"})

    def remove(self, sb: Sandbox) -> None:
        """Force-remove the containers of ``sb`` and give up on the object (a thread of
        it may be stuck holding its lock)."""
        self.abandoned.add(id(sb))
        closing.untrack(sb)  # its atexit close would wait for the stuck thread
        backend = DockerBackend(self.docker)
        for container in self.containers(sb):
            backend.remove_container(container.id, container.labels.get(RUN_DIR) or None)

    def close_bounded(self, sb: Sandbox) -> Outcome:
        """``sb.close()`` under the watchdog; its containers are removed if it hangs."""
        return bounded_call("close", sb.close, lambda: self.remove(sb))

    def cleanup(self) -> None:
        for sb, _ in self.made:
            if id(sb) not in self.abandoned:
                self.close_bounded(sb)
            self.remove(sb)


@pytest.fixture
def sandboxes(sandbox_config: SandboxConfig, docker_engine: Any) -> Iterator[Sandboxes]:
    made = Sandboxes(sandbox_config, docker_engine)
    try:
        yield made
    finally:
        made.cleanup()


def assert_closed_cleanly(sandboxes: Sandboxes, sb: Sandbox) -> None:
    """``close()`` ends within the watchdog and leaves no container behind."""
    closing = sandboxes.close_bounded(sb)
    assert not closing.hung, f"close() hung: {closing.describe()}"
    assert closing.error is None, closing.describe()
    left = sandboxes.containers(sb)
    assert not left, f"close() left containers: {[c.name for c in left]}"


# -- the attacker's server and the takeover -------------------------------------------------


def take_over_endpoint(sb: Sandbox, host: str, port: int) -> Callable[[], None]:
    """The attacker now owns the gateway's endpoint: from here on every request and
    websocket the host opens for ``sb`` goes to ``host:port`` (with the same token).

    This is the one place that knows how a Sandbox holds its endpoint (the handle, the
    HTTP client, the kernel client and its websocket): adapt it when sandbox.py changes.
    Returns a function that gives the real endpoint back, if ``sb`` still runs the same
    container.
    """
    handle, http, kernel = sb._handle, sb._http, sb._kernel
    assert handle is not None and http is not None and kernel is not None, "start the sandbox first"
    real = handle.endpoint
    kernel_id = kernel.kernel_id
    # The bounds a user would set against a stuck gateway, kept under the watchdog.
    sb.config = sb.config.model_copy(update={"startup_timeout": 10.0, "file_timeout": 10.0})
    hostile = Endpoint(token=real.token, host=host, port=port)
    handle.endpoint = hostile
    http.endpoint = hostile
    http.close()  # no kept-alive connection to the real gateway survives
    kernel.disconnect()  # the next run reconnects: to the attacker

    def give_back() -> None:
        if sb._handle is not handle:
            return  # the sandbox replaced or dropped that container
        handle.endpoint = real
        http.endpoint = real
        http.close()
        kernel.disconnect()
        kernel.kernel_id = kernel_id

    return give_back


class Records:
    """What the hostile server received, pushed to us as it happens (so it survives the
    container's removal)."""

    def __init__(self, host: str, port: int) -> None:
        self.lines: list[dict[str, Any]] = []
        self._sock = socket.create_connection((host, port), timeout=10)
        self._sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        try:
            while data := self._sock.recv(65536):
                pending += data
                *whole, pending = pending.split(b"\n")
                self.lines.extend(json.loads(line) for line in whole)
        except OSError:
            pass

    def requests(self) -> list[dict[str, Any]]:
        """The requests received so far."""
        return [line for line in self.lines if line.get("event") == "request"]

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


START_SERVER = """
import os, signal, socket, subprocess, sys, time
try:
    os.killpg(int(open('/tmp/hostile.pid').read()), signal.SIGKILL)
except (OSError, ValueError):
    pass
server = subprocess.Popen(
    [sys.executable, {path!r}, {mode!r}, '{port}'], start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open('/tmp/hostile.log', 'ab'))
open('/tmp/hostile.pid', 'w').write(str(server.pid))
deadline = time.monotonic() + 15
while True:
    try:
        socket.create_connection(('127.0.0.1', {port} + 1), 1).close()
        socket.create_connection(('127.0.0.1', {port}), 1).close()
        break
    except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(open('/tmp/hostile.log').read())
        time.sleep(0.05)
print('hostile server ready')
"""


def bridge_ip(docker: Any, container_id: str) -> str:
    """The container's address on its bridge network."""
    networks = docker.api.inspect_container(container_id)["NetworkSettings"]["Networks"]
    return next(net["IPAddress"] for net in networks.values() if net.get("IPAddress"))


@dataclass
class Attack:
    """A sandbox whose endpoint the attacker owns, serving one mode."""

    sb: Sandbox
    records: Records
    give_back: Callable[[], None]
    token_sha256: str
    """SHA-256 of the Authorization header the host sends (the records carry the same)."""


class HostileGateway:
    """One mode of the hostile server, set up afresh before each call on a sandbox that
    is reused while it stays usable."""

    def __init__(self, sandboxes: Sandboxes, mode: str) -> None:
        self.sandboxes = sandboxes
        self.mode = mode
        self.sb: Sandbox | None = None
        self.attack: Attack | None = None
        self.port = FIRST_PORT

    def prepare(self) -> Attack:
        """Give back the endpoint, (re)start the server in the sandbox, take over again."""
        if self.attack is not None:
            self.attack.records.close()
            if id(self.attack.sb) not in self.sandboxes.abandoned:
                self.attack.give_back()
        self.port += 2
        for _ in range(2):
            if self.sb is None or id(self.sb) in self.sandboxes.abandoned:
                self.sb = self.sandboxes.new(network="bridge", transport="tcp", file_limit="8m")
            sb = self.sb
            launch = bounded_call(
                "launch", lambda sb=sb: self._launch(sb), lambda sb=sb: self.sandboxes.remove(sb), 120
            )
            if launch.bounded and launch.error is None:
                break
            self.sandboxes.remove(sb)  # unusable after the last attack: start over
        else:
            pytest.fail(f"could not start the hostile server: {launch.describe()}")
        host = bridge_ip(self.sandboxes.docker, self.sb.container_id)
        try:
            records = Records(host, self.port + 1)
        except OSError as exc:
            pytest.fail(f"the host cannot reach the container at {host}: {exc}")
        token_sha256 = hashlib.sha256(self.sb.handle.endpoint.auth_header.encode()).hexdigest()
        give_back = take_over_endpoint(self.sb, host, self.port)
        self.attack = Attack(self.sb, records, give_back, token_sha256)
        return self.attack

    def _launch(self, sb: Sandbox) -> None:
        sb.write_file("marker.txt", MARKER)
        path = sb.write_file("hostile_server.py", SERVER_SOURCE)
        execution = sb.run(START_SERVER.format(path=path, mode=self.mode, port=self.port), timeout=30)
        assert "hostile server ready" in execution.stdout, execution.text

    def abort(self) -> None:
        """Stop the attack now: remove the sandbox's containers."""
        if self.sb is not None:
            self.sandboxes.remove(self.sb)


HTTP_MODES = [
    "chunked_forever",
    "many_headers",
    "http_drip",
    "silent",
    "reset_mid_body",
    "garbage_status",
    "short_body",
]
"""Every request, the websocket upgrade too, gets the attack (see tests/hostile/server.py)."""
WS_MODES = ["ws_endless_header", "ws_huge_frame", "ws_fragments", "ws_drip"]
"""REST answers look right; the websocket gets the attack."""


def _run(sb: Sandbox) -> Any:
    return sb.run("6 * 7", timeout=5)


def _read_file(sb: Sandbox) -> Any:
    return sb.read_file("marker.txt")


def _restart(sb: Sandbox) -> Any:
    return sb.restart()


CALLS: dict[str, Callable[[Sandbox], Any]] = {"run": _run, "read_file": _read_file, "restart": _restart}


def acceptable(call: str, outcome: Outcome) -> bool:
    """An EnclaveError, or (for run) an Execution that does not pretend the code ran."""
    if outcome.error is not None:
        return isinstance(outcome.error, EnclaveError)
    return call == "run" and isinstance(outcome.value, Execution) and outcome.value.status != "ok"


def attack_each_call(sandboxes: Sandboxes, mode: str, calls: list[str]) -> None:
    """Try ``mode`` on each of ``calls``, then close while the attacker owns the endpoint;
    fail with every call's outcome."""
    gateway = HostileGateway(sandboxes, mode)
    lines, problems = [], []
    for call in calls:
        attack = gateway.prepare()
        outcome = bounded_call(call, lambda fn=CALLS[call], sb=attack.sb: fn(sb), gateway.abort)
        requests = attack.records.requests()
        with_token = sum(1 for req in requests if req.get("auth_sha256") == attack.token_sha256)
        lines.append(
            f"{outcome.describe()} [{len(requests)} request(s) reached the attacker, "
            f"{with_token} with the token]"
        )
        if not requests:
            problems.append(
                f"{call}: the host never reached the hostile server (is take_over_endpoint stale?)"
            )
        if outcome.hung:
            problems.append(f"{call}: hung")
        elif outcome.memory_abort or outcome.growth > MEMORY_BOUND:
            problems.append(f"{call}: host memory grew by {outcome.growth >> 20} MiB")
        elif not acceptable(call, outcome):
            problems.append(f"{call}: {outcome.describe()}")
    sb = gateway.attack.sb
    if id(sb) not in sandboxes.abandoned:
        closing = sandboxes.close_bounded(sb)
        lines.append(closing.describe())
        if not closing.bounded or closing.error is not None:
            problems.append(f"close: {closing.describe()}")
    left = sandboxes.containers(sb)
    if left:
        problems.append(f"close left containers: {[c.name for c in left]}")
    gateway.attack.records.close()
    summary = "\n".join(lines)
    assert not problems, "\n".join(problems) + "\n-- every call:\n" + summary


@pytest.mark.parametrize("mode", HTTP_MODES)
def test_hostile_gateway_http(sandboxes, mode):
    attack_each_call(sandboxes, mode, ["run", "read_file", "restart"])


@pytest.mark.parametrize("mode", WS_MODES)
def test_hostile_gateway_websocket(sandboxes, mode):
    attack_each_call(sandboxes, mode, ["run", "restart"])


# -- attacks through the real gateway --------------------------------------------------------


FIND_GATEWAY = """
import os
def gateway_pid():
    for entry in os.listdir('/proc'):
        if entry.isdigit() and entry != '1':  # pid 1 is docker-init, whose cmdline names it too
            try:
                cmdline = open(f'/proc/{entry}/cmdline', 'rb').read()
            except OSError:
                continue
            if b'enclave_gateway' in cmdline:
                return int(entry)
    raise RuntimeError('no gateway process')
"""


def assert_bounded(outcome: Outcome, memory_bound: int = MEMORY_BOUND) -> None:
    assert not outcome.hung, f"hung: {outcome.describe()}"
    assert not outcome.memory_abort and outcome.growth <= memory_bound, (
        f"host memory grew by {outcome.growth >> 20} MiB: {outcome.describe()}"
    )


def test_a_gigabyte_of_output_is_bounded(sandboxes):
    sb = sandboxes.new()
    outcome = bounded_call(
        "run",
        lambda: sb.run("line = 'x' * 2**20\nfor _ in range(1024):\n    print(line)", timeout=5),
        lambda: sandboxes.remove(sb),
    )
    assert_bounded(outcome)
    assert isinstance(outcome.value, Execution), outcome.describe()
    assert_closed_cleanly(sandboxes, sb)


def test_a_flood_of_20_mib_images_is_bounded(sandboxes):
    sb = sandboxes.new()
    code = (
        "import base64, os\nfrom IPython.display import display\n"
        "image = base64.b64encode(os.urandom(15 * 2**20)).decode()\n"
        "for _ in range(20):\n    display({'image/png': image, 'text/plain': 'img'}, raw=True)\n"
    )
    outcome = bounded_call("run", lambda: sb.run(code, timeout=60), lambda: sandboxes.remove(sb), 90)
    # 400 MiB sent; kept: result_limit (64 MiB) plus one message in flight and its decoded
    # copies, whatever the amount sent (main kept them all: +448 MiB for 50).
    assert_bounded(outcome, memory_bound=200 * 2**20)
    assert isinstance(outcome.value, Execution), outcome.describe()
    assert len(outcome.value.images) <= 3 and any("were dropped" in n for n in outcome.value.notes)
    assert_closed_cleanly(sandboxes, sb)


def test_a_stopped_gateway_ends_the_run_in_bounded_time(sandboxes):
    sb = sandboxes.new()
    sb.run(FIND_GATEWAY)
    outcome = bounded_call(
        "run",
        lambda: sb.run("import signal\nos.kill(gateway_pid(), signal.SIGSTOP)", timeout=5),
        lambda: sandboxes.remove(sb),
    )
    assert_bounded(outcome)
    if outcome.error is not None:
        assert isinstance(outcome.error, EnclaveError), outcome.describe()
    else:
        assert isinstance(outcome.value, Execution) and outcome.value.status == "timeout", outcome.describe()
    assert_closed_cleanly(sandboxes, sb)


def test_a_killed_gateway_is_a_clean_death_and_a_new_sandbox(sandboxes):
    sb = sandboxes.new()
    sb.run(FIND_GATEWAY + "\nkept = 1")
    outcome = bounded_call(
        "run",
        lambda: sb.run("import signal\nos.kill(gateway_pid(), signal.SIGKILL)", timeout=5),
        lambda: sandboxes.remove(sb),
    )
    assert_bounded(outcome)
    assert isinstance(outcome.error, SandboxDied), outcome.describe()
    message = str(outcome.error)
    assert "died" in message
    assert not any(ord(ch) < 32 and ch != "\n" for ch in message), f"control characters in {message!r}"
    again = bounded_call("next run", lambda: sb.run("'kept' in dir()"), lambda: sandboxes.remove(sb), 90)
    assert_bounded(again)
    assert isinstance(again.value, Execution), again.describe()
    assert again.value.text.startswith("False") and again.value.state_lost, again.value.text
    assert any(STATE_LOST in note for note in again.value.notes), again.value.notes
    assert_closed_cleanly(sandboxes, sb)
