"""Pods as ``enclave-tools ps`` lists them, read from the pod objects alone (labels,
annotations, status): no gateway is contacted, so a pod's idle time is unknown.

A pod is whatever the API server answered: any field may be missing, of the wrong type,
or written by anyone who may patch pods in the namespace. Nothing here trusts its shape;
the listing then bounds and cleans every string it prints.
"""

from __future__ import annotations

from typing import Any

from enclave_tools.backends.base import IDLE_EXIT, LIFETIME_EXIT, SandboxInfo
from enclave_tools.backends.kubernetes.keepalive import CLOCK_SKEW_S, _epoch, _until
from enclave_tools.backends.kubernetes.manifests import (
    EXPIRES,
    GATEWAY_PORT,
    HOLDER,
    KEEP_ALIVE,
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
    POOL,
    SANDBOX,
    SESSION,
)
from enclave_tools.backends.owner import owner_alive

_TEXT_LIMIT = 256
"""The most characters of one label or annotation value read (the listing cuts shorter)."""
_ENDED = {IDLE_EXIT: "idle limit", LIFETIME_EXIT: "lifetime"}


def pod_info(pod: Any, now: float) -> SandboxInfo:
    """What ``enclave-tools ps`` shows of ``pod`` (a pod object as JSON)."""
    pod = _dict(pod)
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    labels, notes = _texts(meta.get("labels")), _texts(meta.get("annotations"))
    name = _text(meta.get("name")) or "?"
    kept = labels.get(KEEP_ALIVE) == "1"
    ended = status.get("phase") in ("Failed", "Succeeded")
    expires = _epoch(notes.get(EXPIRES))
    ip = _text(status.get("podIP"))
    return SandboxInfo(
        name=name,
        sandbox_id=labels.get(SANDBOX, ""),
        container_id=name,
        session=labels.get(SESSION) if kept else None,
        owner=_owner(labels, notes, kept, now),
        created=_epoch(_text(meta.get("creationTimestamp"))) or None,
        idle="?" if kept and not ended else None,  # only its gateway knows
        expires_in="ended" if ended else (expires - now if expires else "?"),
        where=f"{ip}:{GATEWAY_PORT}" if ip else None,
        status=_status(meta, status),
    )


def _owner(labels: dict[str, str], notes: dict[str, str], kept: bool, now: float) -> str:
    if kept:  # no owner process: who is attached, if anyone (a claim that has not lapsed)
        holder = notes.get(HOLDER)
        if holder and _until(notes) + CLOCK_SKEW_S > now:
            return holder.rsplit("/", 1)[0]  # host/pid, without the nonce
        return "detached"
    if labels.get(POOL) == "idle":
        return "warm pool"
    host, pid = notes.get(OWNER_HOST), notes.get(OWNER_PID)
    if not (host and pid):
        return "?"
    gone = not owner_alive(host, pid, notes.get(OWNER_START))  # another host's: presumed alive
    return f"{host}/{pid}" + (" (gone)" if gone else "")


def _status(meta: dict[str, Any], status: dict[str, Any]) -> str:
    if meta.get("deletionTimestamp"):
        return "terminating"
    phase = (_text(status.get("phase")) or "?").lower()
    reason = _text(status.get("reason"))
    if not reason:
        containers = status.get("containerStatuses")
        first = _dict(containers[0] if isinstance(containers, list) and containers else None)
        code = _dict(_dict(first.get("state")).get("terminated")).get("exitCode")
        if isinstance(code, int) and not isinstance(code, bool):
            reason = _ENDED.get(code, f"exit {code}")
    return f"{phase} ({reason})" if reason else phase


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value[:_TEXT_LIMIT] if isinstance(value, str) else ""


def _texts(value: Any) -> dict[str, str]:
    return {k: v[:_TEXT_LIMIT] for k, v in _dict(value).items() if isinstance(k, str) and isinstance(v, str)}
