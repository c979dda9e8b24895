"""Reading a sandbox pod's status: ready, starting, never going to start, or ended."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave_tools.backends.base import ContainerState
from enclave_tools.backends.kubernetes.manifests import (
    EXPIRES,
    KEEP_ALIVE,
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
)
from enclave_tools.backends.owner import owner_alive
from enclave_tools.errors import SandboxStartFailed

START_FAILURES = {
    "ErrImagePull": "the image could not be pulled",
    "ImagePullBackOff": "the image could not be pulled",
    "InvalidImageName": "the image name is invalid",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "the container's configuration is invalid",
    "CreateContainerError": "the container could not be created",
    "RunContainerError": "the container could not be run",
}


@dataclass
class PodState(ContainerState):
    """A sandbox pod's state, described in pod terms."""

    reason: str = ""

    def describe(self) -> str:
        """A sentence on how the pod ended."""
        if not self.exists:
            return "its pod was deleted"
        if self.running:
            return "its pod is running"
        if self.reason == "Evicted":
            return f"its pod was evicted by the kubelet ({self.error or 'no reason given'})"
        if self.reason == "Terminating":
            return "its pod is being deleted"
        if self.reason == "DeadlineExceeded":
            return "its pod reached its time limit (activeDeadlineSeconds) and was stopped"
        if self.oom_killed:
            return "its pod ran out of memory"
        if self.exit_code is not None:
            return f"its pod's container stopped with exit code {self.exit_code}"
        return f"its pod is not running ({self.reason or self.error or 'unknown reason'})"


def _conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}


def _ready(pod: dict[str, Any]) -> bool:
    return _conditions(pod).get("Ready", {}).get("status") == "True"


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def terminating(pod: dict[str, Any]) -> bool:
    """Whether the pod is being deleted (``deletionTimestamp`` set: a delete, a node drain,
    an eviction). It may still be Running and Ready for its grace period."""
    return bool(pod["metadata"].get("deletionTimestamp"))


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's message if the pod is waiting for a node (PodScheduled=False,
    reason Unschedulable), else None. This is what makes a cluster autoscaler add a node,
    so it is a reason to wait, not to give up."""
    scheduled = _conditions(pod).get("PodScheduled", {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return scheduled.get("message") or "no node fits the pod"
    return None


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def _check_start(pod: dict[str, Any]) -> bool:
    """Whether the pod is ready; raises SandboxStartFailed if it never will be."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    if _ready(pod) and status.get("podIP"):
        return True
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if reason in START_FAILURES:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            raise SandboxStartFailed(f"pod {name} cannot start: {START_FAILURES[reason]} ({reason}{detail})")
        code = (state.get("terminated") or {}).get("exitCode")
        if code:
            raise SandboxStartFailed(
                f"pod {name} cannot start: its container {container.get('name')!r} exited with code {code}"
            )
    if terminating(pod):
        raise SandboxStartFailed(
            f"pod {name} is being deleted while starting (a drain, an eviction or a delete)"
        )
    if _terminal(pod):
        raise SandboxStartFailed(f"pod {name} stopped while starting: {pod_state(pod).describe()}")
    return False


def _pending_reason(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    waiting_for_node = unschedulable(pod)
    if waiting_for_node:
        return (
            f"it could not be scheduled: {waiting_for_node}; a cluster autoscaler may still "
            "be adding a node: raise startup_timeout, or free or add capacity"
        )
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    return waiting.get("reason") or status.get("reason") or f"phase {status.get('phase', 'unknown')}"


def pod_state(pod: dict[str, Any]) -> PodState:
    """A pod's status as a PodState."""
    status = pod.get("status") or {}
    running_container = "running" in (_container_status(pod).get("state") or {})
    if status.get("phase") == "Running" and running_container and not terminating(pod):
        return PodState(running=True, exists=True)
    if terminating(pod) and not _terminal(pod):
        return PodState(running=False, exists=True, reason="Terminating")
    terminated = (_container_status(pod).get("state") or {}).get("terminated") or {}
    return PodState(
        running=False,
        exists=True,
        exit_code=terminated.get("exitCode"),
        oom_killed=terminated.get("reason") == "OOMKilled",
        error=status.get("message", ""),
        reason=status.get("reason", ""),
    )


def _orphaned(pod: dict[str, Any]) -> bool:
    """Whether the reaper takes ``pod``: it ended, passed its expiry, or (unless it is
    kept alive: no owner process) its owner process on this host is gone."""
    if _terminal(pod):
        return True
    notes = pod["metadata"].get("annotations") or {}
    try:
        if datetime.fromisoformat(notes[EXPIRES]) < datetime.now(UTC):
            return True
    except (KeyError, ValueError, TypeError):
        pass
    if (pod["metadata"].get("labels") or {}).get(KEEP_ALIVE) == "1":
        return False  # judged by its expiry and deadline; its maker is gone by design
    # Another machine's pod is presumed alive: its own reaper, or its deadline, ends it.
    return not owner_alive(notes.get(OWNER_HOST), notes.get(OWNER_PID), notes.get(OWNER_START))
