"""Jupyter Kernel Gateway, as enclave-tools runs it inside the sandbox container.

Two additions to the stock gateway, both behind the same token:

* it can listen on a unix socket (``ENCLAVE_UNIX_SOCKET``), so a container with no
  network at all can still be driven from the host through a shared directory;
* ``/api/enclave/files`` reads and writes files, and ``/api/enclave/info`` reports the
  container's memory use and out-of-memory kills, so the host needs no ``docker exec``.

This file runs inside the container only; the host never imports it.
"""

from __future__ import annotations

import hmac
import json
import os
import tempfile

from kernel_gateway.gatewayapp import KernelGatewayApp
from tornado import httpserver, netutil, web

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
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, OSError):
            reason = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
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
                raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {target}")
            self._file = os.fdopen(fd, "wb")

    def data_received(self, chunk):
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._discard()
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror} while writing")

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
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {target}")
        self._tmp = None
        self.set_status(201)
        self.finish(json.dumps({"path": target, "size": os.path.getsize(target)}))

    async def get(self):
        path = self._path()
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise web.HTTPError(_oserror_status(exc), reason=f"{exc.strerror}: {path}")
        with handle:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            while chunk := handle.read(CHUNK):
                self.write(chunk)
                await self.flush()


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
        memory = _read_int(
            "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"
        )
        self.finish(json.dumps({"memory_bytes": memory, "oom_kills": _oom_kills()}))


class NoDelayHTTPServer(httpserver.HTTPServer):
    """An HTTP server that disables Nagle's algorithm on every TCP connection.

    Neither tornado nor jupyter_server sets TCP_NODELAY on kernel websockets, so a small
    frame written right after another waits for the client's delayed ACK: about 40 ms
    on every reply. (Unix sockets have no such delay; tornado skips them here.)
    """

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        return super().handle_stream(stream, address)


class EnclaveGatewayApp(KernelGatewayApp):
    """The Kernel Gateway, optionally on a unix socket, with the enclave endpoints."""

    def init_webapp(self):
        super().init_webapp()
        self.web_app.add_handlers(
            ".*$", [(r"/api/enclave/files", FilesHandler), (r"/api/enclave/info", InfoHandler)]
        )

    def init_http_server(self):
        self.http_server = NoDelayHTTPServer(
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
    EnclaveGatewayApp.launch_instance()


if __name__ == "__main__":
    main()
