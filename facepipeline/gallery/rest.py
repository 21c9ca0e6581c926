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

Errors name the host, never the key: every error text passes through :func:`redact`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from postgrest import APIError
from postgrest.types import ReturnMethod
from supabase import ClientOptions, SupabaseException, create_client

from facepipeline.faces import VerifiedFace
from facepipeline.gallery.base import (
    DescriptorUpdate,
    FaceLabel,
    GalleryError,
    GalleryUnavailable,
    WriteBackReport,
    session_fields,
    write_in_batches,
)
from facepipeline.gallery.postgres import exact_json
from facepipeline.gallery.secrets import redact
from facepipeline.geometry import BBox, BBoxError
from facepipeline.sources.base import FaceFilters, FaceRead, RejectedFace, select_people

_PEOPLE = "people!inner(real_name,telegram_name,telegram_nickname)"
_CURRENT = (
    "id,verified,person_id,bbox,insightface_descriptor,insightface_confidence,insightface_bbox,"
    "training_used,training_context"
)
# ids per ``id=in.(...)`` request: 100 UUIDs keep the URL near 4 KB, under gateways' URL limits.
_IDS_PER_REQUEST = 100
# PostgREST's own "cannot reach the database" codes, and gateway statuses with a non-JSON body.
_UNAVAILABLE = {"PGRST000", "PGRST001", "PGRST002", "502", "503", "504", "520", "521", "522", "523", "524"}
_SESSION_KEY = "training_session_id"


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
    ) -> WriteBackReport:
        return write_in_batches(
            updates, batch_size=batch_size, progress=progress, connect=nullcontext, write_batch=self._write_batch
        )

    def _write_batch(self, _: None, batch: Sequence[DescriptorUpdate], report: WriteBackReport) -> None:
        """Read the batch's rows, compare as the SQL does, PATCH the changed ones (each guarded)."""
        contexts = [json.loads(json.dumps(dict(u.context))) for u in batch]
        current = self._current_rows([u.face_id for u in batch])
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

    def _current_rows(self, face_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(face_ids), _IDS_PER_REQUEST):
            chunk = face_ids[start : start + _IDS_PER_REQUEST]
            for row in self._rows(self._table("photo_faces").select(_CURRENT).in_("id", chunk)):
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

    def create_session(self, fields: Mapping[str, Any]) -> str:
        rows = self._rows(self._table("face_training_sessions").insert(_json_ready(session_fields(fields))).select("id"))
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


# -- deciding what to write, as the Postgres transport's SQL does --------------------------------


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
    """Session columns as JSON: ``metrics`` as the Postgres transport stores it."""
    return {k: json.loads(json.dumps(v, default=str)) if k == "metrics" and v is not None else v for k, v in columns.items()}


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


def _without_session(context: Any) -> Any:
    """jsonb ``context - 'training_session_id'``."""
    if isinstance(context, dict):
        return {k: v for k, v in context.items() if k != _SESSION_KEY}
    if isinstance(context, list):
        return [v for v in context if v != _SESSION_KEY]
    return context


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
    return not _json_equal(_without_session(row.get("training_context")), _without_session(dict(context)))
