"""The floor: the kernel's own round trip, measured inside the sandbox container.

bench/ours.py pipes this file into ``docker exec -i -u 10001 <container>
/opt/enclave/venv/bin/python - CALLS KERNEL_ID``. It opens the connection file of the kernel that
the gateway started, and runs ``x`` CALLS times with jupyter_client over ZMQ. A call ends,
as in enclave-tools, when both its ``execute_reply`` and its ``status: idle`` arrived.
Prints one JSON list of seconds per call.
"""

import glob
import json
import os
import sys
import time

from jupyter_client import BlockingKernelClient


def connection_file(kernel_id: str = "") -> str:
    """The connection file of kernel ``kernel_id`` if there is one by that name, else the
    newest one in the container (any kernel of this image has the same floor)."""
    runtime = os.environ.get("JUPYTER_RUNTIME_DIR", "/tmp/jupyter-runtime")
    exact = os.path.join(runtime, f"kernel-{kernel_id}.json")
    if kernel_id and os.path.exists(exact):
        return exact
    files = glob.glob(os.path.join(runtime, "kernel-*.json"))
    if not files:
        sys.exit(f"no kernel connection file in {runtime}")
    return max(files, key=os.path.getmtime)


def call(client: BlockingKernelClient, code: str) -> float:
    """Seconds from sending ``code`` until both its reply and its idle status arrived
    (waiting for one first does not delay the other: ZMQ queues it meanwhile)."""
    start = time.perf_counter()
    msg_id = client.execute(code)
    while client.get_shell_msg(timeout=10)["parent_header"].get("msg_id") != msg_id:
        pass
    while True:
        msg = client.get_iopub_msg(timeout=10)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return time.perf_counter() - start


def main() -> None:
    """Measure CALLS round trips (after a few warm-up calls); print them as JSON."""
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    path = connection_file(sys.argv[2] if len(sys.argv) > 2 else "")
    client = BlockingKernelClient(connection_file=path)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        for _ in range(5):
            call(client, "x")
        times = [call(client, "x") for _ in range(calls)]
    finally:
        client.stop_channels()
    print(json.dumps({"connection_file": os.path.basename(path), "times": times}))


if __name__ == "__main__":
    main()
