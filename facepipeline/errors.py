"""The errors facepipeline raises on purpose: each one carries a message a user can act on."""

import reprlib
from typing import Any


class FacePipelineError(Exception):
    """Base class: an expected failure with a human-readable message (no traceback needed)."""


class SourceError(FacePipelineError):
    """The source of verified faces cannot be read (missing folder, unreachable database, ...)."""


class ModelPackError(FacePipelineError):
    """A model pack is missing, incomplete or not what the caller expected."""


class ImageError(FacePipelineError):
    """Bytes that cannot be turned into a usable image (corrupt, not an image, too large)."""


class PhotoFetchError(FacePipelineError):
    """A photo could not be fetched (HTTP error, timeout, too large, refused scheme)."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 40


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error message: short, one line, and safe for any value.

    ``repr`` of a 5,000-digit int raises (Python's int-to-string limit) and a deeply nested value
    recurses, and a message must not be a megabyte: huge ints are described by their size, the
    rest abbreviated (``reprlib``: long strings and containers lose their middle) and cut at ``limit``.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
