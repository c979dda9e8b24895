"""A fake Kubernetes API server on loopback, for the real ``kubernetes`` client.

It serves what the Kubernetes backend uses: pods and secrets (create, get, list with label
and field selectors, watch from a resourceVersion, merge patch with resourceVersion
preconditions that fail with 409, delete with garbage collection of owned secrets), pod
logs, the port-forward websocket (v4.channel.k8s.io), and NetworkPolicy objects (stored,
never enforced). Tests inject API errors (any status, on any path) and expired watches (410).

A kubelet hook (see ``fake_kubelet.py``) is told about created, terminating and deleted
pods and writes their status back with :meth:`FakeAPIServer.set_status`.

As the real one: a create of a name that exists is 409 AlreadyExists; a patch carrying a
stale ``metadata.resourceVersion`` is 409 Conflict; a pod's spec may change only in
``activeDeadlineSeconds``, which may be set if unset or lowered, never raised (422
Invalid, as ValidatePodUpdate); objects named in a deleted object's ownerReferences go
later, in the background (the garbage collector is asynchronous); a pod that has ended
(phase Failed or Succeeded) is deleted at once whatever the grace period. A pod delete
with a grace period (the query, DeleteOptions, or the pod's
``terminationGracePeriodSeconds``, default 30) sets ``deletionTimestamp`` and keeps the
object until the kubelet has stopped the containers; grace 0 removes the object at once
and the kubelet stops the containers afterwards. Injected failures can lose the answer
of a request that was served (``after_write``: a 504 after the write). Port-forwards and
API calls are served concurrently.

Not faked: scheduling (beyond a memory check), admission and PodSecurity, RBAC and
authentication, quotas, image pulls, strategic-merge list semantics, and the SPDY
port-forward protocol (see docs/kubernetes.md for the full list).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import WSMsgType, web

KINDS = {"pods": "Pod", "secrets": "Secret", "networkpolicies": "NetworkPolicy"}
HISTORY = 1000
GC_DELAY = 0.5
"""Seconds before the garbage collector deletes what a deleted object owned (it works
asynchronously, from its own watch of the cluster)."""
FORCED_DELETE_NOTICE = 1.0
"""Seconds before the kubelet stops the containers of a force-deleted pod (object gone)."""


class Kubelet(Protocol):
    """What the fake API server tells its kubelet."""

    def pod_created(self, pod: dict[str, Any]) -> None: ...

    def pod_deleted(self, pod: dict[str, Any]) -> None: ...

    def pod_terminating(self, pod: dict[str, Any], grace: float) -> None: ...

    def pod_logs(self, pod: dict[str, Any], tail: int | None) -> str: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``Status`` object, as the API server answers errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_body(code, reason, message), status=code)


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _matches_labels(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _matches_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        path, value = term.split("=", 1)
        current: Any = obj
        for part in path.split("."):
            current = (current or {}).get(part)
        if str(current or "") != value:
            return False
    return True


POD_SPEC_MUTABLE = ("activeDeadlineSeconds",)
"""The pod spec fields a patch may change here (a real API server also takes container
images and added tolerations, which the backend never changes)."""


def _pod_spec_update_error(old: dict[str, Any], patch: dict[str, Any]) -> str:
    """Why the API server refuses this change to a pod's spec ('' if it takes it), as
    ValidatePodUpdate does: activeDeadlineSeconds may be set if unset, or lowered (to 0 or
    more), never raised nor removed; other fields may not change."""
    others = sorted(
        key for key, value in patch.items() if key not in POD_SPEC_MUTABLE and old.get(key) != value
    )
    if others:
        return (
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
            "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
            f"(only additions to existing tolerations) (changed: {', '.join(others)})"
        )
    if "activeDeadlineSeconds" not in patch:
        return ""
    new, before = patch["activeDeadlineSeconds"], old.get("activeDeadlineSeconds")
    if new is None:
        if before is None:
            return ""
        return (
            'spec.activeDeadlineSeconds: Invalid value: "null": '
            "must not update from a positive integer to nil value"
        )
    if not isinstance(new, int) or isinstance(new, bool) or not 0 <= new <= 2**31 - 1:
        return (
            f"spec.activeDeadlineSeconds: Invalid value: {new}: must be between 0 and 2147483647, inclusive"
        )
    if before is not None and new > before:
        return (
            f"spec.activeDeadlineSeconds: Invalid value: {new}: must be less than or equal to previous value"
        )
    return ""


class _Rule:
    def __init__(self, method: str, pattern: str, status: int, times: int, after_write: bool) -> None:
        self.method, self.pattern, self.status, self.times = (
            method.upper(),
            re.compile(pattern),
            status,
            times,
        )
        self.after_write = after_write


def _grace(request: web.Request, body: dict[str, Any] | None, pod: dict[str, Any]) -> int:
    """The grace period of a delete: the query, else DeleteOptions, else the pod's
    terminationGracePeriodSeconds (default 30), as the API server decides it."""
    if "gracePeriodSeconds" in request.query:
        return int(request.query["gracePeriodSeconds"])
    if body and body.get("gracePeriodSeconds") is not None:
        return int(body["gracePeriodSeconds"])
    return int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))


class FakeAPIServer:
    """The fake API server; ``start()`` runs it on 127.0.0.1 in a thread, ``url`` says where."""

    def __init__(self, kubelet: Kubelet | None = None) -> None:
        self.kubelet = kubelet
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.requests: list[tuple[str, str]] = []
        self._rv = itertools.count(1)
        self._history: list[tuple[int, str, str, dict[str, Any]]] = []
        self._watchers: list[tuple[str, asyncio.Queue]] = []
        self._rules: list[_Rule] = []
        self._expire_watches = 0
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- control from tests ---------------------------------------------------------------

    def fail(
        self, method: str, path_pattern: str, status: int, times: int = 1, after_write: bool = False
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the regex with ``status``;
        with ``after_write``, the request is served first and only its answer is lost (a 504
        from a proxy or an API server whose etcd write went through)."""
        with self._lock:
            self._rules.append(_Rule(method, path_pattern, status, times, after_write))

    def expire_watches(self, times: int = 1) -> None:
        """The next ``times`` watches end at once with a 410 Gone event."""
        with self._lock:
            self._expire_watches += times

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of one stored object, or None."""
        with self._lock:
            obj = self.objects[kind].get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, label_selector: str = "") -> list[dict[str, Any]]:
        """Copies of the stored objects of ``kind`` matching the selector."""
        with self._lock:
            return [
                copy.deepcopy(o) for o in self.objects[kind].values() if _matches_labels(o, label_selector)
            ]

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace a pod's status (the kubelet's write), bumping its resourceVersion."""
        with self._lock:
            pod = self.objects["pods"].get((namespace, name))
            if pod is None:
                return
            pod["status"] = copy.deepcopy(status)
            self._changed("MODIFIED", "pods", pod)

    def mark_terminating(self, namespace: str, name: str) -> None:
        """Set a pod's deletionTimestamp as a node drain or an eviction does, leaving it
        Running and Ready (its grace period has not run out yet)."""
        with self._lock:
            pod = self.objects["pods"][(namespace, name)]
            pod["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=30)
            self._changed("MODIFIED", "pods", pod)

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Delete an object behind every client's back (no kubelet call for pods)."""
        with self._lock:
            obj = self.objects[kind].pop((namespace, name), None)
            if obj is not None:
                self._changed("DELETED", kind, obj)
                self._collect_garbage(obj)
            return obj

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeAPIServer:
        """Serve on a free loopback port, in a background thread."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake API server did not start")
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[self._middleware])
        core = "/api/v1/namespaces/{ns}/{kind}"
        networking = "/apis/networking.k8s.io/v1/namespaces/{ns}/{kind}"
        for base in (core, networking):
            app.router.add_route("GET", base, self._list_or_watch)
            app.router.add_route("POST", base, self._create)
            app.router.add_route("GET", base + "/{name}", self._read)
            app.router.add_route("PATCH", base + "/{name}", self._patch)
            app.router.add_route("DELETE", base + "/{name}", self._delete)
        app.router.add_route("GET", core + "/{name}/log", self._log)
        app.router.add_route("GET", core + "/{name}/portforward", self._portforward)
        self._runner = web.AppRunner(app, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()

    # -- storage -------------------------------------------------------------------------

    def _changed(self, kind_event: str, kind: str, obj: dict[str, Any]) -> None:
        """Record a change (with the lock held) and wake the watchers."""
        rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(rv)
        snapshot = copy.deepcopy(obj)
        self._history.append((rv, kind, kind_event, snapshot))
        del self._history[:-HISTORY]
        for watched_kind, queue in list(self._watchers):
            if watched_kind == kind:
                self._loop.call_soon_threadsafe(queue.put_nowait, (rv, kind_event, snapshot))

    def _collect_garbage(self, owner: dict[str, Any]) -> None:
        """Delete what ``owner`` owned (ownerReferences by uid), later and in the background,
        as the garbage collector does (background propagation: the owner goes first)."""
        timer = threading.Timer(GC_DELAY, self._collect_now, args=(owner["metadata"].get("uid"),))
        timer.daemon = True
        timer.start()

    def _collect_now(self, uid: str | None) -> None:
        with self._lock:
            if self._loop is None:
                return
            self._collect_dependents(uid)

    def _collect_dependents(self, uid: str | None) -> None:
        for kind, objects in self.objects.items():
            for key, obj in list(objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    del objects[key]
                    self._changed("DELETED", kind, obj)

    # -- handlers ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        with self._lock:
            for rule in self._rules:
                if rule.times and rule.method == request.method and rule.pattern.search(request.path_qs):
                    rule.times -= 1
                    break
            else:
                rule = None
        if rule is None:
            return await handler(request)
        if rule.after_write:
            await handler(request)
        return _error(rule.status, "InjectedFailure", f"injected failure {rule.status}")

    def _kind(self, request: web.Request) -> str:
        kind = request.match_info["kind"]
        if kind not in KINDS:
            raise web.HTTPNotFound(
                text=json.dumps(status_body(404, "NotFound", f"no resource {kind}")),
                content_type="application/json",
            )
        return kind

    async def _create(self, request: web.Request) -> web.Response:
        kind, ns = self._kind(request), request.match_info["ns"]
        obj = await request.json()
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        with self._lock:
            if (ns, name) in self.objects[kind]:
                return _error(409, "AlreadyExists", f'{kind} "{name}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
            obj.setdefault("kind", KINDS[kind])
            if kind == "secrets":
                data = obj.setdefault("data", {})
                for key, value in (obj.pop("stringData", None) or {}).items():
                    data[key] = base64.b64encode(value.encode()).decode()
            if kind == "pods":
                obj["status"] = {"phase": "Pending"}
            self.objects[kind][(ns, name)] = obj
            self._changed("ADDED", kind, obj)
            answer = copy.deepcopy(obj)
        if kind == "pods" and self.kubelet is not None:
            self.kubelet.pod_created(copy.deepcopy(answer))
        return web.json_response(answer, status=201)

    async def _read(self, request: web.Request) -> web.Response:
        kind, ns, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        obj = self.get(kind, ns, name)
        if obj is None:
            return _error(404, "NotFound", f'{kind} "{name}" not found')
        return web.json_response(obj)

    async def _patch(self, request: web.Request) -> web.Response:
        kind, ns, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        patch = await request.json()
        with self._lock:
            obj = self.objects[kind].get((ns, name))
            if obj is None:
                return _error(404, "NotFound", f'{kind} "{name}" not found')
            wanted = (patch.get("metadata") or {}).pop("resourceVersion", None)
            if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                return _error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind} "{name}": '
                    "the object has been modified; please apply your changes to the latest version",
                )
            if kind == "pods" and "spec" in patch:
                invalid = _pod_spec_update_error(obj["spec"], patch["spec"])
                if invalid:
                    return _error(422, "Invalid", f'Pod "{name}" is invalid: {invalid}')
            _merge_patch(obj, patch)
            self._changed("MODIFIED", kind, obj)
            return web.json_response(copy.deepcopy(obj))

    async def _delete(self, request: web.Request) -> web.Response:
        """Delete as the API server does: other kinds go at once; a pod with a grace period
        gets ``deletionTimestamp`` and stays (Running, maybe Ready) until its kubelet has
        stopped its containers; grace 0 is a forced delete: the object goes at once and the
        kubelet stops the containers later, on its own."""
        kind, ns, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        raw = await request.read()
        body = json.loads(raw) if raw.strip() else None
        with self._lock:
            obj = self.objects[kind].get((ns, name))
            if obj is None:
                return _error(404, "NotFound", f'{kind} "{name}" not found')
            if kind != "pods":
                return web.json_response(self.remove(kind, ns, name))
            grace = _grace(request, body, obj)
            if (obj.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                grace = 0  # the API server deletes a pod that has ended at once (CheckGracefulDelete)
            if grace > 0 and self.kubelet is not None:
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=grace)
                    self._changed("MODIFIED", kind, obj)
                    self.kubelet.pod_terminating(copy.deepcopy(obj), grace)
                return web.json_response(copy.deepcopy(obj))
            obj = self.remove(kind, ns, name)
        if self.kubelet is not None:
            threading.Thread(
                target=self.kubelet.pod_deleted, args=(obj, FORCED_DELETE_NOTICE), daemon=True
            ).start()
        return web.json_response(obj)

    def terminated(self, namespace: str, name: str) -> None:
        """The kubelet stopped a terminating pod's containers: the object goes now."""
        self.remove("pods", namespace, name)

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        ns = request.match_info["ns"]
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")

        def wanted(obj: dict[str, Any]) -> bool:
            return (
                obj["metadata"].get("namespace") == ns
                and _matches_labels(obj, labels)
                and _matches_fields(obj, fields)
            )

        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, kind, wanted)
        with self._lock:
            items = [copy.deepcopy(o) for o in self.objects[kind].values() if wanted(o)]
            rv = str(self._history[-1][0]) if self._history else "0"
        return web.json_response(
            {
                "kind": f"{KINDS[kind]}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, kind: str, wanted: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(event_type: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            expired = self._expire_watches > 0 or (
                since and self._history and since < self._history[0][0] - 1
            )
            if self._expire_watches > 0:
                self._expire_watches -= 1
            backlog = [(rv, t, o) for rv, k, t, o in self._history if k == kind and rv > since]
            self._watchers.append((kind, queue))
        try:
            if expired:
                await send("ERROR", status_body(410, "Expired", f"too old resource version: {since}"))
                return response
            for _, event_type, obj in backlog:
                if wanted(obj):
                    await send(event_type, obj)
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while (left := end - loop.time()) > 0:
                try:
                    _, event_type, obj = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if wanted(obj):
                    await send(event_type, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                self._watchers.remove((kind, queue))
        return response

    async def _log(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.get("pods", ns, name)
        if pod is None:
            return _error(404, "NotFound", f'pods "{name}" not found')
        tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
        text = await asyncio.get_running_loop().run_in_executor(None, self.kubelet.pod_logs, pod, tail)
        return web.Response(text=text)

    async def _portforward(self, request: web.Request) -> web.StreamResponse:
        """One TCP connection to the pod per websocket, framed as v4.channel.k8s.io: channel 0
        carries data, channel 1 errors, each opened with the port number (2 bytes, LE)."""
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.get("pods", ns, name)
        if pod is None or not (pod.get("status") or {}).get("podIP"):
            return _error(404, "NotFound", f'pod "{name}" not found or not running')
        port = int(request.query["ports"])
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        header = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + header)
        await ws.send_bytes(b"\x01" + header)
        try:
            reader, writer = await asyncio.open_connection(pod["status"]["podIP"], port)
        except OSError as exc:
            await ws.send_bytes(b"\x01" + f"error forwarding port {port}: {exc}".encode())
            await ws.close()
            return ws

        async def pod_to_client() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        pump = asyncio.create_task(pod_to_client())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
        finally:
            pump.cancel()
            writer.close()
        return ws
