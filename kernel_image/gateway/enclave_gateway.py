"""Jupyter Kernel Gateway, as enclave-tools runs it inside the sandbox container.

Additions to the stock gateway, all behind the same token:

* it can listen on a unix socket (``ENCLAVE_UNIX_SOCKET``), so a container with no
  network at all can still be driven from the host through a shared directory;
* ``/api/enclave/files`` reads and writes files, ``/api/enclave/info`` reports memory use
  and out-of-memory kills, and ``/api/enclave/reap`` ends stray processes, so the host
  needs no ``docker exec``;
* a kept-alive sandbox ends itself (``ENCLAVE_IDLE_LIMIT``, ``ENCLAVE_LIFETIME``): the
  gateway exits once it has not been used for the idle limit, or once the lifetime is up,
  whether or not a host process is left; ``/api/enclave/lifetime`` reads and extends them;
* kernel websockets get TCP_NODELAY, and the process is not dumpable (its token stays
  out of reach of the sandboxed code, which runs under the same uid);
* the first kernel is started before the gateway's own (slow) imports, and handed out by
  the first ``POST /api/kernels``: the two boots overlap instead of adding up;
* every kernel starts through ``enclave_kernel_launcher`` (ipykernel_launcher with its
  boot's modules served from the image's bytecode bundle).
* what of Jupyter Server it imports but never uses is a lazy stand-in (enclave_lazy),
  and its kernel spec manager does not import IPython.

This file runs inside the container only; the host never imports it.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Before any other import: from here on the gateway's modules come from its bundle.
    import enclave_bundle

    enclave_bundle.install(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), enclave_bundle.BUNDLE_NAME)
    )

import json  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402

KERNEL_ENV_NAMES = [
    "HOME",
    "LANG",
    "IPYTHONDIR",
    "MPLCONFIGDIR",
    "JUPYTER_RUNTIME_DIR",
    "JUPYTER_DATA_DIR",
    "PYTHONUNBUFFERED",
]
"""Variables a kernel inherits from the gateway (never KG_AUTH_TOKEN); the host adds the
names of the user's own variables in ENCLAVE_KERNEL_ENV."""

_prestarted: tuple[subprocess.Popen, str] | None = None

STOCK_LAUNCHER = "ipykernel_launcher"
LAUNCHER = "enclave_kernel_launcher"
"""The module every kernel starts with (kernel_image/ipython/enclave_kernel_launcher.py)."""


def kernel_command(argv: list[str]) -> list[str]:
    """``argv`` with the stock kernel launcher (``-m ipykernel_launcher``, the kernel
    spec's) replaced by ours; any other command is left as it is."""
    argv = list(argv)
    if len(argv) >= 3 and argv[1:3] == ["-m", STOCK_LAUNCHER]:
        argv[2] = LAUNCHER
    return argv


def kernel_env_names() -> list[str]:
    """The gateway variables a kernel may inherit."""
    extra = [name for name in os.environ.get("ENCLAVE_KERNEL_ENV", "").split(",") if name]
    return KERNEL_ENV_NAMES + extra


def prestart_kernel() -> None:
    """Start the first kernel now, before the gateway is even imported.

    Its environment is the one the gateway would give it (PATH plus the whitelist);
    it binds random ports and writes them into its connection file.
    """
    global _prestarted
    runtime = os.environ.get("JUPYTER_RUNTIME_DIR", "/tmp/jupyter-runtime")
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    path = os.path.join(runtime, f"kernel-prestarted-{uuid.uuid4().hex[:8]}.json")
    info = {
        "ip": "127.0.0.1",
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "key": str(uuid.uuid4()),
        "kernel_name": "python3",
    }
    info.update({f"{name}_port": 0 for name in ("shell", "iopub", "stdin", "control", "hb")})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle)
    env = {name: os.environ[name] for name in ["PATH", *kernel_env_names()] if name in os.environ}
    env.update(KERNEL_GATEWAY="1", JPY_PARENT_PID=str(os.getpid()))
    process = subprocess.Popen(
        kernel_command([sys.executable, "-m", STOCK_LAUNCHER, "-f", path]),
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _prestarted = (process, path)


def take_prestarted() -> tuple[subprocess.Popen, str] | None:
    """The prestarted kernel, once; None after that (or if there was none)."""
    global _prestarted
    taken, _prestarted = _prestarted, None
    return taken


def make_undumpable() -> None:
    """Keep code in the sandbox (same uid) from reading this process's memory or
    environment (/proc/PID/environ, ptrace): that is where the gateway's token lives."""
    import ctypes

    PR_SET_DUMPABLE = 4
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def load_token() -> None:
    """Take the token from the file the host shared (ENCLAVE_TOKEN_FILE) and delete the
    file, before any sandboxed code runs; the gateway keeps it in its own environment."""
    path = os.environ.pop("ENCLAVE_TOKEN_FILE", "")
    if path:
        with open(path) as handle:
            os.environ["KG_AUTH_TOKEN"] = handle.read().strip()
        try:
            os.unlink(path)
        except OSError as exc:  # a read-only mount (a Kubernetes Secret): say so, go on
            print(f"enclave-gateway: could not delete the token file {path}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    make_undumpable()
    load_token()
    # One module, whatever its name: the gateway's config refers to `enclave_gateway`.
    sys.modules.setdefault("enclave_gateway", sys.modules[__name__])
    if os.environ.get("ENCLAVE_PRESTART_KERNEL", "1") == "1":
        prestart_kernel()

# jsonschema's optional format checkers: jsonschema imports each if it is installed and
# checks that format if it is; the gateway never validates a format that needs one.
# Importing them (arrow, isoduration, rfc3986-validator's regular expressions, ...) was a
# fifth of the gateway's start. A None entry in sys.modules makes their import fail at
# once, in this process only: kernels (other processes) still have every package.
GATEWAY_SKIPS = (
    "fqdn",
    "rfc3987",
    "rfc3987_syntax",
    "rfc3986_validator",
    "rfc3339_validator",
    "webcolors",
    "jsonpointer",
    "uri_template",
    "isoduration",
    "arrow",
    # shutil imports these at start to learn which archive formats it can make (the gateway
    # makes none); tornado's logger, curses to colour a terminal (its stderr is none).
    "bz2",
    "lzma",
    "curses",
)
for _name in GATEWAY_SKIPS:
    sys.modules.setdefault(_name, None)

# Modules the gateway imports but, serving kernels over websockets, never uses: each is a
# stand-in until something asks it for a name (enclave_lazy). jupyter_server.serverapp
# (imported by Kernel Gateway for random_ports) would import all of Jupyter Server: the
# contents managers, nbformat and jsonschema; nbformat is for the notebook-http mode.
# jinja2 is imported for one exception class (jupyter_server's HTML error pages, which the
# gateway's JSON handlers never render): that class comes from its own small module.
# jupyter_events (jsonschema, YAML, and a schema validated at the first kernel start) is
# there to emit kernel actions to event listeners; a gateway has none (the events API is
# Jupyter Server's, not the gateway's), so its kernel managers get a logger that drops them.
# Prometheus metrics are recorded for an endpoint Kernel Gateway does not serve: they go
# to metrics that record nothing.
import enclave_lazy  # noqa: E402
from traitlets.config import LoggingConfigurable  # noqa: E402


class QuietEventLogger(LoggingConfigurable):
    """jupyter_events' ``EventLogger`` where nothing listens: schemas are not loaded and
    events go nowhere."""

    def register_event_schema(self, schema) -> None:
        """Accept a schema without reading it."""

    def emit(self, *, schema_id, data, timestamp_override=None) -> None:
        """Drop an event: no handler or listener is registered in the gateway."""


class QuietSchemaError(Exception):
    """Stands for ``jupyter_events.schema_registry.SchemaRegistryException``, which the
    quiet logger never raises."""


class QuietMetric:
    """A Prometheus metric that records nothing: Kernel Gateway serves no metrics."""

    def labels(self, *_args, **_kwargs) -> QuietMetric:
        """The same metric, whatever the labels."""
        return self

    def inc(self, *_args, **_kwargs) -> None:
        """Record nothing."""

    dec = set = observe = info = set_to_current_time = inc


PROMETHEUS_METRICS = (
    "HTTP_REQUEST_DURATION_SECONDS",
    "KERNEL_CURRENTLY_RUNNING_TOTAL",
    "TERMINAL_CURRENTLY_RUNNING_TOTAL",
    "SERVER_INFO",
    "SERVER_EXTENSION_INFO",
    "LAST_ACTIVITY",
    "SERVER_STARTED",
    "ACTIVE_DURATION",
)
"""The metrics ``jupyter_server.prometheus.metrics`` defines, each a ``QuietMetric`` here."""


def _jinja2_template_not_found(_module):
    import importlib

    return importlib.import_module("jinja2.exceptions").TemplateNotFound


GATEWAY_STAND_INS: dict[str, enclave_lazy.Eager] = {
    "jupyter_server.serverapp": {"random_ports": enclave_lazy.forward("random_ports")},
    "nbformat": {},
    "jinja2": {"TemplateNotFound": _jinja2_template_not_found},
    "jupyter_events": {"EventLogger": lambda _module: QuietEventLogger},
    "jupyter_events.schema_registry": {"SchemaRegistryException": lambda _module: QuietSchemaError},
    "prometheus_client": {},
    "jupyter_server.prometheus.metrics": {name: lambda _module: QuietMetric() for name in PROMETHEUS_METRICS},
}
if not any(isinstance(f, enclave_lazy.StandInFinder) for f in sys.meta_path):
    enclave_lazy.install(GATEWAY_STAND_INS)

import hmac  # noqa: E402 - the kernel above starts before these heavy imports
import tempfile  # noqa: E402

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.provisioning.factory import EntryPoint, KernelProvisionerFactory  # noqa: E402
from jupyter_server._tz import utcnow  # noqa: E402
from jupyter_server.services.kernels.connection.channels import (  # noqa: E402
    ZMQChannelsWebsocketConnection,
)
from kernel_gateway.gatewayapp import KernelGatewayApp  # noqa: E402
from kernel_gateway.services.kernels.manager import (  # noqa: E402
    KernelGatewayIOLoopKernelManager,
    SeedingMappingKernelManager,
)
from tornado import httpserver, netutil, web  # noqa: E402

IMAGE_KERNEL_SPECS = os.path.join(sys.prefix, "share", "jupyter", "kernels")
"""Where the image installed its kernel spec (ipykernel's ``python3``); root's, read-only."""

MAX_UPLOAD_BYTES = 4 * 2**30
CHUNK = 1 << 20


class _TokenHandler(web.RequestHandler):
    """Base for the enclave endpoints: every request must carry the gateway's token."""

    def prepare(self):
        expected = self.settings.get("kg_auth_token") or ""
        header = self.request.headers.get("Authorization", "")
        given = header[len("token ") :] if header.startswith("token ") else ""
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPError(401)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        # tornado has put "Unknown" in place of a reason that cannot go in a status line
        reason = exc.reason if isinstance(exc, web.HTTPError) and exc.reason else self._reason
        if isinstance(exc, OSError):
            reason = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        # The status line takes only one line of Latin-1; the JSON body has the reason whole
        # (a path in it may hold any character, a newline included).
        line = " ".join(str(reason).split()).encode("ascii", "backslashreplace").decode()
        self.set_status(status_code, reason=line[:200] or None)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"reason": reason, "status": status_code}))

    def _path(self) -> str:
        path = self.get_argument("path", "")
        if not path:
            raise web.HTTPError(400, reason="the 'path' argument is required")
        return os.path.abspath(path)


def _oserror_status(exc: OSError) -> int:
    import errno

    return {
        errno.ENOENT: 404,
        errno.EISDIR: 400,
        errno.ENOTDIR: 400,
        errno.EACCES: 403,
        errno.EPERM: 403,
        errno.EROFS: 403,
        errno.ENOSPC: 507,
        errno.EDQUOT: 507,
        errno.EFBIG: 413,
        errno.ENXIO: 400,
        errno.ENODEV: 400,
    }.get(exc.errno, 500)


@web.stream_request_body
class FilesHandler(_TokenHandler):
    """GET streams a file out of the sandbox; PUT writes one (parents are created)."""

    def prepare(self):
        super().prepare()
        self._tmp = None
        if self.request.method == "PUT":
            self.request.connection.set_max_body_size(MAX_UPLOAD_BYTES)
            target = self._path()
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fd, self._tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".upload-")
            except OSError as exc:
                raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {target}") from exc
            self._file = os.fdopen(fd, "wb")

    def data_received(self, chunk):
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._discard()
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror} while writing") from exc

    def _discard(self):
        if self._tmp:
            try:
                self._file.close()
            except OSError:
                pass
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    def on_connection_close(self):
        self._discard()

    def put(self):
        target = self._path()
        try:
            self._file.close()
            os.replace(self._tmp, target)
        except OSError as exc:
            self._discard()
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {target}") from exc
        self._tmp = None
        self.set_status(201)
        self.finish(json.dumps({"path": target, "size": os.path.getsize(target)}))

    async def get(self):
        """Stream a regular file, 1 MiB at a time, every filesystem call off the event loop.

        Anything else (a FIFO, a device, a socket, a directory, a file under /proc or /sys)
        is refused with 400: reading it could block forever, never end, or hand out the
        gateway's own process files. Symlinks are followed: they lead nowhere the
        sandboxed code could not read itself, and the checks apply to what was opened.
        ``max_bytes``, if given, refuses a larger file with 413 (the size in the reply).
        """
        import asyncio

        path = self._path()
        max_bytes = self._max_bytes()
        loop = asyncio.get_running_loop()
        try:
            fd, size = await loop.run_in_executor(None, open_regular_file, path)
        except NotRegularFile as exc:
            raise web.HTTPError(400, reason=str(exc)) from exc
        except OSError as exc:
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {path}") from exc
        try:
            if max_bytes is not None and size > max_bytes:
                self.set_status(413)
                self.set_header("Content-Type", "application/json")
                self.finish(
                    json.dumps(
                        {
                            "status": 413,
                            "reason": f"{path} is {size:,} bytes; the limit is {max_bytes:,} bytes",
                            "size": size,
                            "limit": max_bytes,
                        }
                    )
                )
                return
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(size))
            remaining = size  # what fstat said when the file was opened, never more
            while remaining > 0:
                chunk = await loop.run_in_executor(None, os.read, fd, min(CHUNK, remaining))
                if not chunk:  # the file shrank: the short body tells the client
                    break
                remaining -= len(chunk)
                self.write(chunk)
                await self.flush()
        finally:
            await loop.run_in_executor(None, os.close, fd)

    def _max_bytes(self) -> int | None:
        value = self.get_argument("max_bytes", "")
        if not value:
            return None
        if not value.isdigit():
            raise web.HTTPError(400, reason="max_bytes must be a whole number of bytes")
        return int(value)


class NotRegularFile(Exception):
    """The path names something the file API does not read (a FIFO, a device, ...)."""


_PSEUDO_FILESYSTEMS = ("/proc/", "/sys/")


def open_regular_file(path: str) -> tuple[int, int]:
    """An fd open for reading on the regular file ``path``, and its size.

    Opened non-blocking, so a FIFO cannot hold the open; the type is checked on the
    opened fd (fstat), so a path swapped after a check cannot slip through.
    """
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _file_kind(info.st_mode)
            raise NotRegularFile(f"{path} is {kind}, not a regular file: only files can be read")
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real.startswith(_PSEUDO_FILESYSTEMS):
            raise NotRegularFile(f"{path} is a pseudo-file ({real}): it cannot be read this way")
        os.set_blocking(fd, True)
        return fd, info.st_size
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    import stat

    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "something else"


def _read_int(*paths: str) -> int | None:
    for path in paths:
        try:
            with open(path) as handle:
                return int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _oom_kills() -> int:
    """OOM kills in this container's memory cgroup (v2 ``memory.events``, v1 ``oom_control``)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return 0


class InfoHandler(_TokenHandler):
    """What the host cannot see cheaply: memory in use and OOM kills inside the container."""

    def get(self):
        memory = _read_int("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes")
        self.finish(json.dumps({"memory_bytes": memory, "oom_kills": _oom_kills()}))


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def stray_processes() -> list[int]:
    """Processes that are neither init, this gateway, nor a descendant of it: what code
    in the sandbox left running in new sessions (they outlive a kernel restart)."""
    parents = _parents()
    keep = {1, os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in keep and pid not in keep and parent != 1:
                keep.add(pid)
                changed = True
    return [pid for pid in parents if pid not in keep]


class ReapHandler(_TokenHandler):
    """POST kills stray processes, so a restarted kernel starts from a clean container."""

    def post(self):
        import signal

        killed = []
        for pid in stray_processes():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        self.finish(json.dumps({"killed": killed}))


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """The kernel websocket with Nagle's algorithm off.

    Tornado turns TCP_NODELAY back off once the HTTP upgrade is answered, and neither it nor
    jupyter_server turns it on for the websocket. A small frame written right after
    another (a reply after ``idle``) then waits for the client's delayed ACK: about 40 ms on
    every call over TCP, the delay every gateway-based peer shows.
    """

    def connect(self):
        self.websocket_handler.set_nodelay(True)
        return super().connect()


async def _connection_info(process: subprocess.Popen, path: str, timeout: float = 60.0) -> dict | None:
    """The prestarted kernel's connection info, once it has bound its ports; None if it died."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with open(path) as handle:
                info = json.load(handle)
            if all(info.get(f"{n}_port") for n in ("shell", "iopub", "stdin", "control", "hb")):
                os.unlink(path)
                info["key"] = info["key"].encode()
                return info
        except (OSError, ValueError):
            pass  # not written yet, or being written
        await asyncio.sleep(0.005)
    return None


class PrestartedKernelManager(KernelGatewayIOLoopKernelManager):
    """Hands out the kernel that ``prestart_kernel`` started, the first time; after that
    (restarts, new kernels) it starts kernels the ordinary way, with our launcher."""

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        prestarted = take_prestarted()
        info = await _connection_info(*prestarted) if prestarted else None
        if info is None:
            if prestarted:
                prestarted[0].kill()
            return await super()._async_launch_kernel(kernel_command(kernel_cmd), **kw)
        process = prestarted[0]
        provisioner = self.provisioner
        provisioner.process = process
        provisioner.pid = process.pid
        provisioner.pgid = os.getpgid(process.pid)
        provisioner.connection_info = info
        self._reconcile_connection_info(info)


class EnclaveKernelSpecManager(KernelSpecManager):
    """The stock kernel spec manager, reading the image's kernel specs only.

    Every other place Jupyter looks (``$JUPYTER_DATA_DIR``, ``~/.local/share/jupyter``,
    ``~/.ipython``) is writable by the sandbox's code, and a spec there would choose the
    next kernel's command and environment: ``${KG_AUTH_TOKEN}`` in its ``env`` is filled
    in from the gateway's own environment, token included. Not looking there also spares
    the stock manager's import of IPython (a tenth of a second of the gateway's CPU)."""

    def _kernel_dirs_default(self) -> list[str]:
        return [IMAGE_KERNEL_SPECS]


IMAGE_PROVISIONERS = [
    EntryPoint(
        name="local-provisioner",
        value="jupyter_client.provisioning:LocalProvisioner",
        group=KernelProvisionerFactory.GROUP_NAME,
    )
]
"""The kernel provisioners installed in the image (jupyter_client's own): the ones the
image's kernel specs use."""


def image_provisioners() -> list[EntryPoint]:
    """The provisioners the gateway offers: the image's, named here instead of found by
    reading the entry points of every installed distribution (about 90 files) at the first
    kernel start."""
    return list(IMAGE_PROVISIONERS)


KernelProvisionerFactory._get_all_provisioners = staticmethod(image_provisioners)


SERVING_IMPORTS = (
    "ctypes",
    "decimal",
    "dateutil.parser",
    "dateutil.tz",
    "ipykernel.kernelspec",
    "jupyter_client.provisioning.local_provisioner",
    "jupyter_server.auth.login",
    "jupyter_server.auth.logout",
    "psutil",
    "sysconfig",
    "tornado.options",
    "tornado.platform.asyncio",
    "zoneinfo",
)
"""Modules the gateway loads once it runs (starting a kernel, serving its first
requests) rather than at import: the bundle holds them too."""


def bundle_serving() -> None:
    """What the image build runs to write the gateway's bundle: the gateway's imports, then
    the modules it loads while serving (``python -m enclave_bundle build PATH
    enclave_gateway:bundle_serving``)."""
    import importlib

    for name in SERVING_IMPORTS:
        importlib.import_module(name)


class QuietActivityKernelManager(SeedingMappingKernelManager):
    """Tracks each kernel's state and last activity as the stock manager does, for less.

    The stock watcher verifies the signature of every output message and parses its dates
    with dateutil, then parses each status message a second time: about a tenth of the
    gateway's CPU per cell. Only the message type and a status's state are needed.
    """

    def start_watching_activity(self, kernel_id):
        kernel = self._kernels[kernel_id]
        kernel.execution_state = "starting"
        kernel.reason = ""
        kernel.last_activity = self.last_kernel_activity = utcnow()
        kernel._activity_stream = kernel.connect_iopub()

        def record_activity(msg_list):
            kernel.last_activity = self.last_kernel_activity = utcnow()
            _, parts = kernel.session.feed_identities(msg_list)
            try:  # parts: signature, header, parent header, metadata, content, buffers
                if json.loads(parts[1]).get("msg_type") == "status":
                    state = json.loads(parts[4]).get("execution_state")
                    if isinstance(state, str):
                        kernel.execution_state = state
            except (IndexError, ValueError, AttributeError):
                pass  # not a well-formed message: nothing to record

        kernel._activity_stream.on_recv(record_activity)


IDLE_EXIT = 80
"""The gateway's exit code (and so the container's) when it ended for idleness."""
LIFETIME_EXIT = 81
"""The exit code when the sandbox's absolute lifetime was up."""
MAX_LIMIT_S = 30 * 86400
"""The longest idle limit or lifetime the gateway accepts."""


class LifetimeWatch:
    """Ends the sandbox when it has not been used for ``idle_limit`` seconds, or once
    ``lifetime`` seconds have passed since ``lifetime_from``. Use is any request to the
    gateway, any message from a kernel, or a kernel busy running code; an open but silent
    websocket is not use (a worker may keep one open for days). ``None``: no limit."""

    def __init__(self, idle_limit, lifetime):
        import time

        self.idle_limit = idle_limit
        self.lifetime = lifetime
        self.started = self.last_use = self.lifetime_from = time.monotonic()

    def used(self):
        """Record a use now."""
        import time

        self.last_use = time.monotonic()

    def set(self, idle_limit=None, lifetime=None):
        """Replace the idle limit and/or restart the lifetime from now."""
        import time

        if idle_limit is not None:
            self.idle_limit = idle_limit
        if lifetime is not None:
            self.lifetime, self.lifetime_from = lifetime, time.monotonic()
        self.used()

    def describe(self, kernel_manager=None):
        """The limits and where the sandbox stands, in seconds."""
        import time

        now = time.monotonic()
        last = max(self.last_use, _kernel_activity(kernel_manager))
        ends = []
        if self.idle_limit is not None:
            ends.append(last + self.idle_limit - now)
        if self.lifetime is not None:
            ends.append(self.lifetime_from + self.lifetime - now)
        return {
            "idle_limit": self.idle_limit,
            "lifetime": self.lifetime,
            "age": now - self.started,
            "idle": now - last,
            "expires_in": min(ends) if ends else None,
        }

    def expired(self, kernel_manager=None):
        """None, or (exit code, why) when the sandbox must end now."""
        import time

        now = time.monotonic()
        if self.lifetime is not None and now - self.lifetime_from >= self.lifetime:
            return LIFETIME_EXIT, f"its lifetime of {self.lifetime:g} s is up"
        if self.idle_limit is None or _kernels_busy(kernel_manager):
            return None
        idle = now - max(self.last_use, _kernel_activity(kernel_manager))
        if idle >= self.idle_limit:
            return IDLE_EXIT, f"it was not used for {idle:.0f} s (the limit is {self.idle_limit:g} s)"
        return None


def _kernel_activity(kernel_manager):
    """The monotonic time of the last kernel message (0 if none is known)."""
    import time

    last = getattr(kernel_manager, "last_kernel_activity", None)
    if last is None:
        return 0.0
    return time.monotonic() - max((utcnow() - last).total_seconds(), 0.0)


def _kernels_busy(kernel_manager):
    kernels = getattr(kernel_manager, "_kernels", None) or {}
    return any(getattr(k, "execution_state", "") == "busy" for k in list(kernels.values()))


def _limit_from_env(name):
    value = os.environ.get(name, "")
    try:
        seconds = float(value) if value else None
    except ValueError:
        seconds = None
    return seconds if seconds is not None and 0 < seconds <= MAX_LIMIT_S else None


class LifetimeHandler(_TokenHandler):
    """GET: the sandbox's limits and how long it has been idle. POST ``{"idle_limit": s,
    "lifetime": s}`` replaces the idle limit and/or gives it ``lifetime`` more seconds
    from now (either may be left out)."""

    def get(self):
        watch = self.settings["enclave_watch"]
        self.finish(json.dumps(watch.describe(self.settings.get("kernel_manager"))))

    def post(self):
        try:
            payload = json.loads(self.request.body or b"{}")
            values = {key: payload.get(key) for key in ("idle_limit", "lifetime")}
            for key, value in values.items():
                if value is not None and (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not 0 < value <= MAX_LIMIT_S
                ):
                    raise ValueError(key)
        except (ValueError, AttributeError) as exc:
            raise web.HTTPError(400, reason=f"bad limit {exc}: seconds between 0 and {MAX_LIMIT_S}") from exc
        watch = self.settings["enclave_watch"]
        watch.set(**values)
        self.finish(json.dumps(watch.describe(self.settings.get("kernel_manager"))))


def end_if_expired(watch, kernel_manager):
    """Exit the gateway (and so the container: docker-init runs it) if ``watch`` says so."""
    verdict = watch.expired(kernel_manager)
    if verdict is None:
        return
    code, why = verdict
    print(f"enclave-gateway: ending the sandbox: {why}", file=sys.stderr, flush=True)
    os._exit(code)


WS_PING_INTERVAL_MS = 30_000


def leave_pings_to_jupyter_server() -> None:
    """One ping mechanism per kernel websocket, not two.

    jupyter_server's websocket handler keeps its ping settings, in milliseconds, in the
    ``ping_interval`` and ``ping_timeout`` properties, which tornado 6.5 also reads, as
    seconds, for its own pings: a second mechanism (every 30,000 s) and a warning at every
    start that the timeout (90000) is longer than the interval (30000). Tornado is given
    no ping settings; jupyter_server's pings (above) are the only ones.
    """
    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

    if getattr(KernelWebsocketHandler, "_enclave_single_ping", False):
        return
    tornado_protocol = KernelWebsocketHandler.get_websocket_protocol

    def get_websocket_protocol(self):
        protocol = tornado_protocol(self)
        if protocol is not None:
            protocol.params.ping_interval = protocol.params.ping_timeout = None
        return protocol

    KernelWebsocketHandler.get_websocket_protocol = get_websocket_protocol
    KernelWebsocketHandler._enclave_single_ping = True


class EnclaveGatewayApp(KernelGatewayApp):
    """The Kernel Gateway, optionally on a unix socket, with the enclave endpoints."""

    def init_webapp(self):
        super().init_webapp()
        # jupyter_server pings each kernel websocket itself: every ws_ping_interval ms, and
        # closes it after ws_ping_timeout ms without a pong (three missed pings; the host's
        # client answers every ping). Say both here rather than rely on defaults.
        self.web_app.settings["ws_ping_interval"] = WS_PING_INTERVAL_MS
        self.web_app.settings["ws_ping_timeout"] = 3 * WS_PING_INTERVAL_MS
        leave_pings_to_jupyter_server()
        self.web_app.add_handlers(
            ".*$",
            [
                (r"/api/enclave/files", FilesHandler),
                (r"/api/enclave/info", InfoHandler),
                (r"/api/enclave/reap", ReapHandler),
                (r"/api/enclave/lifetime", LifetimeHandler),
            ],
        )
        self._watch_lifetime()

    def _watch_lifetime(self):
        """Count every request as use, and check the limits every second."""
        from tornado.ioloop import PeriodicCallback

        watch = LifetimeWatch(_limit_from_env("ENCLAVE_IDLE_LIMIT"), _limit_from_env("ENCLAVE_LIFETIME"))
        settings = self.web_app.settings
        settings["enclave_watch"] = watch
        log_request = self.web_app.log_request

        def log_and_count(handler):
            if not (isinstance(handler, LifetimeHandler) and handler.request.method == "GET"):
                watch.used()  # reading the limits (enclave-tools ps) is not use
            log_request(handler)

        self.web_app.log_request = log_and_count
        if watch.idle_limit is not None or watch.lifetime is not None:
            self._lifetime_timer = PeriodicCallback(
                lambda: end_if_expired(watch, settings.get("kernel_manager")), 1000
            )
            self._lifetime_timer.start()

    def init_http_server(self):
        self.http_server = httpserver.HTTPServer(
            self.web_app, xheaders=self.trust_xheaders, ssl_options=self._build_ssl_options()
        )
        path = os.environ.get("ENCLAVE_UNIX_SOCKET")
        if path:
            # Mode 0666: the host user may not be this container's uid; the directory
            # that holds the socket is private to that user on the host side.
            self.http_server.add_socket(netutil.bind_unix_socket(path, mode=0o666))
            self.ip = f"unix:{path}"
        else:
            self.http_server.listen(self.port, self.ip)  # port_retries is 0: no other port


def main():
    """Start the gateway (the container's command)."""
    import warnings

    # Kernel Gateway's own manager is not a ServerKernelManager either; the warning is noise.
    warnings.filterwarnings("ignore", message="KernelManager class", category=FutureWarning)
    EnclaveGatewayApp.launch_instance()


if __name__ == "__main__":
    main()
