"""Removing the images a changed recipe left behind.

Every recipe change gets a new kernel image tag (:func:`~.recipe.default_image`), and every
new kernel image gets new derived images, so old ones pile up (each a few hundred MB).
:func:`prune_images` removes the tags that no longer serve: kernel images other than the
current recipe's, and derived images built on one of those. The Debian base
(``enclave-tools/base:*``) stays, as the next build reuses it; so does a derived image of
another base (``image build --with PKG --from IMAGE``) while that base exists. An image a
container still uses (even a stopped one) is kept: Docker refuses to remove it, and we never
force.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import docker.errors

from enclave_tools.image._common import DockerClient, client_or_default
from enclave_tools.image.derived import DERIVED_REPOSITORY, LABEL_DERIVED_FROM
from enclave_tools.image.recipe import IMAGE_REPOSITORY, default_image

__all__ = ["Pruned", "prune_images", "stale_tags"]


@dataclass
class Pruned:
    """What :func:`prune_images` did: tags removed, and tags kept because a container uses them."""

    removed: list[str] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)


def stale_tags(client: DockerClient | None = None) -> list[str]:
    """The tags that no longer serve: ``enclave-tools/kernel`` tags other than the current
    recipe's, and ``kernel-derived`` tags whose base image is one of those or is gone."""
    client = client_or_default(client)
    current = default_image()
    images = client.images.list()
    stale_kernels: set[str] = set()
    stale = []
    for image in images:
        for tag in image.tags:
            if tag.rpartition(":")[0] == IMAGE_REPOSITORY and tag != current:
                stale.append(tag)
                stale_kernels.add(image.id)
    for image in images:  # an image with the current tag too is not stale
        if current in image.tags:
            stale_kernels.discard(image.id)
    present = {image.id for image in images}
    for image in images:
        base = (image.labels or {}).get(LABEL_DERIVED_FROM)
        for tag in image.tags:
            if tag.rpartition(":")[0] != DERIVED_REPOSITORY:
                continue
            if base is None:  # a kernel image tagged as derived (nothing to add): follows its kernel
                gone = image.id in stale_kernels
            else:
                gone = base in stale_kernels or base not in present
            if gone:
                stale.append(tag)
    return sorted(stale)


def prune_images(
    client: DockerClient | None = None,
    *,
    dry_run: bool = False,
    on_removed: Callable[[str], None] | None = None,
) -> Pruned:
    """Remove the :func:`stale_tags` (untag; an image goes when its last tag does). With
    ``dry_run`` nothing is removed and ``removed`` lists what would be."""
    client = client_or_default(client)
    pruned = Pruned()
    for tag in stale_tags(client):
        if dry_run:
            pruned.removed.append(tag)
            continue
        try:
            client.images.remove(tag, noprune=False)
        except docker.errors.NotFound:
            continue  # removed meanwhile
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # a container uses it
                pruned.in_use.append(tag)
                continue
            raise
        pruned.removed.append(tag)
        if on_removed is not None:
            on_removed(tag)
    return pruned
