"""The Docker client, with errors that say what to do when the daemon is not there."""

from __future__ import annotations

import threading

# Imported here, once, not lazily: two threads importing docker-py for the first time at
# once (a warm pool's worker and a caller) can trip over its circular imports.
import docker
from docker.errors import DockerException

from enclave_tools.errors import DockerUnavailable

__all__ = ["docker_client"]

_client = None
_lock = threading.Lock()

DOCKER_HELP = (
    "Cannot reach the Docker daemon ({detail}). Start Docker (`sudo systemctl start docker`, "
    "or `sudo dockerd &`), make sure your user may use it (`sudo usermod -aG docker $USER`, "
    "then log in again), or point DOCKER_HOST at a running daemon."
)


def docker_client():
    """A shared ``docker.DockerClient`` for this process; raises DockerUnavailable."""
    global _client
    with _lock:
        if _client is not None:
            return _client
        try:
            client = docker.from_env(timeout=120, use_ssh_client=False)
            client.ping()
        except DockerException as exc:
            raise DockerUnavailable(DOCKER_HELP.format(detail=_short(exc))) from exc
        except OSError as exc:
            raise DockerUnavailable(DOCKER_HELP.format(detail=_short(exc))) from exc
        _client = client
        return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__
