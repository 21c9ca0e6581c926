"""The gallery database as facepipeline sees it, whatever the transport (Postgres or REST).

A :class:`Gallery` is a :class:`~facepipeline.sources.FaceSource` that can also be written to:
descriptors back into ``photo_faces``, training sessions, config. Both transports implement this
protocol and share the records below, so the pipeline never knows which one it talks to.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from facepipeline.errors import SourceError
from facepipeline.geometry import BBox
from facepipeline.sources.base import FaceSource

if TYPE_CHECKING:
    from facepipeline.gallery.ledger import WriteBackLedger

DESCRIPTOR_DIM = 512
SESSION_STATUSES = ("running", "completed", "failed")
SKIP_REASONS = ("deleted", "unverified", "relabelled", "reboxed", "changed")
"""Why write-back leaves a row alone: gone, no longer verified, another person, another box since
the read, or changed in a way the transport cannot tell apart."""
SESSION_FIELDS = (
    "model_version", "training_mode", "faces_count", "people_count", "context_weight", "min_faces_per_person",
    "metrics", "status",
)


class GalleryError(SourceError):
    """The gallery database answered, but not as expected (a query or write failed)."""


class GalleryUnavailable(GalleryError):
    """The gallery database cannot be reached. The message names where, never a secret."""


class GalleryTimeout(GalleryError):
    """The database is there but a statement ran past the configured statement timeout."""


class WriteBackFailed(GalleryError):
    """Write-back stopped part-way (a refused or timed-out statement); the batches committed before
    stay committed and :attr:`report` counts them, so the message can say how far it got."""

    def __init__(self, message: str, report: WriteBackReport) -> None:
        super().__init__(message)
        self.report = report


class WriteBackInterrupted(WriteBackFailed, GalleryUnavailable):
    """The connection was lost during write-back; what was committed before stays committed."""


def checked_descriptor(face_id: str, values: Any) -> np.ndarray:
    """The descriptor as 512 finite float32 values, or a ValueError naming the face: a vector that is
    not one is never written, whichever row it was meant for."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (DESCRIPTOR_DIM,):
        raise ValueError(f"face {face_id}: descriptor must have {DESCRIPTOR_DIM} values, got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"face {face_id}: descriptor is not finite; nothing is written")
    return vector


def finite_json(value: Any) -> Any:
    """``value`` as plain JSON data in which every non-finite float (NaN, +-inf) is ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON: Postgres' jsonb refuses
    them (the whole statement fails) and other readers choke on them. A metric that could not be
    computed is better stored as null than losing the session row it belongs to. numpy scalars and
    arrays become Python numbers and lists; anything else unknown becomes its ``str``; keys become
    strings as JSON writes them.
    """
    try:  # the usual case, plain and finite already: checked and copied by the C encoder and decoder
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return _finite_json(value)


def _finite_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {_json_key(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [_finite_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _json_key(key: Any) -> str:
    """A key as ``json.dumps`` writes it (``True`` -> "true", ``None`` -> "null", an ``IntEnum`` by
    its number, a ``str`` enum by its text), so that both paths of :func:`finite_json` agree; a key
    JSON cannot write (numpy, tuples) becomes its ``str``."""
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    return str(key)


def json_text(value: Any, **dumps: Any) -> str:
    """Strict JSON text of ``value`` with non-finite floats as null (see :func:`finite_json`)."""
    try:  # the usual case, plain and finite already: written once, by the C encoder
        return json.dumps(value, allow_nan=False, **dumps)
    except (TypeError, ValueError):
        return json.dumps(_finite_json(value), allow_nan=False, **dumps)


def pgvector_text(vector: np.ndarray) -> str:
    """pgvector's text form; float32 values written so they read back bit for bit."""
    return "[" + ",".join(repr(v) for v in vector.tolist()) + "]"


@dataclass(frozen=True)
class FaceLabel:
    """Who is on which photo of which event: the raw material of co-occurrence."""

    face_id: str
    photo_id: str
    event_id: str | None
    person_id: str


SESSION_KEY = "training_session_id"
"""The key of a written row's ``training_context`` naming the session that wrote it: not compared,
so a rerun does not rewrite a row only for its new session."""


def without_session(context: Any) -> Any:
    """jsonb ``context - 'training_session_id'``: what of a context the write-back compares."""
    if isinstance(context, Mapping):
        return {k: v for k, v in context.items() if k != SESSION_KEY}
    if isinstance(context, list):
        return [v for v in context if v != SESSION_KEY]
    return context


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
        object.__setattr__(self, "descriptor", checked_descriptor(self.face_id, self.descriptor))
        if not math.isfinite(self.confidence):
            raise ValueError(f"face {self.face_id}: confidence is not finite; nothing is written")

    def vector_literal(self) -> str:
        return pgvector_text(self.descriptor)


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
    compared: int = 0
    """Rows read back and compared with their update; the others the write-back's ledger vouched for."""
    skipped_ids: list[str] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    """Why rows were skipped, for the transports that can tell (see :data:`SKIP_REASONS`)."""
    skip_reason_of: dict[str, str] = field(default_factory=dict)
    """The reason per skipped face id, where told."""

    def skip(self, face_id: str, reason: str = "changed") -> None:
        """Count one row left alone because the gallery changed it since the read."""
        self.skipped += 1
        self.skipped_ids.append(face_id)
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
        self.skip_reason_of[face_id] = reason

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped rows per reason; rows a transport counted without one are ``changed``."""
        reasons = dict(sorted(self.skip_reasons.items()))
        untold = self.skipped - sum(reasons.values())
        if untold > 0:
            reasons["changed"] = reasons.get("changed", 0) + untold
        return reasons

    @property
    def done(self) -> int:
        return self.written + self.unchanged + self.skipped

    @property
    def left(self) -> int:
        """Rows neither written, found up to date nor skipped: the next run's work."""
        return self.faces - self.done

    def line(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped_by_reason.items())
        return (
            f"write-back: {self.written} rows written, {self.unchanged} unchanged, {self.skipped} skipped "
            f"(changed by the gallery since the read{': ' + reasons if reasons else ''}), of {self.faces}"
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
    to_write: Callable[[Any, Sequence[DescriptorUpdate], WriteBackReport], Sequence[DescriptorUpdate]] | None = None,
) -> WriteBackReport:
    """The write-back loop both transports share: batches, progress, and what a lost gallery means.

    ``connect()`` opens what the batches write through; ``write_batch(connection, batch, report)``
    writes one batch and counts it into ``report``. ``to_write(connection, updates, report)``, when
    given, first sorts out the rows that would not change (counted as unchanged or skipped into
    ``report``) and returns the others, the only ones then sent in batches. A
    :class:`GalleryUnavailable` on the way becomes :class:`WriteBackInterrupted`, any other
    :class:`GalleryError` (a refused statement, a statement timeout) :class:`WriteBackFailed`; both
    carry the counts of what was committed before.
    """
    report = WriteBackReport(faces=len(updates))
    try:
        with connect() as connection:
            if to_write is not None:
                updates = to_write(connection, updates, report)
            for start in range(0, len(updates), batch_size):
                write_batch(connection, updates[start : start + batch_size], report)
                report.batches_committed += 1
                if progress:
                    progress(report)
    except WriteBackFailed:
        raise
    except GalleryError as exc:
        # Lost, refused or timed out: each batch is its own transaction, so what was committed before
        # stays and the message says how much that was; the next run sends only the rest.
        failure = WriteBackInterrupted if isinstance(exc, GalleryUnavailable) else WriteBackFailed
        raise failure(
            f"{exc}; {report.done} of {report.faces} rows were committed before, the rest is left for the next run "
            f"({report.batches_committed} batches committed: {report.written} written, {report.unchanged} unchanged, "
            f"{report.skipped} skipped; {report.left} left)",
            report,
        ) from None
    return report


# -- recognition: new photos, their faces, and the suggestions facepipeline writes -----------------

SUGGESTED_BY = "facepipeline"
"""``training_context.suggested_by`` of the rows recognition writes: how its own rows are told apart."""


@dataclass(frozen=True)
class EventPhotos:
    """An event with photos awaiting recognition (no verified face yet)."""

    event_id: str | None
    name: str | None
    date: str | None
    photos: int
    """Photos of the event without a verified face."""
    photos_fingerprint: str
    """md5 of the pending photos' ids (sorted, comma-joined): changes whenever the set changes, even
    when a photo arrives with an older ``created_at`` than the newest one (a late commit, an import)."""


def photos_fingerprint(photo_ids: Iterable[str]) -> str:
    """:attr:`EventPhotos.photos_fingerprint` of these photo ids (Postgres computes the same in SQL)."""
    return hashlib.md5(",".join(sorted(str(i).lower() for i in photo_ids)).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ExistingFace:
    """A ``photo_faces`` row already on a photo awaiting recognition."""

    face_id: str
    bbox: Mapping[str, Any] | None
    person_id: str | None
    verified: bool
    insightface_bbox: Mapping[str, Any] | None
    context: Mapping[str, Any] | None

    @property
    def ours(self) -> bool:
        """Written by facepipeline's recognition."""
        return isinstance(self.context, Mapping) and self.context.get("suggested_by") == SUGGESTED_BY

    @property
    def edited(self) -> bool:
        """One of ours that a person changed since (another person, or a moved box): never touched again."""
        if not self.ours:
            return False
        written_box = rounded_box(self.insightface_bbox) if self.insightface_bbox else None
        return self.person_id != self.context.get("suggested_person_id") or not _same_box(self.bbox, written_box)


@dataclass(frozen=True)
class PendingPhoto:
    photo_id: str
    event_id: str | None
    url: str
    existing: tuple[ExistingFace, ...] = ()


@dataclass(frozen=True)
class SuggestionRow:
    """One detected face as facepipeline writes it: a new row, or an update of one of its own rows."""

    face_id: str
    photo_id: str
    person_id: str | None
    confidence: float | None
    bbox: Mapping[str, int]
    descriptor: np.ndarray
    det_score: float
    detected_bbox: Mapping[str, float]
    context: Mapping[str, Any]
    replaces: ExistingFace | None = None
    """The row of ours this one updates (it must still be as read), or None for a new row."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "descriptor", checked_descriptor(self.face_id, self.descriptor))
        for value in (self.det_score, self.confidence):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"face {self.face_id}: a score is not finite; nothing is written")

    def vector_literal(self) -> str:
        return pgvector_text(self.descriptor)


@dataclass
class SuggestionReport:
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    """Rows not written: the photo got a verified face, or the row was edited, since the read."""
    skipped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("rows", "inserted", "updated", "unchanged", "skipped")}


@dataclass(frozen=True)
class UnknownFaceRow:
    """An unverified face without a person, with the descriptor facepipeline wrote for it."""

    face_id: str
    photo_id: str
    event_id: str | None
    descriptor: np.ndarray


def rounded_box(box: Mapping[str, Any]) -> dict[str, int]:
    """A detected box in the gallery's own form: whole pixels."""
    return {key: int(round(float(box[key]))) for key in ("x", "y", "width", "height")}


def _same_box(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return all(float(a[key]) == float(b[key]) for key in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return False


@runtime_checkable
class Gallery(FaceSource, Protocol):
    """A source that is the gallery's own database."""

    def ping(self) -> None:
        """Raise :class:`GalleryUnavailable` unless the database answers."""
        ...

    def untrained_face_ids(self) -> list[str]:
        """Verified faces with a person that no retrain has used yet (``training_used`` not true)."""
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
        ledger: WriteBackLedger | None = None,
    ) -> WriteBackReport:
        """Write descriptors back in batches, each one transaction; only rows that changed are touched.

        With a ``ledger`` (facepipeline.gallery.ledger), rows it vouches for are not compared, and
        once the write-back completes it holds what this one left. A gallery that cannot tell a
        row's version (the REST API) compares every row and leaves the ledger alone.
        """
        ...

    def create_session(self, fields: Mapping[str, Any], *, session_id: str | None = None) -> str:
        """Insert a ``face_training_sessions`` row; returns its id.

        With ``session_id`` (a UUID the caller made and recorded first) the call is idempotent: a
        row with that id already there, from an attempt whose answer was lost with the connection,
        is set to ``fields`` instead of a second row being made. So a run has exactly one row.
        """
        ...

    def update_session(self, session_id: str, fields: Mapping[str, Any]) -> None: ...

    def read_config(self) -> dict[str, Any]:
        """``face_recognition_config`` as key -> JSON value."""
        ...

    def write_config(self, key: str, value: Any) -> None:
        """Insert or replace one config row (already validated by the caller)."""
        ...

    def pending_events(self) -> list[EventPhotos]:
        """Events with photos that have no verified face yet (``event_id`` None: photos without an event)."""
        ...

    def pending_photos(self, event_id: str | None) -> list[PendingPhoto]:
        """The event's photos without a verified face, each with the rows already on it."""
        ...

    def write_suggestions(self, rows: Sequence[SuggestionRow], *, batch_size: int = 500) -> SuggestionReport:
        """Insert new suggestion rows and update facepipeline's own unedited ones, batch by batch.

        A row is written only while its photo still has no verified face; an update only while the
        row is still unverified and as it was read (same person, same box). Rerunning with the same
        rows changes nothing.
        """
        ...

    def unknown_faces(self) -> list[UnknownFaceRow]:
        """Unverified faces without a person that have a descriptor (recognition's unknowns)."""
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
