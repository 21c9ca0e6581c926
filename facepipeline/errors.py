"""The errors facepipeline raises on purpose: each one carries a message a user can act on."""


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
