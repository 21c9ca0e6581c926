"""The interface every source of verified faces offers, the filters it takes, and the spec parser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol, runtime_checkable

from facepipeline.dataset import faces_per_person
from facepipeline.errors import SourceError
from facepipeline.faces import VerifiedFace


@dataclass(frozen=True)
class FaceFilters:
    """Which verified faces to train on (SPEC section 2): all of them by default."""

    event_ids: tuple[str, ...] = ()
    person_ids: tuple[str, ...] = ()
    date_from: date | None = None
    """Only photos of events on or after this day."""
    date_to: date | None = None
    """Only photos of events on or before this day."""
    min_faces_per_person: int = 1
    include_co_occurring: bool = False
    """With ``person_ids``: also take the people who appear on the same photos as those people."""

    @property
    def by_event(self) -> bool:
        return bool(self.event_ids) or self.date_from is not None or self.date_to is not None


@dataclass(frozen=True)
class RejectedFace:
    """A verified row that cannot be trained on as it is (a malformed box, say), and why."""

    face_id: str
    reason: str


@dataclass(frozen=True)
class FaceRead:
    faces: list[VerifiedFace]
    rejected: list[RejectedFace] = field(default_factory=list)
    dropped: list[VerifiedFace] = field(default_factory=list)
    """Faces of people with fewer than ``min_faces_per_person`` faces, left out."""
    added_as_co_occurring: int = 0
    """People added because they appear on photos with the selected people."""

    @property
    def dropped_by_min_faces(self) -> int:
        return len(self.dropped)


@runtime_checkable
class FaceSource(Protocol):
    @property
    def description(self) -> str:
        """A human description that is safe to log (never a secret)."""
        ...

    def read(self, filters: FaceFilters) -> FaceRead:
        """The verified faces with a person that pass the filters, in a stable order."""
        ...


def select_people(faces: Sequence[VerifiedFace], rejected: list[RejectedFace], filters: FaceFilters) -> FaceRead:
    """The person filters every source shares: chosen people (and their company), then the minimum.

    ``faces`` already passed the event filters. With ``include_co_occurring``, the people who share
    a photo with a chosen person are kept too, so the index also learns who they are not.
    """
    chosen = set(filters.person_ids)
    added = 0
    if chosen:
        if filters.include_co_occurring:
            photos = {_photo_key(f) for f in faces if f.person_id in chosen}
            company = {f.person_id for f in faces if _photo_key(f) in photos} - chosen
            added = len(company)
            chosen |= company
        faces = [f for f in faces if f.person_id in chosen]
    counts = faces_per_person(faces)
    kept = [f for f in faces if counts[f.person_id] >= filters.min_faces_per_person]
    dropped = [f for f in faces if counts[f.person_id] < filters.min_faces_per_person]
    return FaceRead(kept, rejected, dropped=dropped, added_as_co_occurring=added)


def connection_string_in(spec: str) -> str | None:
    """The DSN inside a ``postgres:DSN`` or ``postgresql://...`` source spec, else None.

    Callers move it out of the spec (into ``SUPABASE_DB_URL``) so a password never becomes plain
    configuration that a UI or run storage would show.
    """
    if spec.startswith(("postgresql://", "postgres://")):
        return spec
    if spec.startswith("postgres:") and spec != "postgres:":
        return spec.removeprefix("postgres:")
    return None


def _photo_key(face: VerifiedFace) -> str:
    """The photo a face is on: the gallery's photo id (two photos may share a URL), else its ref."""
    return face.photo_id or face.photo_ref


def open_source(
    spec: str,
    *,
    database_url: str | None = None,
    supabase_url: str | None = None,
    service_role_key: str | None = None,
    embedded_home: str | Path | None = None,
    seed_folder: str | Path | None = None,
) -> FaceSource:
    """Open a source from its spec.

    * ``folder:DIR``: a folder per person (or a ``face_boxes.csv``), no database;
    * ``postgres:DSN``, or ``postgres`` with ``database_url``: the gallery over a direct connection;
    * ``supabase``: the gallery over Supabase's REST API (``supabase_url``, ``service_role_key``);
    * ``embedded``: the demo gallery under ``embedded_home``, started (and seeded from
      ``seed_folder``) if it is not running.
    """
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        from facepipeline.sources.folder import FolderSource

        return FolderSource(Path(rest))
    if spec.startswith(("postgresql://", "postgres://")):
        kind, rest = "postgres", spec
    if kind == "postgres":
        from facepipeline.gallery.postgres import PostgresGallery

        dsn = rest or database_url
        if not dsn:
            raise SourceError("source 'postgres' needs a connection string: set SUPABASE_DB_URL or use postgres:DSN")
        return PostgresGallery(dsn)
    if spec == "supabase":
        from facepipeline.gallery.rest import RestGallery

        return RestGallery(supabase_url, service_role_key)
    if spec == "embedded":
        from facepipeline.gallery.embedded import EmbeddedGallery
        from facepipeline.gallery.postgres import PostgresGallery

        return PostgresGallery(EmbeddedGallery(embedded_home, seed_folder).up().dsn)
    raise SourceError(f"unknown source {_safe(spec)!r}: use embedded, postgres:DSN, postgres, supabase or folder:DIR")


def _safe(spec: str) -> str:
    """A spec for an error message: a DSN's password never shows."""
    from facepipeline.gallery.secrets import redact_dsn

    return redact_dsn(spec)
