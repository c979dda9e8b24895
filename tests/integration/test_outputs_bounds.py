"""What comes back from a real sandbox is bounded and safe to show: rich outputs per run,
any bundle the kernel makes, escapes and bidi controls, the file API's reads (FIFOs,
devices, pseudo-files, sizes), and a memory bomb that ends as a result, not a dead sandbox."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from enclave_tools import FileTransferError
from enclave_tools.execution import RICH_LIMIT, bundle_size

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result or exception, failing the test if it hangs past ``seconds``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the call still hung after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def ok_after(sandbox) -> None:
    assert sandbox.run("6 * 7").text.endswith("42")


# -- rich outputs ------------------------------------------------------------------------


def test_forty_large_images_in_one_cell_are_bounded_with_a_note(sandbox):
    execution = sandbox.run(
        "import base64, os\n"
        "from IPython.display import publish_display_data\n"
        "png = base64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(20 * 2**20)).decode()\n"
        "for _ in range(40):\n"
        "    publish_display_data({'image/png': png, 'text/plain': '<big image>'})\n"
        "print('done')\n",
        timeout=600,
    )
    assert execution.ok, execution.text
    kept = sum(bundle_size(r.data, r.metadata) for r in execution.results)
    assert kept <= RICH_LIMIT
    assert len(execution.results) == 2  # 26.7 MB of base64 each
    assert [len(image) for image in execution.images] == [20 * 2**20 + 8] * 2
    assert "38 rich outputs" in execution.text and "per-run limit is 64.0 MB" in execution.text
    assert "done" in execution.text
    ok_after(sandbox)


def test_hostile_bundles_published_by_kernel_code_render(sandbox):
    execution = sandbox.run(
        "ip = get_ipython(); pub = ip.display_pub\n"
        "def send(content):\n"
        "    pub.session.send(pub.pub_socket, 'display_data', content,\n"
        "                     parent=pub.parent_header, ident=pub.topic)\n"
        "send({'data': {'text/plain': 5}, 'metadata': {}})\n"
        "send({'data': {'text/plain': ['x', 1]}, 'metadata': 'not a dict'})\n"
        "send({'data': 'not a dict', 'metadata': {}})\n"
        "send({'data': {'text/plain': None, 'image/png': 12}, 'metadata': [1]})\n"
        "send({'data': {'image/png': '%% not base64 \\u2713', 'text/plain': {'a': 1}},\n"
        "      'metadata': {'image/png': {'width': [1], 'height': 'x'}},\n"
        "      'transient': {'display_id': ['unhashable']}})\n"
        "from IPython.display import publish_display_data\n"
        "publish_display_data({'text/plain': 7})\n"
    )
    assert execution.ok, execution.text
    assert execution.text == '5\n["x", 1]\n[image/png]\n[image/png]\n7'
    assert execution.images == []
    assert str(execution) == execution.text
    record = json.loads(json.dumps(execution.to_dict()))
    assert type(execution).from_dict(record).text == execution.text


def test_c1_controls_and_bidi_overrides_from_the_kernel_are_removed(sandbox):
    execution = sandbox.run(
        "print('a\\x9b31mred\\x9b0m b\\x9d0;title\\x07 c\\x85d')\n"
        "print('if ok \\u202e// check\\u202c and \\u2066iso\\u2069')\n"
        "from IPython.display import publish_display_data\n"
        "publish_display_data({'text/plain': '\\x1b]0;title\\x07value\\x9b2J\\u202e'})\n"
    )
    assert execution.ok, execution.text
    assert execution.text == "ared b cd\nif ok // check and iso\nvalue"
    assert not UNSAFE.search(execution.text)


def test_the_gateway_starts_without_a_ping_warning(sandbox):
    ok_after(sandbox)
    logs = sandbox._backend.logs(sandbox._handle, 200)
    assert "websocket_ping_timeout" not in logs, logs


# -- the file API ------------------------------------------------------------------------


def test_reading_a_fifo_is_refused_at_once_and_the_gateway_stays_free(sandbox):
    sandbox.run("import os; os.mkfifo('pipe')")
    with pytest.raises(FileTransferError, match="FIFO"):
        within(30, lambda: sandbox.read_file("pipe"))
    within(30, lambda: ok_after(sandbox))


def test_endless_devices_and_pseudo_files_are_refused(sandbox):
    sandbox.run("import os; os.symlink('/dev/zero', 'to-zero')")
    for path, why in [
        ("/dev/zero", "character device"),
        ("/dev/urandom", "character device"),
        ("to-zero", "character device"),  # a symlink is followed, then what it opened checked
        ("/proc/self/environ", "pseudo-file|Permission denied"),  # the gateway's own
        ("/proc/self/maps", "pseudo-file"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "pseudo-file"),
        ("/workspace", "directory"),
    ]:
        with pytest.raises(FileTransferError, match=why):
            within(30, lambda path=path: sandbox.read_file(path))
    ok_after(sandbox)


def test_any_path_gets_a_clear_answer(sandbox):
    with pytest.raises(FileTransferError, match="No such file"):
        within(30, lambda: sandbox.read_file("caf\u00e9\n\u2713\x1b[2J"))


def test_a_symlink_to_a_file_in_the_sandbox_is_read(sandbox):
    sandbox.run("import os; open('real.txt', 'w').write('hello'); os.symlink('real.txt', 'link')")
    assert within(30, lambda: sandbox.read_file("link")) == b"hello"


def test_max_bytes_refuses_a_larger_file_with_its_size(sandbox):
    sandbox.write_file("data.bin", b"x" * 1000)
    status, body = sandbox._http.request(
        "GET", "/api/enclave/files?path=/workspace/data.bin&max_bytes=999", timeout=30
    )
    assert status == 413
    reply = json.loads(body)
    assert reply["size"] == 1000 and reply["limit"] == 999
    assert "1,000 bytes" in reply["reason"]
    status, body = sandbox._http.request(
        "GET", "/api/enclave/files?path=/workspace/data.bin&max_bytes=1000", timeout=30
    )
    assert (status, body) == (200, b"x" * 1000)


def test_a_large_file_streams_whole(sandbox):
    sandbox.run("import os; open('big.bin', 'wb').write(os.urandom(5 * 2**20 + 7))")
    data = sandbox.read_file("big.bin")
    digest = sandbox.run("import hashlib; hashlib.sha256(open('big.bin','rb').read()).hexdigest()")
    import hashlib

    assert len(data) == 5 * 2**20 + 7
    assert repr(hashlib.sha256(data).hexdigest()) == digest.text


# -- out of memory -----------------------------------------------------------------------


def test_memory_bomb_ends_as_out_of_memory_and_the_sandbox_lives_on(make_sandbox):
    sandbox = make_sandbox(memory="256m").start()
    container = sandbox._handle.container_id
    bomb = "blocks = []\nwhile True:\n    blocks.append(b'x' * (64 * 2**20))\n"
    for attempt in range(3):
        assert sandbox.run("open('/proc/self/oom_score_adj').read().strip()").text == "'1000'"
        sandbox.run("kept = 1")
        execution = sandbox.run(bomb, timeout=120)
        assert execution.status == "kernel_died", (attempt, execution.text)
        assert "out of memory" in execution.text and "256m" in execution.text
        assert execution.state_lost
        assert sandbox._handle.container_id == container  # the same sandbox, not a new one
        ok_after(sandbox)
        assert sandbox.run("kept").status == "error"  # the kernel was restarted
