"""Kept-alive sandboxes on Kubernetes: the pod is the record, and its annotations say who is
attached.

A kept-alive sandbox is the pod ``enclave-<id>`` (one name per id, so two workers racing
to create it end with one: the second create is refused with 409), labelled with the
sandbox id, ``keep-alive`` and its session key. What a connecting process needs is on
the pod, readable from any host with access to the namespace: the kernel id and the
config in annotations, the token in the pod's Secret (never in labels, annotations or
env). Nothing is kept on the host.

Who is attached: annotations ``attached-by`` (host/pid/nonce) and ``attached-until``
(epoch seconds), written only with a patch that carries the pod's ``resourceVersion``
(compare-and-swap: the API server answers 409 if anyone wrote the pod since it was
read). The holder renews its claim every third of :data:`LEASE_S` from a daemon thread; a
holder that dies stops renewing and its claim lapses after at most :data:`LEASE_S`
seconds (plus :data:`CLOCK_SKEW_S`: claims are judged by the wall clocks of the hosts,
which must agree to within that). Another process's connect waits up to ``wait`` for the
claim to be released or to lapse, then raises :class:`SandboxInUse`. A claim that says it
lasts longer than :data:`MAX_LEASE_S` (plus the skew) from now was not written by an
honest holder with a good clock: it is judged lapsed, so no ``attached-until`` can lock
a sandbox for longer than that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from enclave_tools.backends.kubernetes.api import KubeApi, api_exception
from enclave_tools.backends.kubernetes.manifests import (
    CONFIG,
    EXPIRES,
    HELD_UNTIL,
    HOLDER,
    KEEP_ALIVE,
    KERNEL_ID,
    MANAGED_BY,
    MANAGER,
    SANDBOX,
    SESSION,
)
from enclave_tools.backends.kubernetes.status import _terminal, terminating
from enclave_tools.errors import SandboxGone, SandboxInUse
from enclave_tools.execution import one_line
from enclave_tools.registry import Record, check_id

log = logging.getLogger(__name__)

LEASE_S = 30.0
"""Seconds an attached process's claim lasts without renewal (it renews every third)."""
CLOCK_SKEW_S = 5.0
"""How far the clocks of two hosts may disagree before a claim could be judged lapsed early."""
MAX_LEASE_S = 600.0
"""The longest claim a holder may write (``attach_lease``); a longer one is judged lapsed."""
_HOST_SHOWN = 64
_POLL = 0.5
_CONFIG_LIMIT = 64 * 1024


def pod_name(sandbox_id: str) -> str:
    """The pod (and lock) name of kept-alive sandbox ``sandbox_id``."""
    return f"enclave-{check_id(sandbox_id)}"


def session_sandbox_id(namespace: str, key: str) -> str:
    """The id of session ``key``'s kept-alive sandbox in ``namespace``: the same on every
    host (whoever may use the namespace shares its sessions)."""
    digest = hashlib.sha256(f"kubernetes\0{namespace}\0{key}".encode()).hexdigest()
    return f"s{digest[:15]}"


def holder_identity() -> str:
    """Who this process is, in an ``attached-by`` annotation (not a secret)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def is_kept_alive(pod: dict[str, Any], sandbox_id: str) -> bool:
    """Whether ``pod`` is the kept-alive pod of ``sandbox_id`` (the labels say so)."""
    labels = pod["metadata"].get("labels") or {}
    return (
        labels.get(MANAGED_BY) == MANAGER
        and labels.get(SANDBOX) == sandbox_id
        and labels.get(KEEP_ALIVE) == "1"
    )


def record_of(pod: dict[str, Any], sandbox_id: str, namespace: str) -> Record:
    """The Record of a kept-alive pod (without its token: :meth:`attach` reads the Secret)."""
    meta = pod["metadata"]
    notes = meta.get("annotations") or {}
    try:
        config = json.loads(notes.get(CONFIG, "{}")[:_CONFIG_LIMIT])
    except ValueError:
        config = {}
    return Record(
        id=sandbox_id,
        backend="kubernetes",
        container_id=meta["name"],
        name=f"{namespace}/{meta['name']}",
        token="",
        kernel_id=notes.get(KERNEL_ID, ""),
        session=(meta.get("labels") or {}).get(SESSION),
        created=_epoch(meta.get("creationTimestamp")),
        config=config if isinstance(config, dict) else {},
        expires=_epoch(notes.get(EXPIRES)),
    )


def record_annotations(record: Record) -> dict[str, str]:
    """What :func:`record_of` reads back, as annotations (never the token)."""
    notes = {KERNEL_ID: record.kernel_id, CONFIG: json.dumps(record.config, sort_keys=True)}
    if record.expires:
        notes[EXPIRES] = datetime.fromtimestamp(record.expires, UTC).isoformat(timespec="seconds")
    return notes


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class PodHold:
    """This process's claim on a kept-alive pod (``attached-by``), renewed until released."""

    def __init__(self, kube: KubeApi, namespace: str, name: str, holder: str, lease: float) -> None:
        self._kube, self._namespace, self._name = kube, namespace, name
        self._holder, self._lease = holder, lease
        self._stop = threading.Event()
        self._lost = False
        self._thread = threading.Thread(target=self._renew, name=f"enclave-hold-{name}", daemon=True)
        self._thread.start()

    @property
    def held(self) -> bool:
        """Whether this process still holds the pod (False once released or lost)."""
        return not self._stop.is_set() and not self._lost

    def release(self) -> None:
        """Stop renewing and clear the claim (if it is still ours); safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self._lost:
            try:
                _write_claim(self._kube, self._namespace, self._name, self._holder, None)
            except Exception as exc:  # noqa: BLE001 - the claim lapses by itself
                log.debug("could not clear the claim on %s: %s", self._name, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                if not _write_claim(self._kube, self._namespace, self._name, self._holder, self._lease):
                    self._lost = True
                    log.warning(
                        "lost the claim on pod %s (another process took it after ours lapsed)", self._name
                    )
                    return
            except Exception as exc:  # noqa: BLE001 - try again at the next beat
                log.debug("renewing the claim on %s failed: %s", self._name, exc)


class NoHold:
    """The claim on a pod that has already ended: nothing to hold (connect then says why)."""

    held = False

    def release(self) -> None:
        """Nothing to let go."""


def _write_claim(kube: KubeApi, namespace: str, name: str, holder: str, lease: float | None) -> bool:
    """Renew (``lease`` seconds from now) or clear (None) ``holder``'s claim under the pod's
    resourceVersion; False if the pod is gone or someone else holds it."""
    ApiException = api_exception()
    for _ in range(10):
        try:
            pod = kube.call(kube.core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if (pod["metadata"].get("annotations") or {}).get(HOLDER) != holder:
            return False
        claim = (
            {HOLDER: holder, HELD_UNTIL: f"{time.time() + lease:.3f}"}
            if lease
            else {HOLDER: None, HELD_UNTIL: None}
        )
        patch = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"], "annotations": claim}}
        try:
            kube.call(kube.core.patch_namespaced_pod, name, namespace, patch)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status != 409:
                raise
    raise SandboxInUse(f"pod {namespace}/{name} changed ten times while its claim was written")


def take(
    kube: KubeApi, namespace: str, sandbox_id: str, holder: str, wait: float, lease: float
) -> PodHold | NoHold:
    """Claim the kept-alive pod of ``sandbox_id`` for ``holder``, waiting up to ``wait``
    seconds for another holder to let go or lapse. Raises :class:`SandboxGone` if there is
    no such pod, :class:`SandboxInUse` if it stays held."""
    ApiException = api_exception()
    name = pod_name(sandbox_id)
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        try:
            pod = kube.call(kube.core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SandboxGone(
                    f"sandbox {sandbox_id} is gone: its pod {namespace}/{name} no longer exists"
                ) from None
            raise
        if not is_kept_alive(pod, sandbox_id):
            raise SandboxGone(
                f"sandbox {sandbox_id} is gone: pod {namespace}/{name} is not a kept-alive sandbox"
            )
        if _terminal(pod) or terminating(pod):
            return NoHold()
        notes = pod["metadata"].get("annotations") or {}
        other = notes.get(HOLDER)
        if other and other != holder and _until(notes) + CLOCK_SKEW_S > time.time():
            if time.monotonic() >= deadline:
                host = one_line(other.split("/", 1)[0], _HOST_SHOWN)
                raise SandboxInUse(
                    f"sandbox {sandbox_id} is in use by another process (on {host}): one process at a "
                    "time may be attached. It lets go on detach(), close() or exit (or its claim lapses "
                    f"{lease:g} s after it died); connect again later, or pass wait=SECONDS to "
                    "Sandbox.connect to wait for it."
                )
            time.sleep(_POLL)
            continue
        claim = {HOLDER: holder, HELD_UNTIL: f"{time.time() + lease:.3f}"}
        patch = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"], "annotations": claim}}
        try:
            kube.call(kube.core.patch_namespaced_pod, name, namespace, patch)
        except ApiException as exc:
            if exc.status in (404, 409):
                continue  # changed meanwhile (or gone): look again
            raise
        return PodHold(kube, namespace, name, holder, lease)


def check_lease(lease: float) -> float:
    """``lease`` if it is a number of seconds in (0, :data:`MAX_LEASE_S`]; ValueError otherwise."""
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_LEASE_S:
        raise ValueError(
            f"attach_lease must be a number of seconds above 0 and at most {MAX_LEASE_S:g}, not {lease!r}"
        )
    return float(lease)


def _until(notes: dict[str, str]) -> float:
    """When the claim in ``notes`` lapses (0: already). One that says it lasts past the
    longest lease any holder may write is not to be believed: lapsed."""
    try:
        until = float(notes.get(HELD_UNTIL, "0")[:64])
    except ValueError:
        return 0.0
    if not math.isfinite(until) or until > time.time() + MAX_LEASE_S + CLOCK_SKEW_S:
        return 0.0
    return until
