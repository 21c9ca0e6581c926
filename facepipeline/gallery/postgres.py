"""The gallery over a direct Postgres connection (psycopg 3): Supabase's connection string, or any
PostgreSQL with pgvector and the SPEC schema.

Every statement is parameterised: values travel only as parameters, and the one statement with
variable column names (the training session's) composes them with ``psycopg.sql.Identifier``
from a whitelist; no SQL text is built by formatting. JSON values go through
:func:`~facepipeline.gallery.base.finite_json` (NaN and inf as null, which jsonb would refuse).

Connections are opened with a connect timeout so an unreachable database fails fast, and every
operation runs with a bounded ``statement_timeout`` (``statement_timeout_s``, 1 to 3,600 s; the face
source resource's field of that name) so a slow database or a row locked by the gallery app fails
the step with :class:`GalleryTimeout`, naming the timeout, instead of hanging. Messages name
``host:port/database``, never the password.

A connection that ended an operation cleanly is kept open for the next one, for ``keep_idle_s``
(default :data:`KEEP_IDLE_S`, the face source resource's field of that name; 0 closes it after
each operation): a retrain makes seven operations on the gallery (the config twice, the faces, the
session opened and closed, the labels, the write-back), and over the internet each new connection
costs several round trips (TCP, TLS, authentication) before the operation's own: at 60 ms a round
trip, the seven took 2.0 s with a connection each and 1.3 s with one kept
(``bench/gallery_latency.py``, without TLS). An idle connection is closed when its time is up, by
a timer, so a long-lived process (the daemon, a code server) holds none for long. The statement
that sets the timeout at the start of each operation also tells a reused connection that died
while idle (the server restarted, a pooler dropped it): it is replaced once, at once; a server
gone silent is given up on after ``tcp_user_timeout`` (twice the connect timeout, at least 10 s,
unless the connection string sets it) rather than the kernel's retransmissions. After an error,
or in a forked process, a connection is never reused. (A pool such as ``psycopg_pool`` would keep
reconnecting in the background and answer an unreachable database with its own timeout, not
libpq's refusal; one kept connection is all a process here needs.)

Write-back first asks, in one read per 5,000 rows, which rows would change (the stored
descriptor is compared by the md5 of its binary form, so no vector travels for a row that holds it
already); then it sends only those, one ``UPDATE ... FROM unnest(...)`` per batch, each its own
transaction, touching only rows that are still verified, still labelled and boxed as they were
read, and whose values actually change (checked again under the row lock). Rows left alone are
counted by reason: ``deleted``, ``unverified``, ``relabelled`` (another person) or ``reboxed``
(another box) since the read. A database lost, refusing or timing out part-way raises
:class:`~facepipeline.gallery.base.WriteBackFailed` (``WriteBackInterrupted`` when lost) with the
counts of the batches committed before; the next run compares again and sends only the rest. (A
connection lost during a COMMIT may leave that batch committed though not counted: the next run
finds its rows up to date.)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from facepipeline.faces import VerifiedFace
from facepipeline.gallery.base import (
    DescriptorUpdate,
    EventPhotos,
    ExistingFace,
    FaceLabel,
    GalleryError,
    GalleryTimeout,
    GalleryUnavailable,
    PendingPhoto,
    SuggestionReport,
    SuggestionRow,
    UnknownFaceRow,
    WriteBackReport,
    finite_json,
    json_text,
    session_fields,
    write_in_batches,
)
from facepipeline.gallery.ledger import WriteBackLedger, update_digest
from facepipeline.gallery.secrets import redact
from facepipeline.geometry import BBox, BBoxError
from facepipeline.sources.base import FaceFilters, FaceRead, RejectedFace, select_people

_VERIFIED_FACES = """
select f.id::text, f.person_id::text,
       coalesce(nullif(trim(pe.real_name), ''), nullif(trim(pe.telegram_name), ''), nullif(trim(pe.telegram_nickname), '')),
       p.url, f.bbox, p.event_id::text, e.name, e.date::text, p.id::text
from photo_faces f
join photos p on p.id = f.photo_id
join people pe on pe.id = f.person_id
left join events e on e.id = p.event_id
where f.verified and f.person_id is not null
  and (%(event_ids)s::uuid[] is null or p.event_id = any(%(event_ids)s::uuid[]))
  and (%(date_from)s::date is null or e.date >= %(date_from)s::date)
  and (%(date_to)s::date is null or e.date <= %(date_to)s::date)
  and (%(person_ids)s::uuid[] is null or f.person_id = any(%(person_ids)s::uuid[]))
order by f.id
"""

_UNTRAINED_FACES = """
select f.id::text from photo_faces f
where f.verified and f.person_id is not null and f.training_used is not true
order by f.id
"""

_FACE_LABELS = """
select f.id::text, f.photo_id::text, p.event_id::text, f.person_id::text
from photo_faces f join photos p on p.id = f.photo_id
where f.verified and f.person_id is not null
order by f.id
"""

# One batch: which offered rows are still what we read (eligible), and which of those change.
_WRITE_BATCH = """
with incoming as (
    select * from unnest(%(ids)s::uuid[], %(person_ids)s::uuid[], %(bboxes)s::jsonb[], %(descriptors)s::text[],
                         %(confidences)s::real[], %(detected)s::jsonb[], %(contexts)s::jsonb[])
           as t(id, person_id, bbox, descriptor, confidence, detected_bbox, context)
),
eligible as (
    -- Locked, so a concurrent edit by the gallery is waited for and the conditions are checked
    -- again on the row as it is then (READ COMMITTED re-checks a locking read).
    select f.id, f.xmin from photo_faces f join incoming i on i.id = f.id
    where f.verified and f.person_id = i.person_id and f.bbox @> i.bbox
    for no key update of f
),
written as (
    update photo_faces f
    set insightface_descriptor = i.descriptor::vector,
        insightface_confidence = i.confidence,
        insightface_bbox = i.detected_bbox,
        training_used = true,
        training_context = i.context
    from incoming i
    where f.id = i.id and f.id in (select id from eligible)
      and f.verified and f.person_id = i.person_id and f.bbox @> i.bbox
      and (f.insightface_descriptor is distinct from i.descriptor::vector
           or f.insightface_confidence is distinct from i.confidence
           or f.insightface_bbox is distinct from i.detected_bbox
           or f.training_used is distinct from true
           or (f.training_context - 'training_session_id') is distinct from (i.context - 'training_session_id')
           or (f.training_context ->> 'training_session_id' is null and i.context ->> 'training_session_id' is not null))
    returning f.id, f.xmin
)
-- Each eligible row, the version that holds its values now, and whether this batch wrote it.
select e.id::text, coalesce(w.xmin, e.xmin)::text, w.id is not null
from eligible e left join written w on w.id = e.id
"""

# Which offered rows are eligible (as in _WRITE_BATCH; when not, why: the first of its conditions
# that fails) and which of those already hold every value (as its "is distinct from" test, the
# descriptor compared by digest): a plain read, nothing locked.
_COMPARE_BATCH = """
with incoming as (
    select * from jsonb_to_recordset(%(rows)s::jsonb)
           as t(n integer, id uuid, person_id uuid, bbox jsonb, digest text, confidence real, detected_bbox jsonb, context jsonb)
)
select i.n,
       case when f.id is null then 'deleted'
            when not coalesce(f.verified, false) then 'unverified'
            when f.person_id is distinct from i.person_id then 'relabelled'
            when not coalesce(f.bbox @> i.bbox, false) then 'reboxed' end,
       coalesce(md5(vector_send(f.insightface_descriptor)) = i.digest
                and f.insightface_confidence is not distinct from i.confidence
                and f.insightface_bbox is not distinct from i.detected_bbox
                and f.training_used is not distinct from true
                and (f.training_context - 'training_session_id') is not distinct from (i.context - 'training_session_id')
                and not (f.training_context ->> 'training_session_id' is null and i.context ->> 'training_session_id' is not null),
                false),
       f.xmin::text
from incoming i left join photo_faces f on f.id = i.id
order by i.n
"""

# The version (xmin) of each row the ledger says held its update: unchanged, it still does.
_ROW_VERSIONS = "select id::text, xmin::text from photo_faces where id = any(%(ids)s::uuid[])"
COMPARE_BATCH_SIZE = 5000

# Why rows a batch did not write were not eligible, asked after the batch's own statement and in its
# transaction: a new statement sees what a concurrent transaction committed meanwhile (READ COMMITTED).
# A row that matches again (changed and changed back) is "changed".
_SKIP_REASONS = """
select i.id::text,
       case when f.id is null then 'deleted'
            when not coalesce(f.verified, false) then 'unverified'
            when f.person_id is distinct from i.person_id then 'relabelled'
            when not coalesce(f.bbox @> i.bbox, false) then 'reboxed'
            else 'changed' end
from unnest(%(ids)s::uuid[], %(person_ids)s::uuid[], %(bboxes)s::jsonb[]) as i(id, person_id, bbox)
left join photo_faces f on f.id = i.id
"""

_INSERT_SESSION = sql.SQL("insert into face_training_sessions ({columns}) values ({values}) returning id::text")
_UPSERT_SESSION = sql.SQL(
    "insert into face_training_sessions (id, {columns}) values (%(session_id)s::uuid, {values}) "
    "on conflict (id) do update set {assignments} returning id::text"
)
_UPDATE_SESSION = sql.SQL("update face_training_sessions set {assignments} where id = %(session_id)s::uuid")

STATEMENT_TIMEOUT_RANGE_S = (1.0, 3600.0)
"""Bounds of the statement timeout: below a second ordinary reads fail; zero would mean none at all."""
CONNECT_TIMEOUT_RANGE_S = (1, 300)
KEEP_IDLE_S = 30.0
"""How long a connection stays open after an operation for the next one to reuse."""


_PENDING_EVENTS = """
select p.event_id::text, e.name, e.date::text, count(*), md5(string_agg(p.id::text, ',' order by p.id))
from photos p left join events e on e.id = p.event_id
where not exists (select 1 from photo_faces v where v.photo_id = p.id and v.verified)
group by p.event_id, e.name, e.date
order by e.date nulls last, p.event_id nulls last
"""

_PENDING_PHOTOS = """
select p.id::text, p.event_id::text, p.url,
       coalesce(jsonb_agg(jsonb_build_object(
           'id', f.id, 'bbox', f.bbox, 'person_id', f.person_id, 'verified', coalesce(f.verified, false),
           'insightface_bbox', f.insightface_bbox, 'training_context', f.training_context) order by f.id)
         filter (where f.id is not null), '[]'::jsonb)
from photos p left join photo_faces f on f.photo_id = p.id
where p.event_id is not distinct from %(event_id)s::uuid
group by p.id
having not coalesce(bool_or(f.verified), false)
order by p.created_at, p.id
"""

# One batch of suggestions. Rows go only to photos that still exist and still have no verified
# face; updates only to facepipeline's own rows that are still unverified and as they were read.
# Ids are deterministic, so a row already inserted by an earlier run conflicts and is left as is.
_SUGGESTION_BATCH = """
with incoming as (
    select * from unnest(%(ids)s::uuid[], %(photo_ids)s::uuid[], %(person_ids)s::uuid[], %(confidences)s::real[],
                         %(bboxes)s::jsonb[], %(descriptors)s::text[], %(det_scores)s::real[], %(detected)s::jsonb[],
                         %(contexts)s::jsonb[], %(updates)s::boolean[], %(read_persons)s::uuid[], %(read_bboxes)s::jsonb[])
           as t(id, photo_id, person_id, confidence, bbox, descriptor, det_score, detected_bbox, context,
                is_update, read_person, read_bbox)
),
pending as (
    select i.* from incoming i
    where exists (select 1 from photos p where p.id = i.photo_id)
      and not exists (select 1 from photo_faces v where v.photo_id = i.photo_id and v.verified)
),
inserted as (
    insert into photo_faces (id, photo_id, person_id, bbox, confidence, verified, insightface_descriptor,
                             insightface_confidence, insightface_bbox, training_context)
    select i.id, i.photo_id, (select pe.id from people pe where pe.id = i.person_id), i.bbox, i.confidence, false,
           i.descriptor::vector, i.det_score, i.detected_bbox, i.context
    from pending i where not i.is_update
    on conflict (id) do nothing
    returning id
),
eligible as (
    select f.id from photo_faces f join pending i on i.id = f.id
    where i.is_update and not f.verified and f.person_id is not distinct from i.read_person and f.bbox = i.read_bbox
      and f.training_context ->> 'suggested_by' = 'facepipeline'
    for no key update of f
),
updated as (
    update photo_faces f
    set person_id = (select pe.id from people pe where pe.id = i.person_id), confidence = i.confidence, bbox = i.bbox,
        insightface_descriptor = i.descriptor::vector, insightface_confidence = i.det_score,
        insightface_bbox = i.detected_bbox, training_context = i.context
    from pending i
    where f.id = i.id and f.id in (select id from eligible)
      and not f.verified and f.person_id is not distinct from i.read_person and f.bbox = i.read_bbox
      and (f.person_id is distinct from i.person_id or f.confidence is distinct from i.confidence
           or f.bbox is distinct from i.bbox or f.insightface_descriptor is distinct from i.descriptor::vector
           or f.insightface_confidence is distinct from i.det_score or f.insightface_bbox is distinct from i.detected_bbox
           or f.training_context is distinct from i.context)
    returning f.id
)
select (select count(*) from incoming i where not i.is_update and i.id in (select id from pending)),
       (select count(*) from inserted), (select count(*) from eligible), (select count(*) from updated),
       (select array_agg(i.id::text) from incoming i
         where i.id not in (select id from pending) or (i.is_update and i.id not in (select id from eligible)))
"""

_UNKNOWN_FACES = """
select f.id::text, f.photo_id::text, p.event_id::text, f.insightface_descriptor
from photo_faces f join photos p on p.id = f.photo_id
where not coalesce(f.verified, false) and f.person_id is null and f.insightface_descriptor is not null
order by f.id
"""


def exact_json(bbox: BBox) -> dict[str, float]:
    """The box with the values it was read with (no rounding), for comparing with the row."""
    return {"x": bbox.x, "y": bbox.y, "width": bbox.width, "height": bbox.height}


@dataclass(frozen=True)
class _IdleConnection:
    conn: psycopg.Connection
    since: float
    """time.monotonic() when it went idle."""
    pid: int
    """The process that opened it."""
    timer: threading.Timer
    """Closes it when its idle time is up."""


class PostgresGallery:
    def __init__(
        self, dsn: str, *, connect_timeout_s: int = 5, statement_timeout_s: float = 120.0, keep_idle_s: float = KEEP_IDLE_S
    ) -> None:
        self._dsn = dsn
        self.keep_idle_s = keep_idle_s
        self._idle: _IdleConnection | None = None
        self._idle_lock = threading.Lock()
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise GalleryError(f"not a valid Postgres connection string: {redact(dsn)}") from None
        self._password = params.get("password")
        self.where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        self._user = params.get("user") or ""
        self._database = params.get("dbname") or self._user
        self.address = f"{self.where}/{self._database}"
        """host:port/database: what every error names (never the user's password)."""
        self._dsn_keys = set(params)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s

    @property
    def statement_timeout_s(self) -> float:
        """How long one statement may run before the server cancels it (Postgres' ``statement_timeout``)."""
        return self._statement_timeout_s

    @statement_timeout_s.setter
    def statement_timeout_s(self, seconds: float) -> None:
        low, high = STATEMENT_TIMEOUT_RANGE_S
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not low <= seconds <= high:
            raise GalleryError(f"statement timeout must be a number of seconds from {low:g} to {high:g}, got {seconds!r}")
        self._statement_timeout_s = float(seconds)

    @property
    def connect_timeout_s(self) -> int:
        return self._connect_timeout_s

    @connect_timeout_s.setter
    def connect_timeout_s(self, seconds: int) -> None:
        low, high = CONNECT_TIMEOUT_RANGE_S
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
            raise GalleryError(f"connect timeout must be whole seconds from {low} to {high}, got {seconds!r}")
        self._connect_timeout_s = seconds

    @property
    def description(self) -> str:
        """Where, without the password: two projects behind one pooler host differ by their user."""
        user = f"{self._user}@" if self._user else ""
        return f"postgres://{user}{self.where}/{self._database}"

    def __repr__(self) -> str:
        return f"PostgresGallery({self.description!r})"

    # -- connections ---------------------------------------------------------------------------

    def _clean(self, exc: BaseException) -> str:
        return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, [self._password, self._dsn])

    def _connect(self) -> psycopg.Connection:
        try:
            # autocommit: each ``conn.transaction()`` below is a real transaction that commits on
            # exit, not a savepoint inside one long implicit transaction.
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self.connect_timeout_s, application_name="facepipeline",
                prepare_threshold=None,  # Supabase's transaction pooler (port 6543) has no prepared statements
                **self._liveness(),
            )
        except psycopg.Error as exc:
            raise GalleryUnavailable(f"cannot reach the gallery database at {self.address}: {self._clean(exc)}") from None

    def _liveness(self) -> dict[str, int]:
        """A server gone silent (no reset: a host down, a NAT that forgot the connection) ends the
        connection once what was sent stays unacknowledged for ``tcp_user_timeout``, instead of after
        the kernel's ~15 minutes of retransmissions; keepalives find it while idle. What the
        connection string sets is its own."""
        settings = {"tcp_user_timeout": 1000 * max(10, 2 * self.connect_timeout_s), "keepalives": 1, "keepalives_idle": 15,
                    "keepalives_interval": 5, "keepalives_count": 3}
        return {key: value for key, value in settings.items() if key not in self._dsn_keys}

    def _ready(self, conn: psycopg.Connection) -> None:
        conn.execute("select set_config('statement_timeout', %s, false)", [str(round(self.statement_timeout_s * 1000))])

    def _take_idle(self) -> psycopg.Connection | None:
        """The connection kept from the last operation, if it is this process's and still fresh."""
        with self._idle_lock:
            idle, self._idle = self._idle, None
        if idle is None:
            return None
        idle.timer.cancel()
        if idle.pid != os.getpid():  # a forked copy: the socket is the parent's (psycopg leaves it open)
            return None
        if idle.conn.closed or time.monotonic() - idle.since > self.keep_idle_s:
            idle.conn.close()
            return None
        return idle.conn

    def _keep_idle(self, conn: psycopg.Connection) -> None:
        if self.keep_idle_s <= 0 or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        timer = threading.Timer(self.keep_idle_s, self._close_idle, args=(conn,))
        timer.daemon = True
        with self._idle_lock:
            previous, self._idle = self._idle, _IdleConnection(conn, time.monotonic(), os.getpid(), timer)
        timer.start()
        if previous is not None:  # another thread's operation ended meanwhile: one kept is enough
            previous.timer.cancel()
            previous.conn.close()

    def _close_idle(self, conn: psycopg.Connection) -> None:
        with self._idle_lock:
            if self._idle is None or self._idle.conn is not conn or self._idle.pid != os.getpid():
                return
            self._idle = None
        conn.close()

    def close(self) -> None:
        """Close the connection kept for the next operation, if any (the next operation opens one)."""
        with self._idle_lock:
            idle, self._idle = self._idle, None
        if idle is not None and idle.pid == os.getpid():
            idle.timer.cancel()
            idle.conn.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        conn = self._take_idle()
        if conn is not None:
            try:
                self._ready(conn)
            except psycopg.Error:  # it died while idle: a new one, once
                conn.close()
                conn = None
        fresh = conn is None
        if fresh:
            conn = self._connect()
        clean = False
        try:
            if fresh:
                self._ready(conn)
            yield conn
            clean = True
        except psycopg.errors.QueryCanceled as exc:  # an OperationalError, but the server is there
            if "statement timeout" in str(exc):
                raise GalleryTimeout(
                    f"the gallery database at {self.address} cancelled a statement after the statement timeout of "
                    f"{self.statement_timeout_s:g} s (the database is slow or a row is locked by another transaction; "
                    f"the timeout is the face source's statement_timeout_s)"
                ) from None
            raise GalleryError(f"the gallery database at {self.address} cancelled a query: {self._clean(exc)}") from None
        except psycopg.OperationalError as exc:
            raise GalleryUnavailable(f"lost the gallery database at {self.address}: {self._clean(exc)}") from None
        except psycopg.Error as exc:
            raise GalleryError(f"the gallery database at {self.address} refused a query: {self._clean(exc)}") from None
        finally:
            if clean:
                self._keep_idle(conn)
            else:
                conn.close()

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("select 1")

    # -- reading -------------------------------------------------------------------------------

    def read(self, filters: FaceFilters) -> FaceRead:
        params = {
            "event_ids": list(filters.event_ids) or None,
            "date_from": filters.date_from,
            "date_to": filters.date_to,
            # With co-occurring people the person filter runs after the read, on the photos.
            "person_ids": list(filters.person_ids) if filters.person_ids and not filters.include_co_occurring else None,
        }
        faces, rejected = [], []
        with self._connection() as conn, conn.transaction():
            with conn.cursor(name="verified_faces") as cursor:  # server-side: rows stream in
                cursor.itersize = 5000
                cursor.execute(_VERIFIED_FACES, params)
                for face_id, person_id, name, url, bbox, event_id, event_name, event_date, photo_id in cursor:
                    try:
                        box = BBox.from_json(bbox)
                    except BBoxError as exc:
                        rejected.append(RejectedFace(face_id, f"bad bbox: {exc}"))
                        continue
                    faces.append(
                        VerifiedFace(face_id, person_id, name, url, box, event_id, event_name, photo_id, event_date)
                    )
        return select_people(faces, rejected, filters)

    def untrained_face_ids(self) -> list[str]:
        with self._connection() as conn:
            return [face_id for (face_id,) in conn.execute(_UNTRAINED_FACES)]

    def face_labels(self) -> list[FaceLabel]:
        with self._connection() as conn:
            return [FaceLabel(*row) for row in conn.execute(_FACE_LABELS)]

    # -- writing -------------------------------------------------------------------------------

    def write_descriptors(
        self,
        updates: Sequence[DescriptorUpdate],
        *,
        batch_size: int = 500,
        progress: Callable[[WriteBackReport], None] | None = None,
        ledger: WriteBackLedger | None = None,
    ) -> WriteBackReport:
        held: dict[str, str] = {}  # face id -> the version (xmin) of its row that holds its update now
        known = ledger.load() if ledger is not None else {}
        digests = {u.face_id: update_digest(u) for u in updates} if ledger is not None else {}

        def to_write(conn: psycopg.Connection, updates: Sequence[DescriptorUpdate], report: WriteBackReport) -> list[DescriptorUpdate]:
            vouched = _still_held(conn, updates, known, digests) if known else {}
            held.update(vouched)
            report.unchanged += len(vouched)
            return _changed_rows(conn, [u for u in updates if u.face_id not in vouched], report, held)

        def write_batch(conn: psycopg.Connection, batch: Sequence[DescriptorUpdate], report: WriteBackReport) -> None:
            _write_batch(conn, batch, report, held)

        report = write_in_batches(
            updates, batch_size=batch_size, progress=progress, connect=self._connection, write_batch=write_batch, to_write=to_write,
        )
        if ledger is not None:
            ledger.save({face_id: (digests[face_id], version) for face_id, version in held.items()})
        return report

    def create_session(self, fields: Mapping[str, Any], *, session_id: str | None = None) -> str:
        columns = session_fields(fields) or {"status": "running"}
        # Column names are whitelisted by session_fields and still quoted as identifiers: no value
        # ever becomes SQL text.
        names = sql.SQL(", ").join(sql.Identifier(name) for name in columns)
        values = sql.SQL(", ").join(sql.Placeholder(name) for name in columns)
        params = _jsonb(columns)
        if session_id is None:
            statement = _INSERT_SESSION.format(columns=names, values=values)
        else:
            statement = _UPSERT_SESSION.format(
                columns=names, values=values,
                assignments=sql.SQL(", ").join(
                    sql.SQL("{} = excluded.{}").format(sql.Identifier(name), sql.Identifier(name)) for name in columns
                ),
            )
            params["session_id"] = session_id
        with self._connection() as conn:
            (created,) = conn.execute(statement, params).fetchone()
        return created

    def update_session(self, session_id: str, fields: Mapping[str, Any]) -> None:
        columns = session_fields(fields)
        if not columns:
            return
        statement = _UPDATE_SESSION.format(
            assignments=sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in columns
            )
        )
        with self._connection() as conn:
            updated = conn.execute(statement, {**_jsonb(columns), "session_id": session_id}).rowcount
        if updated != 1:
            raise GalleryError(f"training session {session_id} is not in face_training_sessions at {self.address}")

    def read_config(self) -> dict[str, Any]:
        with self._connection() as conn:
            return dict(conn.execute("select key, value from face_recognition_config order by key").fetchall())

    def write_config(self, key: str, value: Any) -> None:
        try:  # NaN or inf: jsonb would refuse it anyway, with a worse message
            json.dumps(value, allow_nan=False, default=str)
        except ValueError:
            raise ValueError(f"config {key}: {value!r} is not a finite JSON value; nothing is written") from None
        with self._connection() as conn:
            conn.execute(
                "insert into face_recognition_config (key, value) values (%s, %s) "
                "on conflict (key) do update set value = excluded.value, updated_at = now()",
                [key, Jsonb(value)],
            )


    # -- recognition -----------------------------------------------------------------------------

    def pending_events(self) -> list[EventPhotos]:
        with self._connection() as conn:
            return [EventPhotos(*row) for row in conn.execute(_PENDING_EVENTS)]

    def pending_photos(self, event_id: str | None) -> list[PendingPhoto]:
        with self._connection() as conn:
            rows = conn.execute(_PENDING_PHOTOS, {"event_id": event_id}).fetchall()
        return [
            PendingPhoto(photo_id, event, url, tuple(_existing_face(face) for face in faces))
            for photo_id, event, url, faces in rows
        ]

    def write_suggestions(self, rows: Sequence[SuggestionRow], *, batch_size: int = 500) -> SuggestionReport:
        report = SuggestionReport(rows=len(rows))
        with self._connection() as conn:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                with conn.transaction():
                    offered, inserted, eligible, updated, skipped = conn.execute(
                        _SUGGESTION_BATCH, _suggestion_params(batch)
                    ).fetchone()
                report.inserted += inserted
                report.updated += updated
                report.unchanged += (offered - inserted) + (eligible - updated)
                report.skipped += len(skipped or ())
                report.skipped_ids.extend(skipped or ())
        return report

    def unknown_faces(self) -> list[UnknownFaceRow]:
        with self._connection() as conn:
            register_vector(conn)
            rows = conn.execute(_UNKNOWN_FACES).fetchall()
        return [UnknownFaceRow(face_id, photo_id, event_id, np.asarray(vector.to_numpy(), dtype=np.float32)) for face_id, photo_id, event_id, vector in rows]


def _existing_face(face: Mapping[str, Any]) -> ExistingFace:
    return ExistingFace(
        face_id=face["id"], bbox=face["bbox"], person_id=face["person_id"], verified=bool(face["verified"]),
        insightface_bbox=face["insightface_bbox"], context=face["training_context"],
    )


def _suggestion_params(batch: Sequence[SuggestionRow]) -> dict[str, list]:
    return {
        "ids": [r.face_id for r in batch],
        "photo_ids": [r.photo_id for r in batch],
        "person_ids": [r.person_id for r in batch],
        "confidences": [r.confidence for r in batch],
        "bboxes": [Jsonb(dict(r.bbox)) for r in batch],
        "descriptors": [r.vector_literal() for r in batch],
        "det_scores": [float(r.det_score) for r in batch],
        "detected": [Jsonb(dict(r.detected_bbox)) for r in batch],
        "contexts": [Jsonb(finite_json(r.context)) for r in batch],
        "updates": [r.replaces is not None for r in batch],
        "read_persons": [r.replaces.person_id if r.replaces else None for r in batch],
        "read_bboxes": [Jsonb(dict(r.replaces.bbox)) if r.replaces and r.replaces.bbox is not None else None for r in batch],
    }


def _write_batch(conn: psycopg.Connection, batch: Sequence[DescriptorUpdate], report: WriteBackReport, held: dict[str, str]) -> None:
    """Write one batch in one transaction; ``held`` gets the version of every row that holds its update after it."""
    with conn.transaction():
        rows = conn.execute(_WRITE_BATCH, _batch_params(batch)).fetchall()
        eligible = {face_id for face_id, _, _ in rows}
        skipped = [u for u in batch if u.face_id not in eligible]
        reasons = dict(conn.execute(_SKIP_REASONS, _identity_params(skipped)).fetchall()) if skipped else {}
    written = sum(1 for _, _, wrote in rows if wrote)
    report.written += written
    report.unchanged += len(eligible) - written
    held.update((face_id, version) for face_id, version, _ in rows)
    for update in skipped:
        report.skip(update.face_id, reasons.get(update.face_id, "changed"))


def descriptor_digest(vector: np.ndarray) -> str:
    """md5 of pgvector's binary form of ``vector`` (``vector_send``: dim and a zero as int16, then
    big-endian float4s), the same as ``md5(vector_send(insightface_descriptor))`` in SQL."""
    return hashlib.md5(struct.pack(">HH", len(vector), 0) + vector.astype(">f4").tobytes(), usedforsecurity=False).hexdigest()


def _still_held(
    conn: psycopg.Connection, updates: Sequence[DescriptorUpdate], known: Mapping[str, tuple[str, str]], digests: Mapping[str, str]
) -> dict[str, str]:
    """The faces whose row is still at the version the ledger recorded for this very update (same
    digest): face id -> that version. Their rows hold the update; no need to compare them."""
    expected = {u.face_id: known[u.face_id][1] for u in updates if u.face_id in known and known[u.face_id][0] == digests[u.face_id]}
    if not expected:
        return {}
    versions = dict(conn.execute(_ROW_VERSIONS, {"ids": list(expected)}).fetchall())
    return {face_id: version for face_id, version in expected.items() if versions.get(face_id) == version}


def _changed_rows(
    conn: psycopg.Connection, updates: Sequence[DescriptorUpdate], report: WriteBackReport, held: dict[str, str]
) -> list[DescriptorUpdate]:
    """The updates that would change their row; the others are counted unchanged (``held`` gets
    their row's version), or skipped when the row is no longer as read (the write would skip it too)."""
    report.compared += len(updates)
    changed = []
    for start in range(0, len(updates), COMPARE_BATCH_SIZE):
        batch = updates[start : start + COMPARE_BATCH_SIZE]
        # A DescriptorUpdate's boxes and confidence are finite by construction; only its context is
        # free-form, and json_text writes a non-finite value in it as null (as the write does).
        rows = [
            {"n": n, "id": u.face_id, "person_id": u.person_id, "bbox": exact_json(u.bbox), "digest": descriptor_digest(u.descriptor),
             "confidence": float(u.confidence), "detected_bbox": u.detected_bbox.to_json(), "context": u.context}
            for n, u in enumerate(batch)
        ]
        state = {n: (reason, same, version) for n, reason, same, version in conn.execute(_COMPARE_BATCH, {"rows": Jsonb(rows, dumps=json_text)})}
        for n, update in enumerate(batch):
            reason, same, version = state[n]
            if reason is not None:
                report.skip(update.face_id, reason)
            elif same:
                report.unchanged += 1
                held[update.face_id] = version
            else:
                changed.append(update)
    return changed


def _identity_params(batch: Sequence[DescriptorUpdate]) -> dict[str, list]:
    """What a row must still be for its update: the same person and box as read."""
    return {
        "ids": [u.face_id for u in batch],
        "person_ids": [u.person_id for u in batch],
        "bboxes": [Jsonb(exact_json(u.bbox)) for u in batch],
    }


def _batch_params(batch: Sequence[DescriptorUpdate]) -> dict[str, list]:
    return {
        "ids": [u.face_id for u in batch],
        "person_ids": [u.person_id for u in batch],
        "bboxes": [Jsonb(exact_json(u.bbox)) for u in batch],
        "descriptors": [u.vector_literal() for u in batch],
        "confidences": [float(u.confidence) for u in batch],
        "detected": [Jsonb(u.detected_bbox.to_json()) for u in batch],
        "contexts": [Jsonb(finite_json(u.context)) for u in batch],
    }


def _jsonb(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Session columns as query parameters: ``metrics`` is jsonb, with NaN and inf as null (jsonb
    refuses them, and the session row must not be lost for a metric that could not be computed);
    a non-finite number in a plain column is null too."""
    def value(name: str, v: Any) -> Any:
        if name == "metrics" and v is not None:
            return Jsonb(finite_json(v))
        return finite_json(v) if isinstance(v, float) else v

    return {name: value(name, v) for name, v in columns.items()}
