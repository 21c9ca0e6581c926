"""Training sessions: one per retrain, in the gallery's ``face_training_sessions`` and in local history.

The local history (one JSON file per session under ``FACEPIPELINE_HOME/history``) is written
first and is the ledger: it can be read while the database is down (``facepipeline history``), and
a session whose last state could not reach the database is marked *unsynced* and pushed by the
next retrain that reaches it. So a session is never left ``running`` in the gallery for good
because the database went away at the wrong moment.

Session ids are made here, not by the database, and every write of a session is an upsert by
that id: a create whose answer was lost (the row committed, the connection gone) is simply done
again, so each run has exactly one row. The database down before the session starts leaves no
session at all; lost after it started, the ledger says ``failed`` (unsynced) at once and the
gallery's row follows with the next run that reaches it (:meth:`TrainingSessions.sync_pending`).
NaN and infinite numbers in the fields are stored as null, in the ledger and in the gallery: they
are not JSON, and jsonb refuses them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facepipeline.gallery.base import Gallery, GalleryError, GalleryUnavailable, finite_json, json_text
from facepipeline.versions import replace_file


OPEN_MARKERS = "open"
"""The folder of ``SessionHistory``'s markers of open sessions, one empty file per run id."""
MARKER_GRACE_S = 60.0
"""A marker whose record does not exist is dropped once it is this old (younger: being written)."""


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class SessionRecord:
    id: str
    """The gallery's session id; a local UUID when the source has no database."""
    run_id: str
    source: str
    status: str
    created_at: str
    updated_at: str
    in_gallery: bool
    """True when the row exists in face_training_sessions."""
    synced: bool
    """True when the gallery's row holds this record's latest state."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The face_training_sessions columns: model_version, training_mode, counts, metrics..."""

    @property
    def error(self) -> str | None:
        return (self.fields.get("metrics") or {}).get("error")

    @property
    def is_open(self) -> bool:
        """Still running, or not yet in the gallery as it is here: what a later retrain looks at."""
        return self.status == "running" or not self.synced


class SessionHistory:
    """The local ledger of sessions, one JSON file each, newest first when listed.

    What every retrain looks for, the sessions still *open* (``running``, or not yet in the gallery
    as they are here), is found through ``open/<run id>`` markers rather than by reading the whole
    ledger, which grows by one file per run: the cost stays that of the open sessions, usually
    none. A marker is made before an open record is written (and touched again after), and removed
    after a closed one is (and made again if the record was meanwhile written open by another
    process), so every open record has one. A marker left by a crash in between is dropped by a
    later read: at once when its record is closed, after :data:`MARKER_GRACE_S` when there is no
    record (younger, the record may be being written). A ledger written before the markers gets
    them once, from a full read. (Every process writing the ledger must run this code: an older one
    would write open records without markers.)
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def save(self, record: SessionRecord) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / OPEN_MARKERS / record.run_id
        if record.is_open:
            self._markers()
            marker.touch()
        # Strict JSON, NaN and inf as null: the file is read by other tools too, and its fields are
        # what gets pushed to the gallery's jsonb, which refuses them.
        replace_file(self._path(record.run_id), json_text(asdict(record), indent=2, sort_keys=True))
        if record.is_open:
            marker.touch()  # again: a reader may have taken it for a crash's leftover meanwhile
        else:
            marker.unlink(missing_ok=True)
            again = self.for_run(record.run_id)
            if again is not None and again.is_open:  # another process wrote it open meanwhile
                marker.touch()

    def open_records(self) -> list[SessionRecord]:
        """The sessions still running or not yet in the gallery as they are here, newest first."""
        if not self.root.is_dir():
            return []
        records = []
        for marker in self._markers().iterdir():
            try:
                record = self.for_run(marker.name)
            except (OSError, ValueError, TypeError):
                continue  # a damaged file is skipped, as list() does; its marker stays
            if record is not None and record.is_open:
                records.append(record)
            elif record is not None or _age_s(marker) > MARKER_GRACE_S:  # a record being written has a young one
                marker.unlink(missing_ok=True)  # left by a crash between a record and its marker
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records

    def _markers(self) -> Path:
        """The markers' folder; made, for a ledger written before markers, from one full read."""
        folder = self.root / OPEN_MARKERS
        if folder.is_dir():
            return folder
        staging = Path(tempfile.mkdtemp(prefix=".open-", dir=self.root))
        for record in self.list():
            if record.is_open:
                (staging / record.run_id).touch()
        try:
            os.rename(staging, folder)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def for_run(self, run_id: str) -> SessionRecord | None:
        try:
            return SessionRecord(**json.loads(self._path(run_id).read_text()))
        except FileNotFoundError:
            return None

    def list(self, limit: int | None = None) -> list[SessionRecord]:
        if not self.root.is_dir():
            return []
        records = []
        for path in self.root.glob("*.json"):
            try:
                records.append(SessionRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a damaged file is skipped, not fatal to the listing
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]


class TrainingSessions:
    """Opens and closes the session of a run, in the gallery (when there is one) and locally."""

    def __init__(self, history: SessionHistory, gallery: Gallery | None, source: str) -> None:
        self.history = history
        self.gallery = gallery
        self.source = source

    def start(self, run_id: str, fields: Mapping[str, Any]) -> SessionRecord:
        """The run's session, created ``running``; the same one when called again in that run."""
        existing = self.history.for_run(run_id)
        if existing is not None:
            return existing
        fields = finite_json({**fields, "status": "running"})
        now = _now()
        # The id is made here and the ledger written first: if the connection is lost after the
        # gallery committed the row but before it answered, the run still knows its row, and every
        # later write of this session (an upsert by id) lands on that one row, never a second.
        record = SessionRecord(
            id=str(uuid.uuid4()), run_id=run_id, source=self.source, status="running", created_at=now, updated_at=now,
            in_gallery=self.gallery is not None, synced=self.gallery is None, fields=dict(fields),
        )
        self.history.save(record)
        if self.gallery is not None:
            self.gallery.create_session(fields, session_id=record.id)
            record.synced = True
            self.history.save(record)
        return record

    def finish(self, run_id: str, status: str, fields: Mapping[str, Any]) -> tuple[SessionRecord | None, str | None]:
        """Close the run's session; returns it and a warning when the gallery could not be told."""
        record = self.history.for_run(run_id)
        if record is None:
            return None, None
        record.status = status
        record.fields = finite_json({**record.fields, **fields, "status": status})
        record.updated_at = _now()
        record.synced = not record.in_gallery
        self.history.save(record)  # the ledger first: it is what the next run trusts
        return record, self._push(record)

    def sync_pending(self) -> list[str]:
        """Push sessions whose last state never reached the gallery; returns their ids."""
        if self.gallery is None:
            return []
        pending = [r for r in self.history.open_records() if r.in_gallery and not r.synced and r.source == self.source]
        if not pending:
            return []
        try:
            self.gallery.ping()  # one timeout when the gallery is down, not one per pending session
        except GalleryUnavailable:
            return []
        return [record.id for record in pending if self._push(record) is None]

    def _push(self, record: SessionRecord) -> str | None:
        if not record.in_gallery or self.gallery is None:
            return None
        try:
            # An upsert: the row is created if the first attempt never reached the gallery.
            self.gallery.create_session(record.fields, session_id=record.id)
        except GalleryError as exc:
            return f"training session {record.id} is {record.status} locally but the gallery was not updated: {exc}"
        record.synced = True
        self.history.save(record)
        return None
