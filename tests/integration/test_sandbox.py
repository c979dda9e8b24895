"""The sandbox on real Docker: state, rich output, errors, timeouts, deaths, floods."""

from __future__ import annotations

import asyncio
import re
import resource
import threading
import time

import pytest
import requests.sessions

from enclave_tools import InvalidInput, SandboxDied
from enclave_tools.backends.docker import DockerBackend


@pytest.mark.gvisor
def test_state_persists_across_calls(sandbox):
    assert sandbox.run("x = [1, 2, 3, 4, 5]").ok
    assert sandbox.run("print(sum(x))").text == "15"
    assert sandbox.run("import statistics; statistics.mean(x)").text == "3"


@pytest.mark.gvisor
async def test_state_persists_across_async_calls(make_sandbox):
    async with make_sandbox() as sb:
        await sb.arun("y = {'a': 1}")
        execution = await sb.arun("y['a'] + 1")
        assert execution.text == "2"
        assert execution.results[0].is_main_result


HANG = 60  # seconds: a bound on a wait that must not hang, never a measure of speed


async def wait_for_turns(sb, running: bool, waiting: int = 0) -> None:
    """Wait until a call's code has gone to the kernel (``running``) and ``waiting``
    calls wait behind it."""
    deadline = time.monotonic() + HANG
    while not (
        (sb._turns.current is not None and sb._turns.current.sent) == running
        and len(sb._turns._waiting) == waiting
    ):
        assert time.monotonic() < deadline, "the calls never got there"
        await asyncio.sleep(0.01)


async def test_arun_does_not_block_the_event_loop(sandbox):
    # The cell waits for a file that only a coroutine on this loop writes: it can end
    # only if the loop ran on while arun waited for it.
    async def release() -> None:
        await asyncio.to_thread(sandbox.write_file, "/tmp/released", "")

    releasing = asyncio.create_task(release())
    execution = await sandbox.arun(
        "import os, time\nwhile not os.path.exists('/tmp/released'): time.sleep(0.01)\n'done'", timeout=HANG
    )
    await releasing
    assert execution.text == "'done'", execution.text


@pytest.mark.gvisor
def test_plot_comes_back_as_png(sandbox):
    execution = sandbox.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    assert execution.ok, execution.text
    assert len(execution.images) == 1
    assert execution.images[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert "image/png" in execution.text and "base64" not in execution.text


@pytest.mark.gvisor
def test_html_dataframe_stderr_and_result(sandbox):
    execution = sandbox.run(
        "from IPython.display import HTML, display\n"
        "import sys, pandas as pd\n"
        "display(HTML('<b>bold</b>'))\n"
        "print('to stderr', file=sys.stderr)\n"
        "pd.DataFrame({'a': [1, 2], 'b': [3, 4]})"
    )
    assert execution.ok, execution.text
    html, frame = execution.results
    assert html.html == "<b>bold</b>"
    assert frame.is_main_result and "<table" in frame.html
    assert "a  b" in frame.text
    assert execution.stderr == "to stderr\n"
    assert execution.execution_count is not None


def test_output_written_as_a_cell_ends_is_never_lost(sandbox):
    # The kernel's flush() skips its IOPub hand-off when nothing is buffered: output written
    # in the last instant (unterminated lines, from another thread) must still come back
    # with its own cell.
    assert sandbox.run("import sys, threading").ok
    code = (
        "t = threading.Thread(target=lambda: print('thread{n}', end=''))\n"
        "t.start(); t.join()\n"
        "print('out{n}', end=''); print('err{n}', end='', file=sys.stderr)\n"
        "{n}"
    )
    for n in range(30):
        execution = sandbox.run(code.format(n=n))
        assert execution.ok
        assert execution.stdout == f"thread{n}out{n}"
        assert execution.stderr == f"err{n}"
        assert execution.results[0].data["text/plain"] == str(n)


@pytest.mark.gvisor
def test_user_error_is_a_result_and_kernel_lives(sandbox):
    sandbox.run("kept = 41")
    execution = sandbox.run("def f():\n    return 1 / 0\nf()")
    assert execution.status == "error"
    assert execution.error.name == "ZeroDivisionError"
    assert "\x1b" not in execution.error.traceback
    assert "ZeroDivisionError" in execution.text
    assert sandbox.run("kept + 1").text == "42"


@pytest.mark.gvisor
def test_timeout_interrupts_and_keeps_state(sandbox):
    sandbox.run("before = 'still here'")
    started = time.monotonic()
    execution = sandbox.run("while True: pass", timeout=2)
    assert execution.status == "timeout"
    assert not execution.state_lost
    assert time.monotonic() - started < 2 + sandbox.config.interrupt_grace + 2
    assert "time limit" in execution.text
    assert sandbox.run("before").text == "'still here'"


@pytest.mark.gvisor
def test_code_ignoring_sigint_is_escalated_and_says_state_was_lost(make_sandbox):
    sb = make_sandbox(interrupt_grace=1).start()
    sb.run("lost = 1")
    execution = sb.run(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout=1
    )
    assert execution.status == "timeout"
    assert execution.state_lost
    assert "restarted" in execution.text or "replaced" in execution.text
    assert "are gone" in execution.text
    after = sb.run("'lost' in dir()")
    assert after.text == "False"
    assert sb.run("1 + 1").text == "2"


@pytest.mark.gvisor
def test_kernel_death_is_prompt_and_recovers(sandbox):
    sandbox.run("doomed = 1")
    started = time.monotonic()
    execution = sandbox.run("import os; os._exit(1)", timeout=60)
    assert time.monotonic() - started < 15  # not the whole timeout
    assert execution.status == "kernel_died"
    assert execution.state_lost
    assert "died" in execution.text and "gone" in execution.text
    assert sandbox.run("'doomed' in dir()").text == "False"
    assert sandbox.run("2 * 21").text == "42"


@pytest.mark.gvisor
def test_container_killed_during_a_call(sandbox, docker_engine, make_sandbox):
    threading.Timer(1.0, lambda: docker_engine.containers.get(sandbox.container_id).kill()).start()
    started = time.monotonic()
    with pytest.raises(SandboxDied, match="died"):
        sandbox.run("import time; time.sleep(60)", timeout=120)
    assert time.monotonic() - started < 15
    # The same sandbox comes back with a fresh container and says state was lost ...
    again = sandbox.run("1 + 1")
    assert again.text.startswith("2") and again.state_lost
    # ... and a new sandbox works too.
    assert make_sandbox().run("3").text == "3"


@pytest.mark.gvisor
def test_input_fails_fast(sandbox):
    started = time.monotonic()
    execution = sandbox.run("input('name? ')", timeout=30)
    assert time.monotonic() - started < 10
    assert execution.status == "error"
    assert execution.error.name == "StdinNotImplementedError"


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.gvisor
def test_huge_single_print_is_bounded(sandbox):
    execution = sandbox.run("print('x' * 10**8)", timeout=60)
    assert execution.status in ("ok", "error")
    assert len(execution.stdout) + len(execution.stderr) <= sandbox.config.capture_limit + 500
    assert len(execution.text) <= sandbox.config.output_limit + 500
    assert sandbox.run("1").text == "1"


def test_ten_megabyte_line_is_cut_head_and_tail(sandbox):
    execution = sandbox.run("print('a' + 'x' * 10**7 + 'z')", timeout=60)
    assert execution.ok
    assert len(execution.stdout) <= sandbox.config.capture_limit + 500
    assert execution.text.startswith("axxx") and "xz\n[" in execution.text  # head, tail, notes
    assert "characters cut" in execution.text and "dropped to bound memory" in execution.text
    assert len(execution.text) <= sandbox.config.output_limit + 500


def test_print_loop_for_ten_seconds_is_bounded(sandbox):
    rss_before = _max_rss_mb()
    execution = sandbox.run(
        "import time\nt = time.time()\nn = 0\n"
        "while time.time() - t < 10:\n    print('flood line', n); n += 1\n",
        timeout=60,
    )
    assert execution.ok, execution.text[-500:]
    assert len(execution.stdout) + len(execution.stderr) <= sandbox.config.capture_limit + 500
    assert len(execution.text) <= sandbox.config.output_limit + 500
    assert "cut" in execution.text
    assert _max_rss_mb() - rss_before < 200


def test_code_too_large_is_rejected_before_sending(sandbox):
    with pytest.raises(InvalidInput, match="limit"):
        sandbox.run("x = 1\n" * 2_000_000)
    assert sandbox.run("'alive'").text == "'alive'"


def test_calls_from_threads_are_serialized(sandbox):
    sandbox.run("import time, threading\nactive = 0\nseen_overlap = False")
    code = (
        "active += 1\nseen_overlap = seen_overlap or active > 1\ntime.sleep(0.2)\nactive -= 1\nprint('{tag}')"
    )
    outputs = {}

    def call(tag):
        outputs[tag] = sandbox.run(code.format(tag=tag)).stdout

    threads = [threading.Thread(target=call, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outputs == {f"t{i}": f"t{i}\n" for i in range(4)}
    assert sandbox.run("seen_overlap").text == "False"


@pytest.mark.gvisor
def test_files_in_and_out(sandbox, tmp_path):
    local = tmp_path / "data.csv"
    local.write_text("a,b\n1,2\n3,4\n")
    remote = sandbox.upload(local, "inputs/data.csv")
    assert remote == "/workspace/inputs/data.csv"
    assert sandbox.run("import pandas as pd; int(pd.read_csv('inputs/data.csv').b.sum())").text == "6"
    sandbox.run("open('out.txt', 'w').write('result')")
    assert sandbox.read_file("out.txt") == b"result"
    target = sandbox.download("out.txt", tmp_path / "got.txt")
    assert target.read_text() == "result"
    sandbox.write_file("/tmp/blob.bin", bytes(range(256)) * 1000)
    assert sandbox.read_file("/tmp/blob.bin") == bytes(range(256)) * 1000
    from enclave_tools import FileTransferError

    with pytest.raises(FileTransferError, match="No such file"):
        sandbox.read_file("missing.txt")
    with pytest.raises(FileTransferError):
        sandbox.write_file("/etc/passwd", "nope")


@pytest.mark.gvisor
def test_constructing_starts_nothing_and_close_removes_everything(make_sandbox, docker_engine):
    sb = make_sandbox()
    assert not sb.started
    sb.run("1")
    container_id = sb.container_id
    run_dir = sb.handle.run_dir
    sb.close()
    import os

    import docker.errors

    with pytest.raises(docker.errors.NotFound):
        docker_engine.containers.get(container_id)
    assert run_dir is None or not os.path.exists(run_dir)
    from enclave_tools import SandboxClosed

    with pytest.raises(SandboxClosed):
        sb.run("1")
    sb.close()  # twice is fine


def test_idle_sandbox_still_answers_after_two_minutes(sandbox):
    """The gateway pings idle websockets every 30 s and drops those that do not answer
    within 90 s; the client's reader thread answers, so the kernel stays reachable."""
    sandbox.run("kept = 'yes'")
    deadline = time.monotonic() + 125
    while time.monotonic() < deadline:  # idle, as an agent between turns
        time.sleep(5)
    assert sandbox.run("kept").text == "'yes'"
    assert not sandbox.run("kept").state_lost


def test_eight_sandboxes_at_once(make_sandbox, docker_engine):
    boxes = [make_sandbox(network="bridge", transport="tcp") for _ in range(8)]
    results = {}

    def work(i, sb):
        sb.run(f"n = {i}")
        results[i] = sb.run("import time; time.sleep(0.5); n * 10").text

    threads = [threading.Thread(target=work, args=(i, sb)) for i, sb in enumerate(boxes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: str(i * 10) for i in range(8)}
    ports = {sb.handle.host_port for sb in boxes}
    assert len(ports) == 8 and 8888 not in ports
    ids = {sb.container_id for sb in boxes}
    for sb in boxes:
        sb.close()
    from enclave_tools.backends.docker import LABEL

    left = {c.id for c in docker_engine.containers.list(all=True, filters={"label": f"{LABEL}=1"})}
    assert not ids & left


@pytest.mark.gvisor
async def test_cancelling_arun_interrupts_the_kernel(sandbox):
    await sandbox.arun("kept = 'yes'")
    task = asyncio.create_task(sandbox.arun("import time; time.sleep(600)"))
    await wait_for_turns(sandbox, running=True)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Not queued behind the ten-minute sleep: the cancel interrupted it.
    after = await asyncio.wait_for(sandbox.arun("kept"), HANG)
    assert after.text == "'yes'"


async def test_cancelling_a_queued_arun_leaves_the_running_one_alone(sandbox):
    # The running cell ends when the test writes a file (files need no turn).
    running = asyncio.create_task(
        sandbox.arun("import os, time\nwhile not os.path.exists('/tmp/go'): time.sleep(0.01)\n'finished'")
    )
    await wait_for_turns(sandbox, running=True)
    queued = asyncio.create_task(sandbox.arun("ran = True"))
    await wait_for_turns(sandbox, running=True, waiting=1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.to_thread(sandbox.write_file, "/tmp/go", "")
    finished = await asyncio.wait_for(running, HANG)
    assert finished.text == "'finished'"  # not interrupted on the queued call's behalf
    assert (await sandbox.arun("'ran' in dir()")).text == "False"  # and the queued one never ran


KERNEL_BOOT_PROBE = """
import sys
bundled = type(sys.modules['IPython.core.interactiveshell'].__spec__.loader).__name__
finders = [type(f).__name__ for f in sys.meta_path]
print(bundled, 'BundleFinder' in finders, sys.argv[0].rsplit('/', 1)[-1])
"""


def test_the_kernel_boots_from_its_bundle_and_imports_the_ordinary_way_after(sandbox):
    # The boot's modules came from the bundle; the finder is gone before any cell runs.
    assert sandbox.run(KERNEL_BOOT_PROBE).text.split() == [
        "BundleLoader",
        "False",
        "enclave_kernel_launcher.py",
    ]
    # A module the boot never imported (and one written now) loads from its files.
    assert sandbox.run("import colorsys; type(colorsys.__spec__.loader).__name__").text == (
        "'SourceFileLoader'"
    )
    sandbox.write_file("/workspace/fresh_module.py", "VALUE = 42\n")
    assert sandbox.run("import fresh_module; fresh_module.VALUE").text == "42"


JUPYTER_CLIENT_PROBE = """
import sys
package = sys.modules['jupyter_client']
before = [type(package.__spec__.loader).__name__, 'jupyter_client.manager' in sys.modules]
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.blocking import BlockingKernelClient as blocking
print(*before, KernelManager.__module__, BlockingKernelClient is blocking,
      type(package.__spec__.loader).__name__, 'StandInFinder' in [type(f).__name__ for f in sys.meta_path])
"""


def test_the_kernel_boots_without_jupyter_clients_managers_and_a_cell_still_has_them(sandbox):
    # The boot takes the jupyter_client package as a stand-in (it needs two of its
    # modules); a cell that asks the package for a name gets the real one.
    assert sandbox.run(JUPYTER_CLIENT_PROBE).text.split() == [
        "StandInLoader",
        "False",
        "jupyter_client.manager",
        "True",
        "SourceFileLoader",
        "False",
    ]


JUPYTER_CLIENT_USERS = """
from jupyter_client.manager import KernelManager  # its `from . import kernelspec`, before the package
import nbclient
from nbconvert.preprocessors import ExecutePreprocessor
import jupyter_client
print(jupyter_client.KernelManager is KernelManager, nbclient.NotebookClient.__name__)
"""


def test_a_cell_imports_jupyter_clients_submodules_and_what_uses_them(sandbox):
    # The package is still the boot's stand-in when a cell imports one of its submodules
    # first; loading the package in the middle of that submodule would be a circular import.
    ran = sandbox.run(JUPYTER_CLIENT_USERS)
    assert ran.text.split() == ["True", "NotebookClient"], ran.text


def test_a_restarted_kernel_starts_through_the_launcher_too(sandbox):
    sandbox.restart()
    assert sandbox.run(KERNEL_BOOT_PROBE).text.split() == [
        "BundleLoader",
        "False",
        "enclave_kernel_launcher.py",
    ]


GATEWAY_PROBE = """
import enclave_bundle, sys
sys.path.insert(0, "/opt/enclave/gateway")
enclave_bundle.install("/opt/enclave/gateway/imports.bundle")
import enclave_gateway
from jupyter_server.base import handlers
from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
logger = ServerKernelManager().event_logger
logger.emit(schema_id="https://events.jupyter.org/jupyter_server/kernel_actions/v1", data={})
from jupyter_server.prometheus.metrics import KERNEL_CURRENTLY_RUNNING_TOTAL as running
running.labels(type="python3").inc()
heavy = ("jsonschema", "yaml", "jinja2.environment", "jupyter_events.logger", "nbformat.validator",
         "prometheus_client.metrics", "bz2", "curses")
loaded = [name for name in heavy if sys.modules.get(name) is not None]
import jinja2
real = jinja2.Environment is not None and jinja2.TemplateNotFound is handlers.TemplateNotFound
from importlib.metadata import entry_points
from jupyter_client.provisioning.factory import KernelProvisionerFactory as factory
named = factory._get_all_provisioners() == list(entry_points(group=factory.GROUP_NAME))
print(type(logger).__name__, type(running).__name__, loaded, real, named)
"""


def test_the_gateway_starts_without_schemas_templates_or_event_machinery(sandbox):
    # Its kernel managers log events to nothing (no listener exists in a gateway), so
    # jupyter_events, jsonschema and YAML are never imported; jinja2 is one exception
    # class, the real one (the same object once jinja2 loads for real); Prometheus metrics
    # record nothing (no endpoint serves them); the kernel provisioners it names are the
    # image's entry points. The gateway's start, in a process of the sandbox's own.
    sandbox.write_file("/tmp/gateway_probe.py", GATEWAY_PROBE)
    ran = sandbox.run(
        "import subprocess, sys\n"
        "print(subprocess.run([sys.executable, '/tmp/gateway_probe.py'], capture_output=True,"
        " text=True, cwd='/tmp').stdout)"
    )
    assert ran.stdout.split() == ["QuietEventLogger", "QuietMetric", "[]", "True", "True"], ran.text


def test_the_gateway_runs_without_the_paths_the_sandbox_writes(sandbox):
    # -P keeps the working directory (/workspace) off its module path, -s the user's
    # site-packages (~/.local): the modules its stand-ins load late come from the image.
    flags = sandbox.run(
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    if pid != '1' and b'enclave_gateway' in argv:\n"
        "        print(sorted(a.decode() for a in argv if a.startswith(b'-') and a != b'-m'))"
    )
    assert flags.text == "['-P', '-s']", flags.text


HOSTILE_SPEC = {
    "argv": ["/opt/enclave/venv/bin/python", "-m", "enclave_kernel_launcher", "-f", "{connection_file}"],
    "display_name": "hostile",
    "language": "python",
    "env": {"HOSTILE_SPEC": "used", "STOLEN": "${KG_AUTH_TOKEN}"},
}


def test_a_kernel_spec_written_by_sandboxed_code_is_never_used(make_sandbox):
    # Every writable place Jupyter would look for kernel specs gets a python3 spec whose
    # env asks for the gateway's token; a new kernel still comes from the image's spec.
    places = ["/tmp/jupyter-data/kernels", "~/.local/share/jupyter/kernels", "~/.ipython/kernels"]
    sandbox = make_sandbox().start()
    sandbox.run(
        "import json, os\n"
        f"for place in {places!r}:\n"
        "    folder = os.path.join(os.path.expanduser(place), 'python3')\n"
        "    os.makedirs(folder, exist_ok=True)\n"
        "    with open(os.path.join(folder, 'kernel.json'), 'w') as f:\n"
        f"        json.dump({HOSTILE_SPEC!r}, f)\n"
        "import sys\n"
        "writable = os.access(sys.prefix + '/share/jupyter/kernels/python3/kernel.json', os.W_OK)"
    )
    assert sandbox.run("writable").text == "False"
    sandbox._kernel.replace()  # a new kernel, as an escalation makes when a restart fails
    sandbox.restart()
    seen = sandbox.run("import os; [os.environ.get('HOSTILE_SPEC'), os.environ.get('STOLEN')]")
    assert seen.text == "[None, None]"


def test_a_container_start_inspects_no_container(make_sandbox, monkeypatch):
    # The reaper lists sandboxes in one call (no inspect per sandbox: one already runs), and
    # create and start are not followed by an inspect.
    make_sandbox().start()
    calls: list[str] = []
    inside = threading.local()
    send, start = requests.sessions.Session.send, DockerBackend.start

    def recording_send(self, request, **kwargs):
        if getattr(inside, "start", False):
            calls.append(f"{request.method} {request.path_url.split('?')[0].split('/', 2)[2]}")
        return send(self, request, **kwargs)

    def recording_start(self, *args, **kwargs):
        inside.start = True
        try:
            return start(self, *args, **kwargs)
        finally:
            inside.start = False

    monkeypatch.setattr(requests.sessions.Session, "send", recording_send)
    monkeypatch.setattr(DockerBackend, "start", recording_start)
    assert make_sandbox().run("1").text == "1"

    calls = [re.sub(r"containers/[0-9a-f]{64}/", "containers/ID/", call) for call in calls]
    assert calls[1].startswith("GET images/"), calls
    expected = ["GET containers/json", "POST containers/create", "POST containers/ID/start"]
    assert [calls[0], *calls[2:]] == expected
