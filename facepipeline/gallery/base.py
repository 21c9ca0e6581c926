"""The gallery database as facepipeline sees it, whatever the transport (Postgres or REST).

A :class:`Gallery` is a :class:`~facepipeline.sources.FaceSource` that can also be written to:
descriptors back into ``photo_faces``, training sessions, config. Both transports implement this
protocol and share the records below, so the pipeline never knows which one it talks to.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from facepipeline.errors import SourceError
from facepipeline.geometry import BBox
from facepipeline.sources.base import FaceSource

DESCRIPTOR_DIM = 512
SESSION_STATUSES = ("running", "completed", "failed")
SESSION_FIELDS = (
    "model_version", "training_mode", "faces_count", "people_count", "context_weight", "min_faces_per_person",
    "metrics", "status",
)


class GalleryError(SourceError):
    """The gallery database answered, but not as expected (a query or write failed)."""


class GalleryUnavailable(GalleryError):
    """The gallery database cannot be reached. The message names where, never a secret."""


class WriteBackInterrupted(GalleryUnavailable):
    """The connection was lost during write-back; what was committed before stays committed."""

    def __init__(self, message: str, report: WriteBackReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class FaceLabel:
    """Who is on which photo of which event: the raw material of co-occurrence."""

    face_id: str
    photo_id: str
    event_id: str | None
    person_id: str


@dataclass(frozen=True)
class DescriptorUpdate:
    """What facepipeline writes back for one verified face, and what the row must still be."""

    face_id: str
    person_id: str
    """The person the face had when it was read: a row relabelled since is not written."""
    bbox: BBox
    """The box the face had when it was read: a row whose box changed since is not written."""
    descriptor: np.ndarray
    confidence: float
    detected_bbox: BBox
    context: Mapping[str, Any]

    def __post_init__(self) -> None:
        vector = np.asarray(self.descriptor, dtype=np.float32)
        if vector.shape != (DESCRIPTOR_DIM,):
            raise ValueError(f"face {self.face_id}: descriptor must have {DESCRIPTOR_DIM} values, got shape {vector.shape}")
        if not np.isfinite(vector).all() or not math.isfinite(self.confidence):
            raise ValueError(f"face {self.face_id}: descriptor or confidence is not finite; nothing is written")
        object.__setattr__(self, "descriptor", vector)

    def vector_literal(self) -> str:
        """pgvector's text form; float32 values written so they read back bit for bit."""
        return "[" + ",".join(repr(v) for v in self.descriptor.tolist()) + "]"


@dataclass
class WriteBackReport:
    faces: int = 0
    """Updates offered."""
    written: int = 0
    """Rows changed."""
    unchanged: int = 0
    """Rows that already held exactly these values (a rerun)."""
    skipped: int = 0
    """Rows no longer verified, relabelled, re-boxed or deleted since the read: left alone."""
    batches_committed: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.written + self.unchanged + self.skipped

    def line(self) -> str:
        return (
            f"write-back: {self.written} rows written, {self.unchanged} unchanged, {self.skipped} skipped "
            f"(changed by the gallery since the read), of {self.faces}"
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "faces": self.faces, "written": self.written, "unchanged": self.unchanged, "skipped": self.skipped,
            "batches_committed": self.batches_committed,
        }


def write_in_batches(
    updates: Sequence[DescriptorUpdate],
    *,
    batch_size: int,
    progress: Callable[[WriteBackReport], None] | None,
    connect: Callable[[], AbstractContextManager[Any]],
    write_batch: Callable[[Any, Sequence[DescriptorUpdate], WriteBackReport], None],
) -> WriteBackReport:
    """The write-back loop both transports share: batches, progress, and what a lost gallery means.

    ``connect()`` opens what the batches write through; ``write_batch(connection, batch, report)``
    writes one batch and counts it into ``report``. A :class:`GalleryUnavailable` on the way becomes
    :class:`WriteBackInterrupted`, carrying the counts of what was committed before.
    """
    report = WriteBackReport(faces=len(updates))
    try:
        with connect() as connection:
            for start in range(0, len(updates), batch_size):
                write_batch(connection, updates[start : start + batch_size], report)
                report.batches_committed += 1
                if progress:
                    progress(report)
    except GalleryUnavailable as exc:
        raise WriteBackInterrupted(
            f"{exc}; {report.done} of {report.faces} rows were committed before, the rest is left for the next run",
            report,
        ) from None
    return report


@runtime_checkable
class Gallery(FaceSource, Protocol):
    """A source that is the gallery's own database."""

    def ping(self) -> None:
        """Raise :class:`GalleryUnavailable` unless the database answers."""
        ...

    def face_labels(self) -> list[FaceLabel]:
        """Every verified face with a person: who is on which photo of which event."""
        ...

    def write_descriptors(
        self,
        updates: Sequence[DescriptorUpdate],
        *,
        batch_size: int = 500,
        progress: Callable[[WriteBackReport], None] | None = None,
    ) -> WriteBackReport:
        """Write descriptors back in batches, each one transaction; only rows that changed are touched."""
        ...

    def create_session(self, fields: Mapping[str, Any]) -> str:
        """Insert a ``face_training_sessions`` row; returns its id."""
        ...

    def update_session(self, session_id: str, fields: Mapping[str, Any]) -> None: ...

    def read_config(self) -> dict[str, Any]:
        """``face_recognition_config`` as key -> JSON value."""
        ...

    def write_config(self, key: str, value: Any) -> None:
        """Insert or replace one config row (already validated by the caller)."""
        ...


def session_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(SESSION_FIELDS)
    if unknown:
        raise ValueError(f"not columns of face_training_sessions: {', '.join(sorted(unknown))}")
    if "status" in fields and fields["status"] not in SESSION_STATUSES:
        raise ValueError(f"session status must be one of {SESSION_STATUSES}, got {fields['status']!r}")
    return dict(fields)


@dataclass(frozen=True)
class CoOccurrence:
    """Which people appear together: on the same photo, and at the same event."""

    photo_people: dict[str, frozenset[str]]
    event_people: dict[str, frozenset[str]]

    @classmethod
    def from_labels(cls, labels: Sequence[FaceLabel]) -> CoOccurrence:
        photos: dict[str, set[str]] = defaultdict(set)
        events: dict[str, set[str]] = defaultdict(set)
        for label in labels:
            photos[label.photo_id].add(label.person_id)
            if label.event_id:
                events[label.event_id].add(label.person_id)
        return cls({k: frozenset(v) for k, v in photos.items()}, {k: frozenset(v) for k, v in events.items()})

    def on_same_photo(self, photo_id: str | None, person_id: str) -> list[str]:
        """The other people on this photo, sorted."""
        return sorted(self.photo_people.get(photo_id or "", frozenset()) - {person_id})

    def pairs(self) -> list[tuple[str, str, int, int]]:
        """``(person_a, person_b, photos_together, events_together)`` for every pair seen together."""
        counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for slot, groups in ((0, self.photo_people), (1, self.event_people)):
            for people in groups.values():
                ordered = sorted(people)
                for i, a in enumerate(ordered):
                    for b in ordered[i + 1 :]:
                        counts[(a, b)][slot] += 1
        return sorted((a, b, n[0], n[1]) for (a, b), n in counts.items())
