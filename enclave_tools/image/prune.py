"""Removing the images a changed recipe left behind.

Every recipe change gets a new kernel image tag (:func:`~.recipe.default_image`), and every
new kernel image gets new derived images, so old ones pile up (each a few hundred MB).
:func:`prune_images` removes the tags that no longer serve: kernel images other than the
current recipe's, and derived images built on one of those. The Debian base
(``enclave-tools/base:*``) stays, as the next build reuses it; so does a derived image of
another base (``image build --with PKG --from IMAGE``) while that base exists, and an old
kernel image the user also tagged as their own (only our tag goes). An image a
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
    recipe's, and ``kernel-derived`` tags whose base image is one of those, is gone, or is
    itself a derived image that goes (a chain of ``--from`` builds goes in one prune)."""
    client = client_or_default(client)
    current = default_image()
    images = client.images.list()
    stale: set[str] = set()
    for image in images:
        for tag in image.tags:
            if tag.rpartition(":")[0] == IMAGE_REPOSITORY and tag != current:
                stale.add(tag)
    going = {image.id for image in images if image.tags and set(image.tags) <= stale}
    present = {image.id for image in images}
    changed = True
    while changed:  # until no image goes because its base goes
        changed = False
        for image in images:
            base = (image.labels or {}).get(LABEL_DERIVED_FROM)
            for tag in image.tags:
                if tag in stale or tag.rpartition(":")[0] != DERIVED_REPOSITORY:
                    continue
                if base is None:  # another image tagged as derived (nothing to add): follows its tags
                    others = [t for t in image.tags if t.rpartition(":")[0] != DERIVED_REPOSITORY]
                    gone = bool(others) and set(others) <= stale
                else:
                    gone = base in going or base not in present
                if gone:
                    stale.add(tag)
                    changed = True
            if image.id not in going and image.tags and set(image.tags) <= stale:
                going.add(image.id)  # every tag goes: so does the image, and what was built on it
                changed = True
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
