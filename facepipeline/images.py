"""Turn photo bytes into pixels, refusing what is not a sane image before it costs memory."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facepipeline.errors import ImageError

# 100 megapixels: a 12,000 x 8,000 camera photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 100_000_000
# Below this a photo cannot hold a face the detector can find (and resizing it can fail).
MIN_SIDE = 16

_ORIENTATION = 0x0112  # the EXIF tag that says how to rotate the photo for display
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# Everything Pillow raises on a malformed header or body, beside its own UnidentifiedImageError.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, TypeError, ZeroDivisionError)


def image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header alone (no pixel decoding); refuses what decode would."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    with _explained(data):
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    _check_size(width, height, max_pixels)
    return width, height


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to a BGR ``uint8`` array (the layout the face models expect), EXIF rotation applied.

    Raises :class:`ImageError` with the reason for empty, non-image, truncated, oversized or
    degenerate input. The size is checked from the header, before any pixel is decoded.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    with _explained(data):
        img = Image.open(io.BytesIO(data))
        _check_size(*img.size, max_pixels)
        img.load()  # Pillow raises on a truncated file (OpenCV would return a half-grey image)
        if img.getexif().get(_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode in _WIDE_GREY_MODES:
            img = _to_8_bit_grey(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


def _to_8_bit_grey(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by scaling (Pillow's convert would clip them to white)."""
    samples = np.asarray(img, dtype=np.float32)
    if samples.size and samples.max() > 255:
        samples = samples / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(samples), 0, 255).astype(np.uint8), "L")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} pixels (limit {max_pixels:,})")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} pixels (at least {MIN_SIDE} per side)")


class _explained:
    """Turn whatever Pillow raises into an ImageError that says what is wrong with the bytes.

    Our own pixel limit, checked from the header, is the guard against decompression bombs;
    Pillow's own check (a warning above ~89 megapixels, an error above ~179) stays as it is.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, ImageError):
            return False
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(f"not an image ({_sniff(self.data)})") from exc
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageError(f"image too large: {exc}") from exc
        if isinstance(exc, _PILLOW_ERRORS):
            raise ImageError(f"corrupt image: {exc}") from exc
        return False


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    return f"{len(data)} bytes starting {data[:8]!r}"
