"""Derived images: the kernel image plus more packages, built offline and cached.

``FROM`` the kernel image, with the wheels :func:`~enclave_tools.packages.fetch_wheels`
fetched on the host (resolved against the image's lock, so nothing the image has changes)
and no network inside the build. The tag is a hash of what went in (the kernel image's id
and the requirements), so the same request reuses the image and a new kernel image gets a
new one. The new packages go into the venv's site-packages in one layer, and the image's
lock (``/opt/enclave/requirements.txt``) gains them under ``# Added``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import re
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import IO

from enclave_tools.config import SandboxConfig
from enclave_tools.errors import ImageBuildFailed
from enclave_tools.image._common import (
    DockerClient,
    Progress,
    client_or_default,
    docker_arch,
    find_image,
    reporter,
)
from enclave_tools.image.base import _run_once
from enclave_tools.image.build import _docker_build, cache_lock, ensure_image
from enclave_tools.packages import (
    ImageFacts,
    PackageError,
    check_requirement,
    fetch_wheels,
    read_requirements_file,
)

__all__ = [
    "DERIVED_REPOSITORY",
    "LABEL_DERIVED_FROM",
    "LABEL_PACKAGES",
    "derived_tag",
    "ensure_derived",
    "ensure_sandbox_image",
    "image_facts",
]

DERIVED_REPOSITORY = "enclave-tools/kernel-derived"
LABEL_DERIVED_FROM = "org.enclave-tools.derived-from"
LABEL_PACKAGES = "org.enclave-tools.packages"

_DOCKERFILE = """\
# A derived enclave-tools kernel image: the kernel image plus the wheels in wheels/.
ARG BASE_IMAGE
# As the image's own (unprivileged) user: COPY makes the files root's in the end.
FROM ${BASE_IMAGE} AS packages
COPY . /tmp/context/
RUN set -e; cd /tmp/context; venv=/opt/enclave/venv \\
 && pip=$(ls /usr/share/python-wheels/pip-*.whl /usr/local/lib/python3*/ensurepip/_bundled/pip-*.whl \\
      /usr/lib/python3*/ensurepip/_bundled/pip-*.whl 2>/dev/null | head -n 1) && test -n "$pip" \\
 && site=$($venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \\
 && mkdir -p /tmp/overlay$site /tmp/overlay/opt/enclave \\
 && $venv/bin/python $pip/pip install --no-index --no-deps --no-compile --no-cache-dir \\
      --disable-pip-version-check -q --target /tmp/overlay$site wheels/*.whl \\
 && rm -rf /tmp/overlay$site/bin \\
 && $venv/bin/python -m compileall -q -j 0 -d $site /tmp/overlay$site \\
 && cp requirements.txt /tmp/overlay/opt/enclave/requirements.txt \\
# Site-packages changed after the image's bytecode bundles were written: they check each
# module against its source from now on (kernel_image/enclave_bundle.py).
 && touch /tmp/overlay/opt/enclave/site-packages-changed

FROM ${BASE_IMAGE}
COPY --from=packages /tmp/overlay/ /
LABEL {labels}
"""

_facts_cache: dict[str, ImageFacts] = {}
_facts_lock = threading.Lock()
_PROBE = (
    "import sys,platform;print('%d.%d.%d'%sys.version_info[:3]);print(*platform.libc_ver());"
    "print(open('/opt/enclave/requirements.txt').read())"
)


def image_facts(client: DockerClient | None, image: str) -> ImageFacts:
    """The Python, platform and lock of a local kernel image (by running it once, offline;
    kept per image id)."""
    client = client_or_default(client)
    found = find_image(client, image)
    if found is None:
        raise ImageBuildFailed(f"The image {image} is not in the local Docker image store.")
    with _facts_lock:
        cached = _facts_cache.get(found.id)
    if cached is not None:
        return cached
    output = _run_once(client, found.id, ["python3", "-c", _PROBE])
    version, libc, lock = (output.split("\n", 2) + ["", ""])[:3]
    if not re.fullmatch(r"\d+\.\d+\.\d+", version.strip()):
        raise ImageBuildFailed(f"The image {image} has no usable python3.", log=output[:2000])
    parts = libc.split()
    glibc = None
    if len(parts) == 2 and parts[0] == "glibc" and re.fullmatch(r"\d+\.\d+", parts[1]):
        glibc = (int(parts[1].split(".")[0]), int(parts[1].split(".")[1]))
    facts = ImageFacts(python=version.strip(), arch=docker_arch(client), glibc=glibc, lock=lock)
    with _facts_lock:
        _facts_cache[found.id] = facts
    return facts


def derived_tag(base_id: str, requirements: Sequence[str]) -> str:
    """``enclave-tools/kernel-derived:<12 hex>`` of the base image's id and the requirements."""
    key = json.dumps({"base": base_id, "requirements": sorted(requirements)}).encode()
    return f"{DERIVED_REPOSITORY}:{hashlib.sha256(key).hexdigest()[:12]}"


def ensure_derived(
    client: DockerClient | None,
    base: str,
    requirements: Sequence[str],
    progress: Progress | None = None,
) -> str:
    """The id of ``base`` plus ``requirements``, built now unless it is cached.

    Raises ImageBuildFailed (naming the package) when a requirement cannot be resolved
    against the image's lock.
    """
    client = client_or_default(client)
    report = reporter(progress)
    requirements = [check_requirement(r) for r in requirements]
    found = find_image(client, base)
    if found is None:
        raise ImageBuildFailed(f"The base image {base} of the derived image is not local.")
    tag = derived_tag(str(found.id), requirements)
    image = find_image(client, tag)
    if image is not None:
        return str(image.id)
    with cache_lock("derived", "a derived image", report):  # never behind a kernel build
        image = find_image(client, tag)
        if image is not None:
            return str(image.id)
        report(f"derived image {tag}: {base} plus {', '.join(requirements)}")
        facts = image_facts(client, str(found.id))
        try:
            fetched = fetch_wheels(requirements, facts, report)
        except PackageError as exc:
            raise ImageBuildFailed(f"Cannot build the image with {', '.join(requirements)}: {exc}") from exc
        # Requirements hold no quotes or backslashes (check_requirement): safe in a LABEL.
        labels = {LABEL_DERIVED_FROM: str(found.id), LABEL_PACKAGES: ", ".join(requirements)}
        if not fetched.wheels:
            report(f"every package is already in {base}; tagging it as {tag}")
            client.api.tag(found.id, *tag.rsplit(":", 1))
            return str(found.id)
        added = "".join(f"{w.name.split('-')[0]}=={w.name.split('-')[1]}\n" for w in fetched.wheels)
        lock = facts.lock.rstrip("\n") + f"\n\n# Added for: {', '.join(requirements)}\n{added}"
        with _context(lock, fetched.wheels, labels) as context:
            image_id = _docker_build(client, context, tag, str(found.id), {}, report)
        report(f"built {tag} with {', '.join(requirements)}")
        return image_id


@contextlib.contextmanager
def _context(lock: str, wheels: Sequence[pathlib.Path], labels: dict[str, str]) -> Iterator[IO[bytes]]:
    """The derived build's context as a rewound temporary tar: Dockerfile, lock, wheels/."""
    with tempfile.TemporaryFile() as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            dockerfile = _DOCKERFILE.replace("{labels}", " ".join(f'{k}="{v}"' for k, v in labels.items()))
            for name, text in (("Dockerfile", dockerfile), ("requirements.txt", lock)):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheels/{wheel.name}")
        handle.seek(0)
        yield handle


def config_requirements(config: SandboxConfig) -> list[str]:
    """The requirements a config asks to add to its image: ``packages``, then the file's."""
    found = list(config.packages)
    if config.requirements:
        found += read_requirements_file(config.requirements)
    return found


def ensure_sandbox_image(
    client: DockerClient | None, config: SandboxConfig, progress: Progress | None = None
) -> str:
    """The id of the image a sandbox of ``config`` runs: the kernel image, or the derived
    one when ``packages`` or ``requirements`` ask for more."""
    image_id = ensure_image(client, config.image, build=config.build_image, progress=progress)
    requirements = config_requirements(config)
    if not requirements:
        return image_id
    return ensure_derived(client, image_id, requirements, progress)
