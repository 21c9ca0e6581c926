"""Turn photo bytes into pixels, refusing what is not a sane image before it costs memory."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facepipeline.errors import ImageError

# 100 megapixels: a 12,000 x 8,000 camera photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 100_000_000


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone (no pixel decoding)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image ({_sniff(data)})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from exc


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to a BGR ``uint8`` array (the layout the face models expect), EXIF rotation applied.

    Raises :class:`ImageError` with the reason for empty, non-image, truncated or oversized input.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} pixels (limit {max_pixels:,})")
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image ({_sniff(data)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt image: {exc}") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    return f"{len(data)} bytes starting {data[:8]!r}"
