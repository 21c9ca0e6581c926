"""The interface every source of verified faces offers, and the parser of source specs."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from facepipeline.errors import SourceError
from facepipeline.faces import VerifiedFace


@runtime_checkable
class FaceSource(Protocol):
    @property
    def description(self) -> str:
        """A human description that is safe to log (never a secret)."""
        ...

    def verified_faces(self) -> list[VerifiedFace]:
        """Every verified face with a person, in a stable order."""
        ...


def open_source(spec: str) -> FaceSource:
    """Open a source from its spec: ``folder:DIR`` (a folder per person)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SourceError(f"source must look like 'folder:DIR', got {spec!r}")
    if kind == "folder":
        from facepipeline.sources.folder import FolderSource

        return FolderSource(Path(rest))
    raise SourceError(f"unknown source kind {kind!r} in {spec!r} (known: folder)")
