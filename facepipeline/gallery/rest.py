"""The gallery over Supabase's REST API (PostgREST, through supabase-py): ``SUPABASE_URL`` plus
``SUPABASE_SERVICE_ROLE_KEY``, for when no direct Postgres connection is at hand.

It behaves as :mod:`facepipeline.gallery.postgres` does, with the limits of PostgREST:

* Reads are keyset-paginated (``order=id.asc``, ``id=gt.<last id>``, ``limit=page_size``) until a
  short page, so ``page_size`` must not exceed the server's ``max-rows`` (Supabase: 1000). There is
  no snapshot across pages, as the Postgres transport's single transaction has.
* PostgREST cannot update many rows with a different value each, conditionally, in one statement.
  Write-back therefore reads each batch's rows, decides in Python exactly as the Postgres
  transport's SQL does (eligible, changed), and sends one guarded PATCH per changed row
  (``id``, ``verified``, ``person_id`` and ``bbox`` containment in the filter). Read, compare and
  write are not one transaction, but the guard means a row changed in between is not written, and
  a PATCH that matches nothing counts as skipped. Each PATCH is its own transaction.
* PostgREST cannot group or say "no row exists": recognition's reads (pending events and photos)
  fetch the rows and group and filter them in Python, as the Postgres transport's SQL does.
  Suggestions are written per batch as one ignore-duplicates insert plus one guarded PATCH per
  changed row of facepipeline's own; whether each photo still has no verified face is read just
  before, not in the same transaction as the write (Postgres checks it inside the statement).

Errors name the host, never the key: every error text passes through :func:`redact`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from postgrest import APIError
from postgrest.types import ReturnMethod
from supabase import ClientOptions, SupabaseException, create_client

from facepipeline.faces import VerifiedFace
from facepipeline.gallery.base import (
    SUGGESTED_BY,
    DescriptorUpdate,
    EventPhotos,
    ExistingFace,
    FaceLabel,
    GalleryError,
    GalleryUnavailable,
    PendingPhoto,
    SuggestionReport,
    SuggestionRow,
    UnknownFaceRow,
    WriteBackReport,
    finite_json,
    photos_fingerprint,
    session_fields,
    without_session,
    write_in_batches,
)
from facepipeline.gallery.postgres import exact_json
from facepipeline.gallery.secrets import redact
from facepipeline.geometry import BBox, BBoxError
from facepipeline.sources.base import FaceFilters, FaceRead, RejectedFace, select_people

if TYPE_CHECKING:
    from facepipeline.gallery.ledger import WriteBackLedger

_PEOPLE = "people!inner(real_name,telegram_name,telegram_nickname)"
_CURRENT = (
    "id,verified,person_id,bbox,insightface_descriptor,insightface_confidence,insightface_bbox,"
    "training_used,training_context"
)
# The rows already on a photo, as recognition reads them (postgres.py's ``_PENDING_PHOTOS``).
_EXISTING = "photo_faces(id,bbox,person_id,verified,insightface_bbox,training_context)"
# What an update of one of facepipeline's own suggestion rows compares and writes.
_SUGGESTION_CURRENT = (
    "id,verified,person_id,bbox,confidence,insightface_descriptor,insightface_confidence,insightface_bbox,"
    "training_context"
)
# ids per ``id=in.(...)`` request: 100 UUIDs keep the URL near 4 KB, under gateways' URL limits.
_IDS_PER_REQUEST = 100
# PostgREST's own "cannot reach the database" codes, and gateway statuses with a non-JSON body.
_UNAVAILABLE = {"PGRST000", "PGRST001", "PGRST002", "502", "503", "504", "520", "521", "522", "523", "524"}


class RestGallery:
    """A :class:`~facepipeline.gallery.base.Gallery` over Supabase's REST API; ``url`` and
    ``service_role_key`` default to ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``."""

    def __init__(
        self,
        url: str | None = None,
        service_role_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        page_size: int = 1000,
    ) -> None:
        url = url or os.environ.get("SUPABASE_URL")
        key = service_role_key or os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
        missing = [name for name, value in (("SUPABASE_URL", url), ("SUPABASE_SERVICE_ROLE_KEY", key)) if not value]
        if missing:
            raise GalleryError(
                f"the Supabase REST API needs {' and '.join(missing)} (the project URL and its service role key)"
            )
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self._key = key = key.strip()  # a key read from a file often ends in a newline
        self.where = _host_port(url)
        if self.where is None:
            raise GalleryError(f"SUPABASE_URL must be an http(s) URL, got {self._clean(url)!r}")
        self.page_size = page_size
        # Redirects are not followed: httpx would carry the ``apikey`` header to wherever they point.
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
        options = ClientOptions(
            httpx_client=self._http,
            # No silent retries (with back-off) of GETs: an unreachable gallery fails fast, as with Postgres.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            self._client = create_client(url, key, options)
        except SupabaseException as exc:
            raise GalleryError(f"cannot set up the Supabase client for {self.where}: {self._clean(exc.message)}") from None

    @property
    def description(self) -> str:
        return f"supabase://{self.where}"

    def __repr__(self) -> str:
        return f"RestGallery({self.description!r})"

    def close(self) -> None:
        self._http.close()

    # -- requests ------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        return redact(text, [self._key])

    def _table(self, name: str):
        return self._client.table(name)

    def _rows(self, query) -> list[dict[str, Any]]:
        """Run one request; transport and PostgREST errors become gallery errors, without the key."""
        try:
            data = query.execute().data
        except httpx.TransportError as exc:
            reason = str(exc).strip() or type(exc).__name__
            raise GalleryUnavailable(f"cannot reach the gallery's REST API at {self.where}: {self._clean(reason)}") from None
        except APIError as exc:
            text = self._clean(_api_error_text(exc))
            if str(exc.code) in _UNAVAILABLE:
                raise GalleryUnavailable(f"the gallery's REST API at {self.where} cannot serve requests: {text}") from None
            raise GalleryError(f"the gallery's REST API at {self.where} refused a request: {text}") from None
        if not isinstance(data, list):
            text = self._clean(str(data)[:200])
            raise GalleryError(f"the gallery's REST API at {self.where} answered something other than rows: {text}")
        return data

    def _pages(self, build: Callable[[], Any]) -> Iterator[dict[str, Any]]:
        """Every row of a query, ``page_size`` at a time, in ``id`` order (keyset pagination)."""
        last = None
        while True:
            query = build()
            if last is not None:
                query = query.gt("id", last)
            rows = self._rows(query.order("id").limit(self.page_size))
            yield from rows
            if len(rows) < self.page_size:
                return
            last = rows[-1]["id"]

    def ping(self) -> None:
        self._rows(self._table("face_recognition_config").select("id").limit(1))

    # -- reading -------------------------------------------------------------------------------

    def read(self, filters: FaceFilters) -> FaceRead:
        dated = filters.date_from is not None or filters.date_to is not None
        # events must be an inner join for a date filter to drop faces, as ``e.date >= ...`` does in SQL.
        events = "events!inner" if dated else "events"
        columns = f"id,person_id,bbox,photos!inner(id,url,event_id,{events}(id,name,date)),{_PEOPLE}"

        def build():
            query = self._table("photo_faces").select(columns).eq("verified", True).not_.is_("person_id", None)
            if filters.event_ids:
                query = query.in_("photos.event_id", filters.event_ids)
            if filters.date_from is not None:
                query = query.gte("photos.events.date", filters.date_from.isoformat())
            if filters.date_to is not None:
                query = query.lte("photos.events.date", filters.date_to.isoformat())
            # With co-occurring people the person filter runs after the read, on the photos.
            if filters.person_ids and not filters.include_co_occurring:
                query = query.in_("person_id", filters.person_ids)
            return query

        faces, rejected = [], []
        for row in self._pages(build):
            try:
                box = BBox.from_json(row["bbox"])
            except BBoxError as exc:
                rejected.append(RejectedFace(row["id"], f"bad bbox: {exc}"))
                continue
            photo, person = row["photos"], row["people"]
            event = photo.get("events") or {}
            # The first name that is set and not blank, as postgres.py's coalesce(nullif(...)).
            names = (person.get(k) for k in ("real_name", "telegram_name", "telegram_nickname"))
            name = next((n for n in names if n is not None and n.strip()), None)
            faces.append(
                VerifiedFace(
                    row["id"], row["person_id"], name, photo["url"], box, photo.get("event_id"), event.get("name"),
                    photo["id"], event.get("date"),
                )
            )
        return select_people(faces, rejected, filters)

    def untrained_face_ids(self) -> list[str]:
        def build():
            # ``training_used=not.is.true`` is SQL's ``is not true``: false and null alike.
            return self._table("photo_faces").select("id").eq("verified", True).not_.is_("person_id", None).not_.is_(
                "training_used", True
            )

        return [row["id"] for row in self._pages(build)]

    def face_labels(self) -> list[FaceLabel]:
        def build():
            return (
                self._table("photo_faces").select("id,photo_id,person_id,photos!inner(event_id)")
                .eq("verified", True).not_.is_("person_id", None)
            )

        return [FaceLabel(r["id"], r["photo_id"], r["photos"]["event_id"], r["person_id"]) for r in self._pages(build)]

    # -- writing -------------------------------------------------------------------------------

    def write_descriptors(
        self,
        updates: Sequence[DescriptorUpdate],
        *,
        batch_size: int = 500,
        progress: Callable[[WriteBackReport], None] | None = None,
        ledger: WriteBackLedger | None = None,
    ) -> WriteBackReport:
        """``ledger`` is not used: PostgREST does not show a row's version (``xmin``), so every row is compared."""
        return write_in_batches(
            updates, batch_size=batch_size, progress=progress, connect=nullcontext, write_batch=self._write_batch
        )

    def _write_batch(self, _: None, batch: Sequence[DescriptorUpdate], report: WriteBackReport) -> None:
        """Read the batch's rows, compare as the SQL does, PATCH the changed ones (each guarded)."""
        contexts = [finite_json(u.context) for u in batch]
        current = self._current_rows([u.face_id for u in batch])
        report.compared += len(batch)
        for update, context in zip(batch, contexts, strict=True):
            row = current.get(update.face_id.lower())
            eligible = row is not None and _eligible(row, update)
            if eligible and not _changed(row, update, context):
                report.unchanged += 1
            elif eligible and self._patch(update, context):
                report.written += 1
            else:  # gone, unverified, relabelled or re-boxed: at the read, or by the time of the PATCH
                report.skipped += 1
                report.skipped_ids.append(update.face_id)

    def _current_rows(self, face_ids: Sequence[str], columns: str = _CURRENT) -> dict[str, dict[str, Any]]:
        return self._rows_by_id("photo_faces", columns, face_ids)

    def _rows_by_id(self, table: str, columns: str, row_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The rows with these ids (lower-cased id -> row), at most ``_IDS_PER_REQUEST`` ids a request."""
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(row_ids), _IDS_PER_REQUEST):
            chunk = row_ids[start : start + _IDS_PER_REQUEST]
            for row in self._rows(self._table(table).select(columns).in_("id", chunk)):
                rows[str(row["id"]).lower()] = row
        return rows

    def _patch(self, update: DescriptorUpdate, context: dict[str, Any]) -> bool:
        """One guarded PATCH; False when the row stopped matching the guard since it was read."""
        body = {
            "insightface_descriptor": update.vector_literal(),
            "insightface_confidence": float(update.confidence),
            "insightface_bbox": update.detected_bbox.to_json(),
            "training_used": True,
            "training_context": context,
        }
        query = (
            self._table("photo_faces").update(body)
            .eq("id", update.face_id).is_("verified", True).eq("person_id", update.person_id)
            .contains("bbox", exact_json(update.bbox))
            .select("id")  # Prefer: return=representation, so a PATCH that matched nothing shows as []
        )
        return bool(self._rows(query))

    def create_session(self, fields: Mapping[str, Any], *, session_id: str | None = None) -> str:
        row = _json_ready(session_fields(fields))
        if session_id is None:
            rows = self._rows(self._table("face_training_sessions").insert(row).select("id"))
        else:  # idempotent: an earlier attempt's row (its answer lost) is updated, not doubled
            rows = self._rows(
                self._table("face_training_sessions").upsert({"id": session_id, **row}, on_conflict="id").select("id")
            )
        if not rows:
            raise GalleryError(f"the gallery's REST API at {self.where} returned no id for the new training session")
        return str(rows[0]["id"])

    def update_session(self, session_id: str, fields: Mapping[str, Any]) -> None:
        columns = _json_ready(session_fields(fields))
        if columns:
            self._rows(
                self._table("face_training_sessions").update(columns, returning=ReturnMethod.minimal).eq("id", session_id)
            )

    def read_config(self) -> dict[str, Any]:
        rows = self._rows(self._table("face_recognition_config").select("key,value").order("key"))
        return {row["key"]: row["value"] for row in rows}

    def write_config(self, key: str, value: Any) -> None:
        row = {"key": key, "value": value, "updated_at": datetime.now(UTC).isoformat()}
        self._rows(self._table("face_recognition_config").upsert(row, on_conflict="key", returning=ReturnMethod.minimal))

    # -- recognition -----------------------------------------------------------------------------

    def pending_events(self) -> list[EventPhotos]:
        """postgres.py's ``_PENDING_EVENTS``, grouped here: PostgREST cannot group or aggregate.

        Two paged reads (the photos that have a verified face, then every photo with its event), not
        one snapshot: a photo verified between the two reads can still be counted as pending.
        """
        verified = self._verified_photo_ids()
        groups: dict[str | None, dict[str, Any]] = {}
        for photo in self._pages(lambda: self._table("photos").select("id,event_id,events(name,date)")):
            if str(photo["id"]).lower() in verified:
                continue
            event = photo.get("events") or {}
            group = groups.setdefault(
                photo.get("event_id"), {"name": event.get("name"), "date": event.get("date"), "ids": []}
            )
            group["ids"].append(str(photo["id"]))
        # ``order by e.date nulls last, p.event_id nulls last``: ISO dates and uuid texts sort as the values do.
        ordered = sorted(
            groups.items(), key=lambda item: (item[1]["date"] is None, item[1]["date"] or "", item[0] is None, item[0] or "")
        )
        return [
            EventPhotos(event_id, group["name"], group["date"], len(group["ids"]), photos_fingerprint(group["ids"]))
            for event_id, group in ordered
        ]

    def _verified_photo_ids(self) -> set[str]:
        def build():
            return self._table("photo_faces").select("id,photo_id").is_("verified", True)

        return {str(row["photo_id"]).lower() for row in self._pages(build)}

    def pending_photos(self, event_id: str | None) -> list[PendingPhoto]:
        """postgres.py's ``_PENDING_PHOTOS``: every row on each photo is embedded, so whether a photo
        has a verified face is decided here, on the rows it comes with (one consistent read per page)."""
        columns = f"id,event_id,url,created_at,{_EXISTING}"

        def build():
            query = self._table("photos").select(columns)
            return query.is_("event_id", None) if event_id is None else query.eq("event_id", event_id)

        pending = []
        for row in self._pages(build):
            faces = sorted((_existing_face(face) for face in row.get("photo_faces") or ()), key=lambda f: f.face_id.lower())
            if any(face.verified for face in faces):
                continue
            created = self._timestamp(row, "created_at")
            photo = PendingPhoto(str(row["id"]), row.get("event_id"), row["url"], tuple(faces))
            pending.append(((created is None, created or _EPOCH, photo.photo_id.lower()), photo))
        # ``order by p.created_at, p.id`` (an ascending order puts nulls last)
        return [photo for _, photo in sorted(pending, key=lambda item: item[0])]

    def write_suggestions(self, rows: Sequence[SuggestionRow], *, batch_size: int = 500) -> SuggestionReport:
        """postgres.py's ``_SUGGESTION_BATCH`` over REST, batch by batch.

        Per batch: one read of the batch's photos with the ``verified`` flag of every row on them
        (a photo that is gone or has a verified face gets nothing: its rows are skipped), one read of
        the suggested people (a person deleted since is written as null, as the SQL does), one
        ``ignore-duplicates`` insert of the new rows (an id already there counts as unchanged), and
        for updates of facepipeline's own rows a read, a comparison, and one guarded PATCH per row
        that changes. Unlike Postgres, the check of the photos and the writes are not one
        transaction: a face verified on the photo between the read and the write does not stop it,
        and a person deleted between the people read and the insert fails the batch with PostgREST's
        foreign-key error (Postgres resolves the person inside the statement).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        report = SuggestionReport(rows=len(rows))
        for start in range(0, len(rows), batch_size):
            self._suggestion_batch(rows[start : start + batch_size], report)
        return report

    def _suggestion_batch(self, batch: Sequence[SuggestionRow], report: SuggestionReport) -> None:
        pending = self._pending_photo_ids(list(dict.fromkeys(r.photo_id for r in batch)))
        ready = [r for r in batch if r.photo_id.lower() in pending]
        people = self._existing_people(list(dict.fromkeys(r.person_id for r in ready if r.person_id)))
        skipped = [r.face_id for r in batch if r.photo_id.lower() not in pending]

        new = [r for r in ready if r.replaces is None]
        if new:
            body = [_suggestion_insert(r, people) for r in new]
            # ``on conflict (id) do nothing``: PostgREST returns only the rows it really inserted.
            query = self._table("photo_faces").upsert(body, on_conflict="id", ignore_duplicates=True).select("id")
            inserted = len(self._rows(query))
            report.inserted += inserted
            report.unchanged += len(new) - inserted

        updates = [r for r in ready if r.replaces is not None]
        current = self._current_rows([r.face_id for r in updates], _SUGGESTION_CURRENT) if updates else {}
        for row in updates:
            stored = current.get(row.face_id.lower())
            columns = _suggestion_columns(row, people)
            eligible = stored is not None and _suggestion_eligible(stored, row)
            if eligible and not _suggestion_changed(stored, columns):
                report.unchanged += 1
            elif eligible and self._patch_suggestion(row, columns):
                report.updated += 1
            else:  # verified, relabelled, re-boxed or deleted: at the read, or by the time of the PATCH
                skipped.append(row.face_id)
        report.skipped += len(skipped)
        report.skipped_ids.extend(skipped)

    def _pending_photo_ids(self, photo_ids: Sequence[str]) -> set[str]:
        """Those of the photos that exist and have no verified face (lower-cased)."""
        photos = self._rows_by_id("photos", "id,photo_faces(verified)", photo_ids)
        return {
            photo_id for photo_id, photo in photos.items()
            if not any(face.get("verified") is True for face in photo.get("photo_faces") or ())
        }

    def _existing_people(self, person_ids: Sequence[str]) -> set[str]:
        return set(self._rows_by_id("people", "id", person_ids))

    def _patch_suggestion(self, row: SuggestionRow, columns: dict[str, Any]) -> bool:
        """One PATCH guarded by what the row was when read; False when it stopped matching since."""
        read = row.replaces
        query = self._table("photo_faces").update(columns).eq("id", row.face_id).is_("verified", False)
        query = query.is_("person_id", None) if read.person_id is None else query.eq("person_id", read.person_id)
        query = (
            query.eq("bbox", _plain_json(dict(read.bbox)))  # jsonb equality, as ``f.bbox = i.read_bbox``
            .eq("training_context->>suggested_by", SUGGESTED_BY)
            .select("id")  # Prefer: return=representation, so a PATCH that matched nothing shows as []
        )
        return bool(self._rows(query))

    def unknown_faces(self) -> list[UnknownFaceRow]:
        """postgres.py's ``_UNKNOWN_FACES``; ``verified=not.is.true`` is ``not coalesce(f.verified, false)``."""

        def build():
            return (
                self._table("photo_faces").select("id,photo_id,insightface_descriptor,photos!inner(event_id)")
                .not_.is_("verified", True).is_("person_id", None).not_.is_("insightface_descriptor", None)
            )

        faces = []
        for row in self._pages(build):
            vector = _vector(row["insightface_descriptor"])
            if vector is None or vector.ndim != 1:
                text = self._clean(str(row["insightface_descriptor"])[:80])
                raise GalleryError(
                    f"the gallery's REST API at {self.where} sent an unreadable descriptor for face {row['id']}: {text}"
                )
            event_id = (row.get("photos") or {}).get("event_id")
            faces.append(UnknownFaceRow(str(row["id"]), str(row["photo_id"]), event_id, vector))
        return faces

    def _timestamp(self, row: Mapping[str, Any], column: str) -> datetime | None:
        """A timestamptz as PostgREST sends it (``2024-01-01T10:00:00.123456+00:00``), aware, or None."""
        value = row.get(column)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            text = self._clean(str(value)[:80])
            raise GalleryError(
                f"the gallery's REST API at {self.where} sent an unreadable {column} for row {row.get('id')}: {text}"
            ) from None
        # a ``timestamp`` without a zone: taken as UTC, as ``at time zone 'UTC'`` does in the SQL
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- deciding what to write, as the Postgres transport's SQL does --------------------------------


# -- recognition: what the Postgres transport's recognition SQL computes ---------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _existing_face(face: Mapping[str, Any]) -> ExistingFace:
    return ExistingFace(
        face_id=str(face["id"]), bbox=face.get("bbox"), person_id=face.get("person_id"),
        verified=face.get("verified") is True,  # coalesce(f.verified, false)
        insightface_bbox=face.get("insightface_bbox"), context=face.get("training_context"),
    )


def _plain_json(value: Any) -> Any:
    """Plain JSON values (tuples as lists, numpy scalars as numbers, NaN and inf as null), as jsonb will hold them."""
    return finite_json(value)


def _suggestion_columns(row: SuggestionRow, people: set[str]) -> dict[str, Any]:
    """The columns a suggestion writes; a person deleted since is written as null, as the SQL's
    ``(select pe.id from people pe where pe.id = i.person_id)``."""
    return {
        "person_id": row.person_id if row.person_id and row.person_id.lower() in people else None,
        "confidence": None if row.confidence is None else float(row.confidence),
        "bbox": _plain_json(dict(row.bbox)),
        "insightface_descriptor": row.vector_literal(),
        "insightface_confidence": float(row.det_score),
        "insightface_bbox": _plain_json(dict(row.detected_bbox)),
        "training_context": _plain_json(dict(row.context)),
    }


def _suggestion_insert(row: SuggestionRow, people: set[str]) -> dict[str, Any]:
    return {"id": row.face_id, "photo_id": row.photo_id, "verified": False, **_suggestion_columns(row, people)}


def _suggestion_eligible(stored: Mapping[str, Any], row: SuggestionRow) -> bool:
    """``not f.verified and f.person_id is not distinct from i.read_person and f.bbox = i.read_bbox
    and f.training_context ->> 'suggested_by' = 'facepipeline'``."""
    read = row.replaces
    context = stored.get("training_context")
    return (
        stored.get("verified") is False
        and str(stored.get("person_id") or "").lower() == str(read.person_id or "").lower()
        and read.bbox is not None
        and _json_equal(stored.get("bbox"), _plain_json(dict(read.bbox)))
        and isinstance(context, dict)
        and context.get("suggested_by") == SUGGESTED_BY
    )


def _suggestion_changed(stored: Mapping[str, Any], columns: Mapping[str, Any]) -> bool:
    """Whether any written column ``is distinct from`` what the row holds (``real`` as float32)."""
    if str(stored.get("person_id") or "").lower() != str(columns["person_id"] or "").lower():
        return True
    for name in ("confidence", "insightface_confidence"):
        held, wanted = stored.get(name), columns[name]
        if (held is None) != (wanted is None) or (held is not None and np.float32(held) != np.float32(wanted)):
            return True
    held_vector = _vector(stored.get("insightface_descriptor"))
    wanted_vector = _vector(columns["insightface_descriptor"])
    if held_vector is None or held_vector.shape != wanted_vector.shape or not np.array_equal(held_vector, wanted_vector):
        return True
    return not all(_json_equal(stored.get(name), columns[name]) for name in ("bbox", "insightface_bbox", "training_context"))


def _host_port(url: str) -> str | None:
    """``host[:port]`` of an http(s) URL (no user info), or None when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}" if port else host


def _api_error_text(exc: APIError) -> str:
    text = f"{exc.code}: {exc.message}" if exc.code else str(exc.message)
    if exc.details:
        text += f" ({str(exc.details)[:300]})"
    if exc.hint:
        text += f"; hint: {exc.hint}"
    return text


def _json_ready(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Session columns as JSON: ``metrics`` as the Postgres transport stores it (NaN and inf as null,
    which jsonb and JSON itself refuse)."""
    return {k: finite_json(v) if (k == "metrics" and v is not None) or isinstance(v, float) else v for k, v in columns.items()}


def _json_equal(a: Any, b: Any) -> bool:
    """jsonb equality: numbers by value (1 == 1.0), booleans never equal to numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _eligible(row: Mapping[str, Any], update: DescriptorUpdate) -> bool:
    """``f.verified and f.person_id = i.person_id and f.bbox @> i.bbox``."""
    bbox = row.get("bbox")
    return (
        row.get("verified") is True
        and str(row.get("person_id") or "").lower() == update.person_id.lower()
        and isinstance(bbox, dict)
        and all(k in bbox and _json_equal(bbox[k], v) for k, v in exact_json(update.bbox).items())
    )


def _vector(value: Any) -> np.ndarray | None:
    """A pgvector value as PostgREST returns it (the text ``"[0.1,...]"``), as float32."""
    if value is None:
        return None
    try:
        return np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float32)
    except (ValueError, TypeError):
        return None


def _changed(row: Mapping[str, Any], update: DescriptorUpdate, context: Mapping[str, Any]) -> bool:
    """Whether any written column ``is distinct from`` what the row holds."""
    stored = _vector(row.get("insightface_descriptor"))
    if stored is None or stored.shape != update.descriptor.shape or not np.array_equal(stored, update.descriptor):
        return True
    confidence = row.get("insightface_confidence")
    if confidence is None or np.float32(confidence) != np.float32(update.confidence):
        return True
    if not _json_equal(row.get("insightface_bbox"), update.detected_bbox.to_json()):
        return True
    if row.get("training_used") is not True:
        return True
    return not _json_equal(without_session(row.get("training_context")), without_session(dict(context)))
