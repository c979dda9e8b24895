"""Build the kernel image: with a registry, or air-gapped.

The recipe is the Docker build context ``kernel_image/`` (:mod:`.recipe`). Its Dockerfile
starts ``FROM`` a base chosen by build argument and installs pinned packages from a
wheelhouse, with no network during the build. The modules fill in what the build needs,
all on the host:

- :mod:`.base`: ``python:3.12-slim`` if local, a base bootstrapped earlier if local,
  ``python:3.12-slim`` pulled where a registry answers, else :mod:`.bootstrap`: a base
  made from Debian packages (mmdebstrap or debootstrap) and ``docker import``-ed;
- :mod:`.wheelhouse`: ``pip download`` on the host for the base's Python and the daemon's
  architecture, cached under ``~/.cache/enclave-tools/wheels/`` (or a pre-filled one named
  by ``ENCLAVE_WHEELHOUSE``);
- :mod:`.build`: the build itself, from a tar stream of the context plus the wheelhouse.

The default tag carries a hash of the recipe, so a changed recipe gets a new tag and an old
image is never silently reused. Looking up the kernel image never pulls it.
"""

from enclave_tools.image._common import Progress, cache_dir
from enclave_tools.image.base import SLIM_BASE, needs_bootstrap
from enclave_tools.image.bootstrap import BOOTSTRAP_BASE, bootstrap_base, debian_mirror
from enclave_tools.image.build import build_image, ensure_image, list_images
from enclave_tools.image.recipe import IMAGE_REPOSITORY, context_dir, default_image, recipe_hash
from enclave_tools.image.wheelhouse import platform_tags

__all__ = [
    "BOOTSTRAP_BASE",
    "IMAGE_REPOSITORY",
    "SLIM_BASE",
    "Progress",
    "bootstrap_base",
    "build_image",
    "cache_dir",
    "context_dir",
    "debian_mirror",
    "default_image",
    "ensure_image",
    "list_images",
    "needs_bootstrap",
    "platform_tags",
    "recipe_hash",
]
