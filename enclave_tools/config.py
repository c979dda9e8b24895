"""SandboxConfig: what a sandbox runs, how it is limited, how long it may take."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SandboxConfig", "seconds_in", "size_in_bytes"]

_SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$", re.IGNORECASE)
_MAX_LIMIT_S = 30 * 86400
_MAX_WAIT_S = 86400.0
"""The longest any one wait may be (a day; also what run() accepts): no inf, no overflow."""
DEFAULT_LIFETIME_S = 86400.0
"""The absolute lifetime of a kept-alive sandbox when none is given."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def size_in_bytes(value: str) -> int:
    """Bytes in a size such as ``"512m"`` (b, k, m, g are powers of 1024)."""
    value = _check_size(value)
    scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}.get(value[-1])
    return int(float(value[:-1]) * scale) if scale else int(float(value))


def seconds_in(value: str | float | int) -> float:
    """Seconds in a duration: a number of seconds, or ``"20s"``, ``"30m"``, ``"2h"``, ``"1d"``
    (at most 30 days)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '30m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"{value!r} is not a duration such as '20s', '30m', '2h' or '1d'")
        seconds = (
            float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
        )
    if not 0 < seconds <= _MAX_LIMIT_S:
        raise ValueError(f"a duration must be more than 0 and at most 30 days, not {value!r}")
    return seconds


def _check_size(value: str) -> str:
    if not _SIZE.match(value):
        raise ValueError(f"{value!r} is not a size such as '512m' or '2g'")
    return value.lower()


class SandboxConfig(BaseModel):
    """Settings of one sandbox. Every field has a safe default.

    Pass a config, or keyword overrides, to :class:`~enclave_tools.Sandbox`::

        Sandbox(memory="4g", network="bridge", timeout=120)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    image: str | None = Field(
        None,
        description="Kernel image (name:tag or id). None: the project's own image for this "
        "version, built on first use.",
    )
    build_image: bool = Field(True, description="Build the default image on first use if it is missing.")
    memory: str = Field("2g", description="Memory limit of the container; swap is off.")
    cpus: float = Field(1.0, gt=0, le=64, description="CPUs the container may use.")
    pids_limit: int = Field(256, ge=16, description="Processes and threads in the container.")
    network: str = Field(
        "none",
        description=(
            "'none' (default): no network at all, the kernel reaches nothing. "
            "'bridge' (or a Docker network name): egress allowed, e.g. for pip install."
        ),
    )
    transport: Literal["auto", "unix", "tcp"] = Field(
        "auto",
        description=(
            "How the host reaches the gateway: a unix socket in a private directory, or a "
            "TCP port published on 127.0.0.1. 'auto': the unix socket on a local Linux "
            "engine (whatever the network), otherwise TCP."
        ),
    )
    timeout: float = Field(60.0, gt=0, le=_MAX_WAIT_S, description="Default seconds a run may take.")
    startup_timeout: float = Field(60.0, gt=0, le=_MAX_WAIT_S, description="Seconds to wait for the gateway.")
    interrupt_grace: float = Field(
        3.0, gt=0, le=_MAX_WAIT_S, description="Seconds a timed-out run gets to stop after an interrupt."
    )
    output_limit: int = Field(8000, ge=200, description="Characters of Execution.text, cut head and tail.")
    capture_limit: int = Field(
        4_000_000,
        ge=10_000,
        description="Bytes of stdout/stderr kept per run on the host; the rest is counted.",
    )
    result_limit: int = Field(
        64 * 2**20,
        ge=2**20,
        description="Bytes of rich outputs (images, HTML, ...) kept per run on the host; "
        "outputs past it are dropped and counted.",
    )
    file_limit: str = Field(
        "512m", description="Largest file read_file() or download() takes from the sandbox."
    )
    file_timeout: float = Field(
        120.0, gt=0, le=_MAX_WAIT_S, description="Seconds one file transfer (read, write, copy) may take."
    )
    workdir: str = Field("/workspace", description="Working directory of the kernel.")
    workspace_size: str = Field("1g", description="Size of the writable workspace.")
    tmp_size: str = Field("256m", description="Size of /tmp.")
    shm_size: str = Field("64m", description="Size of /dev/shm.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the kernel.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the container.")
    runtime: str | None = Field(
        None,
        description="OCI runtime of the container; None: Docker's default (runc). 'runsc' runs "
        "the sandbox under gVisor, once registered with Docker (deploy/gvisor/register-runsc.sh: "
        "the gateway's socket needs --host-uds=all). Under gVisor the CPU limit is set when "
        "the container is created (runsc cannot update it), so the kernel boots under it.",
    )
    packages: list[str] = Field(
        default_factory=list,
        description="Packages to add to the image, e.g. ['scikit-learn', 'polars>=1']: the "
        "sandbox runs a derived image (built once, offline, from wheels the host fetches; "
        "the image's own packages keep their versions). Docker backend only.",
    )
    requirements: str | None = Field(
        None, description="A requirements file whose packages are added like `packages`."
    )
    install_policy: Literal["none", "any"] | list[str] = Field(
        "none",
        description="What `%pip install X` / `!pip install X` in a cell may install while the "
        "sandbox runs (the host fetches the wheels; the sandbox stays offline): 'none' "
        "(refused, in words a model acts on), a list of allowed names (their dependencies "
        "come along), or 'any'. Docker backend only.",
    )
    keep_alive: float | None = Field(
        None,
        description="Seconds (or a duration such as '30m') the sandbox outlives its last use, "
        "whatever happens to the process that made it: it can be detached and connected "
        "to from another process (Sandbox.connect). None: it ends with its owner.",
    )
    lifetime: float | None = Field(
        None,
        description="With keep_alive: the most seconds (or a duration) the sandbox lives, "
        "used or not (default one day).",
    )

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        from enclave_tools.packages import check_requirement

        return [check_requirement(item) for item in value]

    @field_validator("install_policy")
    @classmethod
    def _install_policy(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            from enclave_tools.packages import check_requirement, requirement_name

            return [requirement_name(check_requirement(name)) for name in value]
        return value

    @field_validator("keep_alive", "lifetime", mode="before")
    @classmethod
    def _durations(cls, value: object) -> float | None:
        return None if value is None else seconds_in(value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _lifetime_needs_keep_alive(self) -> SandboxConfig:
        if self.lifetime is not None and self.keep_alive is None:
            raise ValueError(
                "lifetime applies only to a sandbox made with keep_alive (e.g. keep_alive='30m', "
                "lifetime='8h'); a sandbox without keep_alive ends with its owner (close())"
            )
        return self

    @property
    def lifetime_limit(self) -> float | None:
        """The absolute lifetime of a kept-alive sandbox (None without keep_alive)."""
        if self.keep_alive is None:
            return None
        return self.lifetime if self.lifetime is not None else DEFAULT_LIFETIME_S

    @field_validator("memory", "workspace_size", "tmp_size", "shm_size", "file_limit")
    @classmethod
    def _sizes(cls, value: str) -> str:
        return _check_size(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if "\0" in val:
                raise ValueError(f"the value of {name} contains a NUL byte")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        return value

    @property
    def egress(self) -> bool:
        """Whether code in the sandbox may open network connections."""
        return self.network != "none"
