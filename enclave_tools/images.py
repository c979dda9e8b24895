"""Plots fitted to what a model needs: scaled down to a longest side, never oversized.

A PNG from the sandbox is hostile input: its header is read before anything else, and it
is decoded (with Pillow, when installed: the adapters' ``[images]`` extra) only
when its pixel count is modest. An image that cannot be shown safely is left out and the
model is told why, so that no request is ever rejected for an image.
"""

from __future__ import annotations

import io
import struct

__all__ = ["DEFAULT_IMAGE_MAX_SIDE", "fit_image"]

DEFAULT_IMAGE_MAX_SIDE = 1024
"""Longest side, in pixels, of an image shown to a model (about what vision models read
at full detail; larger images are scaled down by the providers anyway, at the caller's cost)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_SIDE_ANY_PROVIDER = 8000  # Anthropic rejects larger images; OpenAI scales them
_MAX_BYTES_ANY_PROVIDER = 5 * 1024 * 1024  # Anthropic's limit per image
_MAX_PIXELS_TO_DECODE = 40_000_000  # a decoded RGBA image of this size is 160 MB


def png_size(png: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's header, or None if it is not a PNG."""
    if len(png) < 24 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return (width, height) if width and height else None


def fit_image(png: bytes, max_side: int | None) -> tuple[bytes | None, str | None]:
    """``png`` as a model should get it: scaled so its longest side is at most ``max_side``.

    Returns ``(image, None)``, or ``(None, reason)`` when the image cannot be shown: not a
    PNG, unreadable (checked by decoding it when Pillow is installed), too large to decode
    safely, or larger than providers accept. ``max_side=None`` keeps the size.
    """
    size = png_size(png)
    if size is None:
        return None, "not a valid PNG"
    width, height = size
    if width * height > _MAX_PIXELS_TO_DECODE:
        return None, f"{width}x{height} pixels is too large to show"
    try:
        fitted = _decoded_and_scaled(png, max_side)
    except ImportError:  # no Pillow: the image goes as it is, if a provider takes it
        fitted = png
    if fitted is None:
        return None, "the PNG could not be read"
    shown = png_size(fitted) or size
    if max(shown) > _MAX_SIDE_ANY_PROVIDER or len(fitted) > _MAX_BYTES_ANY_PROVIDER:
        return None, f"{width}x{height} pixels, {len(png)} bytes is larger than models accept"
    return fitted, None


def _decoded_and_scaled(png: bytes, max_side: int | None) -> bytes | None:
    """``png`` decoded with Pillow and, if larger, scaled down; None if it cannot be read.

    Raises ImportError when Pillow is not installed.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as image:
            image.load()  # a truncated or corrupt image fails here, not at the provider
            if max_side is None or max(image.size) <= max_side:
                return png
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, format="PNG", optimize=True)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return out.getvalue()
