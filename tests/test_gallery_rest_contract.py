"""Contract tests of the REST transport (:class:`RestGallery`) against a recording fake of PostgREST.

No real PostgREST can run here, so these tests pin the HTTP contract instead: the exact requests the
transport sends (method, path, decoded query, headers, JSON body) and how it reads what PostgREST
answers (JSON arrays, pgvector as text, ``real`` rounded to float32, ``Content-Range``, PGRST error
bodies). The fake is a real HTTP server on 127.0.0.1. It keeps its tables in memory and evaluates
the filters the transport uses (``eq``, ``is``, ``not.is``, ``in``, ``gt``, ``gte``, ``lte``,
``cs``, jsonb ``eq``, ``col->>key``, embedded ``a.b.col`` paths with PostgREST's ``!inner``
semantics), so write-back can run twice against the same rows and a guard that does not hold really
matches nothing. Embeds are projected to the columns asked for; ``photos`` embed their ``events`` and
all their ``photo_faces``, and ``photo_faces`` rows seeded without a stored ``photos`` embed get
theirs from the ``photos`` table. Inserts into ``photo_faces`` check the foreign keys.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

from facepipeline.faces import VerifiedFace
from facepipeline.gallery.base import (
    SUGGESTED_BY,
    DescriptorUpdate,
    EventPhotos,
    ExistingFace,
    FaceLabel,
    Gallery,
    GalleryError,
    GalleryUnavailable,
    PendingPhoto,
    SuggestionReport,
    SuggestionRow,
    UnknownFaceRow,
    WriteBackInterrupted,
    photos_fingerprint,
)
from facepipeline.gallery.rest import RestGallery
from facepipeline.geometry import BBox
from tests.conftest import serve_http
from facepipeline.sources.base import FaceFilters, RejectedFace, open_source

KEY = "sb_secret_contracttest_0123456789"
READ_SELECT = (
    "id,person_id,bbox,photos!inner(id,url,event_id,events(id,name,date)),"
    "people!inner(real_name,telegram_name,telegram_nickname)"
)
READ_SELECT_DATED = READ_SELECT.replace("events(", "events!inner(")
CURRENT_SELECT = (
    "id,verified,person_id,bbox,insightface_descriptor,insightface_confidence,insightface_bbox,"
    "training_used,training_context"
)


# -- the fake PostgREST ----------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any

    def param(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


@dataclass
class Fault:
    method: str
    after: int = 0
    """Matching requests to answer normally first."""
    status: int = 500
    body: Any = None
    drop: bool = False
    """Close the connection without answering (a network failure mid-request)."""


def pgvector_text(values) -> str:
    """pgvector's output: float4 values, shortest form."""
    return "[" + ",".join(_float4(v) for v in values) + "]"


def _float4(value) -> str:
    text = str(np.float32(value))
    return text[:-2] if text.endswith(".0") else text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_contains(whole: Any, part: Any) -> bool:
    """jsonb ``@>`` for objects of scalars: numbers by value, booleans apart from numbers."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _json_contains(whole[k], v) for k, v in part.items())
    if isinstance(part, bool) or isinstance(whole, bool):
        return type(part) is type(whole) and part == whole
    return part == whole


def _matches(value: Any, op: str, arg: str) -> bool:
    if op == "not.is":
        return not _matches(value, "is", arg)
    if op == "is":
        return {"null": value is None, "true": value is True, "false": value is False}[arg]
    if op == "cs":
        return _json_contains(value, json.loads(arg))
    if value is None:
        return False
    if isinstance(value, (dict, list)):  # jsonb: ``eq`` compares values, as ``col = '{...}'::jsonb`` does
        if op != "eq":
            raise PostgrestError(400, "42883", f"operator does not exist: jsonb {op}")
        wanted = json.loads(arg)
        return _json_contains(value, wanted) and _json_contains(wanted, value)
    if op == "in":
        return _text(value) in {v.strip('"') for v in arg.strip("()").split(",")}
    text = _text(value)
    return {"eq": text == arg, "gt": text > arg, "gte": text >= arg, "lte": text <= arg}[op]


def _select_items(select: str) -> list[tuple[str, str | None]]:
    """Top-level items of a select list: ``id,photos!inner(id,url)`` -> ``[("id", None), ("photos", "id,url")]``."""
    items, depth, current = [], 0, ""
    for char in select + ",":
        if char == "," and depth == 0:
            name, paren, inner = current.partition("(")
            items.append((name.split("!")[0], inner[:-1] if paren else None))
            current = ""
            continue
        depth += (char == "(") - (char == ")")
        current += char
    return items


def _project_row(row: dict[str, Any], select: str) -> dict[str, Any]:
    items = _select_items(select)
    if [name for name, _ in items] == ["*"]:
        return dict(row)
    shown = {}
    for name, inner in items:
        value = row.get(name)
        if inner is not None and isinstance(value, dict):
            value = _project_row(value, inner)
        elif inner is not None and isinstance(value, list):
            value = [_project_row(v, inner) for v in value]
        shown[name] = value
    return shown


def _is_inner(select: str, embed: str) -> bool:
    return re.search(rf"(^|[,(]){embed}!inner\(", select) is not None


class PostgrestError(Exception):
    def __init__(self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}


class FakePostgrest:
    """An in-memory PostgREST for the SPEC tables, recording every request."""

    READS_AS_FLOAT4 = ("insightface_confidence",)

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {
            "photo_faces": [], "face_training_sessions": [], "face_recognition_config": [], "photos": [], "events": [],
            "people": [],
        }
        self.requests: list[Seen] = []
        self.faults: list[Fault] = []
        self.before: list[Callable[[Seen], None]] = []
        self.url = ""
        self.lock = threading.Lock()

    # seeding and inspection
    def put(self, table: str, **row: Any) -> dict[str, Any]:
        row = self._stored(row)
        self.tables[table].append(row)
        return row

    def row(self, table: str, row_id: str) -> dict[str, Any]:
        return next(r for r in self.tables[table] if r["id"] == row_id)

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        return [r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)]

    def _stored(self, values: dict[str, Any]) -> dict[str, Any]:
        """Values as the database keeps them: vector(512) and real have their own precision."""
        values = dict(values)
        vector = values.get("insightface_descriptor")
        if vector is not None:
            numbers = json.loads(vector) if isinstance(vector, str) else list(vector)
            if len(numbers) != 512:
                raise PostgrestError(400, "22000", f"expected 512 dimensions, not {len(numbers)}")
            values["insightface_descriptor"] = pgvector_text(numbers)
        for column in self.READS_AS_FLOAT4:
            if values.get(column) is not None:
                values[column] = float(_float4(values[column]))
        return values

    # answering
    def answer(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        table = seen.path.removeprefix("/rest/v1/")
        if not seen.path.startswith("/rest/v1/") or table not in self.tables:
            raise PostgrestError(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
        rows = self.tables[table]
        select = seen.param("select") or "*"
        prefer = seen.headers.get("prefer", "")
        if seen.method == "POST":
            return self._insert(table, seen, prefer, select)
        matched = [shown for _, shown in self._filter(table, rows, seen.query, select)]
        if seen.method == "GET":
            if seen.param("order"):
                column = seen.param("order").removesuffix(".asc")
                matched.sort(key=lambda r: r[column])
            offset = int(seen.param("offset") or 0)
            limit = int(seen.param("limit")) if seen.param("limit") else None
            matched = matched[offset : None if limit is None else offset + limit]
            content_range = f"{offset}-{offset + len(matched) - 1}/*" if matched else "*/*"
            return 200, {"Content-Range": content_range}, self._project(matched, select)
        if seen.method == "PATCH":
            updated = [original for original, _ in self._filter(table, rows, seen.query, select)]
            self._check_references(table, seen.body)
            for row in updated:
                row.update(self._stored(seen.body))
            content_range = f"0-{len(updated) - 1}/*" if updated else "*/*"
            if "return=representation" in prefer:
                return 200, {"Content-Range": content_range}, self._project(updated, select)
            return 204, {"Content-Range": content_range}, None
        raise PostgrestError(405, "PGRST117", f"Unsupported HTTP method: {seen.method}")

    def _insert(self, table: str, seen: Seen, prefer: str, select: str) -> tuple[int, dict[str, str], Any]:
        """One statement: a conflict or a missing reference fails every row of a bulk insert."""
        bodies = seen.body if isinstance(seen.body, list) else [seen.body]
        rows = [self._stored(body) for body in bodies]
        for values in rows:
            self._check_references(table, values)
        conflict = seen.param("on_conflict") or "id"

        def existing(values: dict[str, Any]) -> dict[str, Any] | None:
            key = values.get(conflict)
            return next((r for r in self.tables[table] if key is not None and r.get(conflict) == key), None)

        merge, ignore = "resolution=merge-duplicates" in prefer, "resolution=ignore-duplicates" in prefer
        if not (merge or ignore) and any(existing(values) is not None for values in rows):
            raise PostgrestError(409, "23505", "duplicate key value violates unique constraint")
        written = []
        for values in rows:
            row = existing(values)
            if row is not None and ignore:
                continue  # on conflict do nothing: not returned either
            if row is not None:
                row.update(values)
            else:
                row = {"id": str(uuid.uuid4()), "created_at": datetime.now(UTC).isoformat(), **values}
                self.tables[table].append(row)
            written.append(row)
        if "return=representation" in prefer:
            return 201, {"Content-Range": "*/*"}, self._project(written, select)
        return 201, {"Content-Range": "*/*"}, None

    def _find(self, table: str, row_id: Any) -> dict[str, Any] | None:
        return next((r for r in self.tables[table] if row_id is not None and r["id"] == row_id), None)

    def _check_references(self, table: str, values: dict[str, Any]) -> None:
        """``photo_faces``' foreign keys to ``photos`` and ``people``."""
        if table != "photo_faces":
            return
        for column, target in (("photo_id", "photos"), ("person_id", "people")):
            if values.get(column) is not None and self._find(target, values[column]) is None:
                raise PostgrestError(
                    409, "23503", f'insert or update on table "photo_faces" violates foreign key constraint "photo_faces_{column}_fkey"',
                    f'Key ({column})=({values[column]}) is not present in table "{target}".',
                )

    def _view(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """The row with the embeds PostgREST would join to it."""
        view = dict(row)
        if table == "photos":
            if "events" not in view:
                view["events"] = self._find("events", view.get("event_id"))
            view["photo_faces"] = [dict(f) for f in self.tables["photo_faces"] if f.get("photo_id") == view["id"]]
        elif table == "photo_faces" and "photos" not in view:
            photo = self._find("photos", view.get("photo_id"))
            view["photos"] = None if photo is None else {**photo, "events": self._find("events", photo.get("event_id"))}
        return view

    def _filter(
        self, table: str, rows: list[dict[str, Any]], query: list[tuple[str, str]], select: str
    ) -> list[tuple[dict, dict]]:
        """``(stored row, row as shown)`` for the rows the filters keep."""
        kept = []
        for original in rows:
            row: dict[str, Any] | None = self._view(table, original)
            for column, expression in query:
                if column in ("select", "order", "limit", "offset", "on_conflict", "columns"):
                    continue
                op, _, arg = expression.partition(".")
                if op == "not":
                    inner, _, arg = arg.partition(".")
                    op = f"not.{inner}"
                if op not in ("eq", "is", "not.is", "in", "gt", "gte", "lte", "cs"):
                    message = f'"failed to parse filter ({expression})"'
                    raise PostgrestError(400, "PGRST100", message, f"unexpected operator {op}")
                *path, name = column.split(".")
                name, arrow, key = name.partition("->>")
                holder: Any = row
                for embed in path:
                    holder = holder.get(embed) if isinstance(holder, dict) else None
                value = holder.get(name) if isinstance(holder, dict) else None
                if arrow:  # ``->>``: the key's value as text
                    value = value.get(key) if isinstance(value, dict) else None
                    value = json.dumps(value) if isinstance(value, (dict, list)) else _text(value)
                if _matches(value, op, arg):
                    continue
                row = self._miss(row, path, select)
                if row is None:
                    break
            if row is not None:
                kept.append((original, row))
        return kept

    @staticmethod
    def _miss(row: dict[str, Any], path: list[str], select: str) -> dict[str, Any] | None:
        """A filter that failed: PostgREST nulls the nearest embed that is not ``!inner``; with
        ``!inner`` all the way up (or a top-level column) the row itself goes."""
        for depth in range(len(path), 0, -1):
            if not _is_inner(select, path[depth - 1]):
                row = parent = copy.deepcopy(row)
                for embed in path[: depth - 1]:
                    parent = parent[embed]
                parent[path[depth - 1]] = None
                return row
        return None

    @staticmethod
    def _project(rows: list[dict[str, Any]], select: str) -> list[dict[str, Any]]:
        return [_project_row(r, select) for r in rows]


@pytest.fixture()
def postgrest() -> Iterator[FakePostgrest]:
    fake = FakePostgrest()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body go out in separate writes: without this, delayed ACKs cost 40 ms a request
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            seen = Seen(
                self.command, parts.path, parse_qsl(parts.query, keep_blank_values=True),
                {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None,
            )
            with fake.lock:
                fake.requests.append(seen)
                for hook in fake.before:
                    hook(seen)
                fault = next((f for f in fake.faults if f.method == self.command), None)
                if fault is not None and fault.after > 0:
                    fault.after -= 1
                    fault = None
                elif fault is not None:
                    fake.faults.remove(fault)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    return
                if fault is not None:
                    status, headers, body = fault.status, {}, fault.body
                else:
                    try:
                        status, headers, body = fake.answer(seen)
                    except PostgrestError as exc:
                        status, headers, body = exc.status, {}, exc.body
            if isinstance(body, str):
                payload, content_type = body.encode(), "text/html"
            else:
                payload = b"" if body is None else json.dumps(body).encode()
                content_type = "application/json; charset=utf-8"
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", content_type)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = _handle  # noqa: N815 (http.server's naming)

        def log_message(self, *args) -> None:
            pass

    with serve_http(Handler) as url:
        fake.url = url
        yield fake


@pytest.fixture()
def gallery(postgrest: FakePostgrest) -> Iterator[RestGallery]:
    rest = RestGallery(postgrest.url, KEY, timeout_s=5)
    yield rest
    rest.close()


def assert_no_key(exc: BaseException, key: str = KEY) -> None:
    for text in (str(exc), repr(exc), "".join(traceback.format_exception(exc))):
        assert key not in text


def assert_authenticated(seen: Seen, key: str = KEY) -> None:
    assert seen.headers["apikey"] == key
    assert seen.headers["authorization"] == f"Bearer {key}"


# -- a small gallery -------------------------------------------------------------------------------


def ids(prefix: int, n: int) -> str:
    return f"{prefix:08d}-0000-4000-8000-{n:012d}"


ANN, BOB, CAROL, DAN = (ids(1, n) for n in range(1, 5))
SPRING = {"id": ids(3, 1), "name": "Spring party", "date": "2024-03-10"}
SUMMER = {"id": ids(3, 2), "name": "Summer camp", "date": "2024-07-01"}
PEOPLE = {
    ANN: {"real_name": "Ann", "telegram_name": "Ann T", "telegram_nickname": "@ann"},
    BOB: {"real_name": None, "telegram_name": "Bob T", "telegram_nickname": "@bob"},
    CAROL: {"real_name": None, "telegram_name": None, "telegram_nickname": "@carol"},
    DAN: {"real_name": "Dan", "telegram_name": None, "telegram_nickname": None},
}
PHOTOS = {
    1: {"id": ids(2, 1), "url": "https://cdn.example/p1.jpg", "event_id": SPRING["id"], "events": SPRING},
    2: {"id": ids(2, 2), "url": "https://cdn.example/p2.jpg", "event_id": SUMMER["id"], "events": SUMMER},
    3: {"id": ids(2, 3), "url": "https://cdn.example/p3.jpg", "event_id": None, "events": None},
}
BOX = {"x": 10, "y": 20, "width": 30, "height": 40}


def seed_face(
    fake: FakePostgrest, n: int, person: str | None, photo: int, *, verified: bool = True, bbox: Any = None, **columns: Any
) -> str:
    face_id = ids(0, n)
    written = {
        "insightface_descriptor": None, "insightface_confidence": None, "insightface_bbox": None, "training_used": False,
        "training_context": None, **columns,
    }
    fake.put(
        "photo_faces", id=face_id, photo_id=PHOTOS[photo]["id"], person_id=person, verified=verified,
        bbox=copy.deepcopy(BOX if bbox is None else bbox), photos=copy.deepcopy(PHOTOS[photo]),
        people=copy.deepcopy(PEOPLE.get(person)), **written,
    )
    return face_id


@pytest.fixture()
def small_gallery(postgrest: FakePostgrest) -> FakePostgrest:
    """Faces 1-7: Ann and Bob on photo 1 (spring), Ann on photo 2 (summer), Carol and Ann on photo 3
    (no event); Dan's face is not verified and face 6 has nobody."""
    seed_face(postgrest, 1, ANN, 1)
    seed_face(postgrest, 2, BOB, 1)
    seed_face(postgrest, 3, ANN, 2)
    seed_face(postgrest, 4, CAROL, 3)
    seed_face(postgrest, 5, DAN, 2, verified=False)
    seed_face(postgrest, 6, None, 2)
    seed_face(postgrest, 7, ANN, 3)
    return postgrest


def expected_face(n: int, person: str, name: str, photo: int) -> VerifiedFace:
    p = PHOTOS[photo]
    event = p["events"] or {}
    return VerifiedFace(
        ids(0, n), person, name, p["url"], BBox(10, 20, 30, 40), p["event_id"], event.get("name"), p["id"], event.get("date")
    )


ALL_FACES = {
    1: expected_face(1, ANN, "Ann", 1),
    2: expected_face(2, BOB, "Bob T", 1),
    3: expected_face(3, ANN, "Ann", 2),
    4: expected_face(4, CAROL, "@carol", 3),
    7: expected_face(7, ANN, "Ann", 3),
}


# -- reading ---------------------------------------------------------------------------------------


def test_rest_contract_read_sends_one_request_and_builds_faces(small_gallery: FakePostgrest, gallery: RestGallery) -> None:
    read = gallery.read(FaceFilters())

    assert read.faces == list(ALL_FACES.values())
    assert read.rejected == [] and read.dropped_by_min_faces == 0
    (seen,) = small_gallery.requests
    assert (seen.method, seen.path) == ("GET", "/rest/v1/photo_faces")
    assert seen.query == [
        ("select", READ_SELECT), ("verified", "eq.true"), ("person_id", "not.is.null"), ("order", "id.asc"),
        ("limit", "1000"),
    ]
    assert_authenticated(seen)
    assert seen.headers["accept-profile"] == "public"


@pytest.mark.parametrize(
    ("filters", "select", "extra_params", "faces"),
    [
        pytest.param(
            FaceFilters(event_ids=(SPRING["id"],)), READ_SELECT, [("photos.event_id", f"in.({SPRING['id']})")], [1, 2],
            id="event_ids",
        ),
        pytest.param(
            FaceFilters(date_from=date(2024, 5, 1)), READ_SELECT_DATED, [("photos.events.date", "gte.2024-05-01")], [3],
            id="date_from-drops-faces-without-event",
        ),
        pytest.param(
            FaceFilters(date_from=date(2024, 3, 10), date_to=date(2024, 5, 1)), READ_SELECT_DATED,
            [("photos.events.date", "gte.2024-03-10"), ("photos.events.date", "lte.2024-05-01")], [1, 2], id="date_range",
        ),
        pytest.param(
            FaceFilters(person_ids=(ANN, CAROL)), READ_SELECT, [("person_id", f"in.({ANN},{CAROL})")], [1, 3, 4, 7],
            id="person_ids",
        ),
        pytest.param(
            FaceFilters(person_ids=(BOB,), include_co_occurring=True), READ_SELECT, [], [1, 2, 3, 7],
            id="co-occurring-filters-after-the-read",
        ),
        pytest.param(FaceFilters(min_faces_per_person=2), READ_SELECT, [], [1, 3, 7], id="min_faces"),
    ],
)
def test_rest_contract_read_filters(
    small_gallery: FakePostgrest,
    gallery: RestGallery,
    filters: FaceFilters,
    select: str,
    extra_params: list[tuple[str, str]],
    faces: list[int],
) -> None:
    read = gallery.read(filters)

    assert [f.face_id for f in read.faces] == [ids(0, n) for n in faces]
    assert read.faces == [ALL_FACES[n] for n in faces]
    (seen,) = small_gallery.requests
    assert seen.query == [
        ("select", select), ("verified", "eq.true"), ("person_id", "not.is.null"), *extra_params, ("order", "id.asc"),
        ("limit", "1000"),
    ]


def test_rest_contract_read_co_occurring_counts_added_people(small_gallery: FakePostgrest, gallery: RestGallery) -> None:
    read = gallery.read(FaceFilters(person_ids=(BOB,), include_co_occurring=True))
    assert read.added_as_co_occurring == 1  # Ann, on photo 1 with Bob
    assert gallery.read(FaceFilters(min_faces_per_person=2)).dropped_by_min_faces == 2  # Bob's and Carol's


@pytest.mark.parametrize(("rows", "requests"), [(5, 3), (4, 3), (1, 1)])
def test_rest_contract_read_paginates_by_id_until_a_short_page(postgrest: FakePostgrest, rows: int, requests: int) -> None:
    for n in range(rows, 0, -1):  # stored out of order: the order comes from order=id.asc
        seed_face(postgrest, n, ANN, 1)
    rest = RestGallery(postgrest.url, KEY, page_size=2)
    try:
        read = rest.read(FaceFilters())
    finally:
        rest.close()

    assert [f.face_id for f in read.faces] == [ids(0, n) for n in range(1, rows + 1)]
    pages = postgrest.seen("GET", "/rest/v1/photo_faces")
    assert len(pages) == requests
    assert [p.param("id") for p in pages] == [None] + [f"gt.{ids(0, 2 * k)}" for k in range(1, requests)]
    assert all(p.param("limit") == "2" and p.param("order") == "id.asc" for p in pages)


def test_rest_contract_bad_bboxes_are_rejected_with_the_reason(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    seed_face(postgrest, 1, ANN, 1)
    seed_face(postgrest, 2, ANN, 1, bbox={"x": 1, "y": 2})
    seed_face(postgrest, 3, ANN, 1, bbox={"x": 1, "y": 2, "width": -5, "height": 4})
    seed_face(postgrest, 4, ANN, 1, bbox=[1, 2, 3, 4])
    seed_face(postgrest, 5, ANN, 1, bbox={"x": "1", "y": 2, "width": 3, "height": 4})

    read = gallery.read(FaceFilters())

    assert [f.face_id for f in read.faces] == [ids(0, 1)]
    assert read.rejected == [
        RejectedFace(ids(0, 2), "bad bbox: bbox is missing width, height"),
        RejectedFace(ids(0, 3), "bad bbox: bbox must have a positive size, got -5x4"),
        RejectedFace(ids(0, 4), "bad bbox: bbox must be an object with x, y, width, height; got list"),
        RejectedFace(ids(0, 5), "bad bbox: bbox x must be a number, got '1'"),
    ]


def test_rest_contract_face_labels(small_gallery: FakePostgrest) -> None:
    rest = RestGallery(small_gallery.url, KEY, page_size=3)
    try:
        labels = rest.face_labels()
    finally:
        rest.close()

    assert labels == [
        FaceLabel(ids(0, n), PHOTOS[photo]["id"], PHOTOS[photo]["event_id"], person)
        for n, photo, person in [(1, 1, ANN), (2, 1, BOB), (3, 2, ANN), (4, 3, CAROL), (7, 3, ANN)]
    ]
    first, second = small_gallery.requests
    assert first.query == [
        ("select", "id,photo_id,person_id,photos!inner(event_id)"), ("verified", "eq.true"), ("person_id", "not.is.null"),
        ("order", "id.asc"), ("limit", "3"),
    ]
    assert second.param("id") == f"gt.{ids(0, 3)}"


def test_rest_contract_untrained_face_ids_are_verified_labelled_and_not_training_used(postgrest: FakePostgrest) -> None:
    seed_face(postgrest, 1, ANN, 1, training_used=True)
    seed_face(postgrest, 2, BOB, 1)                       # training_used false
    seed_face(postgrest, 3, ANN, 2, training_used=None)   # never set: as untrained as false
    seed_face(postgrest, 4, CAROL, 3, verified=False)     # a suggestion, not a label
    seed_face(postgrest, 5, None, 3)                      # verified but nobody
    rest = RestGallery(postgrest.url, KEY, page_size=1)
    try:
        untrained = rest.untrained_face_ids()
    finally:
        rest.close()

    assert untrained == [ids(0, 2), ids(0, 3)]
    assert postgrest.requests[0].query == [
        ("select", "id"), ("verified", "eq.true"), ("person_id", "not.is.null"), ("training_used", "not.is.true"),
        ("order", "id.asc"), ("limit", "1"),
    ]
    assert len(postgrest.requests) == 3  # keyset pages of one row, until a short page


# -- writing descriptors ---------------------------------------------------------------------------


def unit_vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def update_for(n: int, *, session: str = "s-new") -> DescriptorUpdate:
    """Ann's face ``n`` as read (box 10,20,30,40), with its descriptor and context."""
    return DescriptorUpdate(
        face_id=ids(0, n), person_id=ANN, bbox=BBox(10, 20, 30, 40), descriptor=unit_vector(n), confidence=0.8123456789,
        detected_bbox=BBox(11.123, 21.456, 28.5, 39.0),
        context={"event_id": SPRING["id"], "co_occurring_people": [BOB], "training_session_id": session},
    )


def as_written(update: DescriptorUpdate) -> dict[str, Any]:
    """What the row holds once the update is written (before the database's own rounding)."""
    return {
        "insightface_descriptor": update.descriptor.tolist(), "insightface_confidence": update.confidence,
        "insightface_bbox": {"x": 11.12, "y": 21.46, "width": 28.5, "height": 39.0}, "training_used": True,
        "training_context": dict(update.context),
    }


@pytest.fixture()
def write_back_gallery(postgrest: FakePostgrest) -> FakePostgrest:
    """1: to write (box with an extra key); 2: already holds the values (ints for floats, another
    session); 3: no longer verified; 4: relabelled; 5: re-boxed; 6 is deleted."""
    seed_face(postgrest, 1, ANN, 1, bbox={**BOX, "source": "manual"})
    held = as_written(update_for(2))
    held["insightface_bbox"] = {"x": 11.12, "y": 21.46, "width": 28.5, "height": 39}
    held["training_context"] = {**held["training_context"], "training_session_id": "s-old"}
    seed_face(postgrest, 2, ANN, 1, **held)
    seed_face(postgrest, 3, ANN, 1, verified=False)
    seed_face(postgrest, 4, BOB, 1)
    seed_face(postgrest, 5, ANN, 1, bbox={**BOX, "x": 11})
    return postgrest


def test_rest_contract_write_back_patches_only_changed_rows_behind_guards(
    write_back_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    updates = [update_for(n) for n in range(1, 7)]

    report = gallery.write_descriptors(updates)

    assert report.as_dict() == {"faces": 6, "written": 1, "unchanged": 1, "skipped": 4, "batches_committed": 1}
    assert report.skipped_ids == [ids(0, n) for n in (3, 4, 5, 6)]
    read, patch = write_back_gallery.requests
    assert (read.method, read.path) == ("GET", "/rest/v1/photo_faces")
    assert read.query == [("select", CURRENT_SELECT), ("id", f"in.({','.join(ids(0, n) for n in range(1, 7))})")]
    assert (patch.method, patch.path) == ("PATCH", "/rest/v1/photo_faces")
    assert patch.query == [
        ("id", f"eq.{ids(0, 1)}"), ("verified", "is.true"), ("person_id", f"eq.{ANN}"),
        ("bbox", 'cs.{"x": 10, "y": 20, "width": 30, "height": 40}'), ("select", "id"),
    ]
    assert patch.headers["prefer"] == "return=representation"
    assert patch.headers["content-type"] == "application/json"
    assert_authenticated(patch)
    assert set(patch.body) == {
        "insightface_descriptor", "insightface_confidence", "insightface_bbox", "training_used", "training_context",
    }
    assert isinstance(patch.body["insightface_descriptor"], str)  # a pgvector literal
    sent = np.array(json.loads(patch.body["insightface_descriptor"]), dtype=np.float32)
    assert np.array_equal(sent, updates[0].descriptor)
    assert {k: v for k, v in patch.body.items() if k != "insightface_descriptor"} == {
        k: v for k, v in as_written(updates[0]).items() if k != "insightface_descriptor"
    }
    row = write_back_gallery.row("photo_faces", ids(0, 1))
    assert np.array_equal(np.array(json.loads(row["insightface_descriptor"]), dtype=np.float32), updates[0].descriptor)
    for n in (3, 4, 5):
        assert write_back_gallery.row("photo_faces", ids(0, n))["insightface_descriptor"] is None


def test_rest_contract_write_back_rerun_changes_nothing(write_back_gallery: FakePostgrest, gallery: RestGallery) -> None:
    gallery.write_descriptors([update_for(n) for n in range(1, 7)])
    write_back_gallery.requests.clear()

    again = gallery.write_descriptors([update_for(n, session="s-newer") for n in range(1, 7)])

    assert again.as_dict() == {"faces": 6, "written": 0, "unchanged": 2, "skipped": 4, "batches_committed": 1}
    assert write_back_gallery.seen("PATCH") == []


@pytest.mark.parametrize(
    "changed",
    [
        {"insightface_descriptor": None},
        {"insightface_confidence": 0.5},
        {"insightface_bbox": {"x": 11.12, "y": 21.46, "width": 28.5, "height": 38}},
        {"training_used": False},
        {"training_context": {"event_id": SPRING["id"], "co_occurring_people": [], "training_session_id": "s-old"}},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_rest_contract_write_back_rewrites_a_row_when_any_column_differs(
    write_back_gallery: FakePostgrest, gallery: RestGallery, changed: dict[str, Any]
) -> None:
    write_back_gallery.row("photo_faces", ids(0, 2)).update(changed)

    report = gallery.write_descriptors([update_for(2)])

    assert (report.written, report.unchanged) == (1, 0)
    (patch,) = write_back_gallery.seen("PATCH")
    assert patch.param("id") == f"eq.{ids(0, 2)}"


def test_rest_contract_write_back_counts_a_row_changed_after_the_read_as_skipped(
    write_back_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    def relabel_before_patch(seen: Seen) -> None:
        if seen.method == "PATCH":
            write_back_gallery.row("photo_faces", ids(0, 1))["person_id"] = BOB

    write_back_gallery.before.append(relabel_before_patch)

    report = gallery.write_descriptors([update_for(1)])

    assert (report.written, report.skipped, report.skipped_ids) == (0, 1, [ids(0, 1)])
    assert len(write_back_gallery.seen("PATCH")) == 1
    assert write_back_gallery.row("photo_faces", ids(0, 1))["insightface_descriptor"] is None


def test_rest_contract_write_back_batches_and_chunks_ids(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    for n in range(1, 251):
        seed_face(postgrest, n, ANN, 1)
    progress: list[dict[str, int]] = []

    report = gallery.write_descriptors(
        [update_for(n) for n in range(1, 251)], batch_size=120, progress=lambda r: progress.append(r.as_dict())
    )

    assert report.as_dict() == {"faces": 250, "written": 250, "unchanged": 0, "skipped": 0, "batches_committed": 3}
    assert [p["batches_committed"] for p in progress] == [1, 2, 3]
    assert [p["written"] for p in progress] == [120, 240, 250]
    reads = postgrest.seen("GET")
    # batches of 120, 120, 10 ids; at most 100 ids per URL
    assert [r.param("id").count(",") + 1 for r in reads] == [100, 20, 100, 20, 10]
    assert len(postgrest.seen("PATCH")) == 250


def test_rest_contract_write_back_interrupted_keeps_what_was_written(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    for n in range(1, 4):
        seed_face(postgrest, n, ANN, 1)
    postgrest.faults.append(Fault("PATCH", after=1, drop=True))

    with pytest.raises(WriteBackInterrupted) as caught:
        gallery.write_descriptors([update_for(n) for n in range(1, 4)])

    exc = caught.value
    assert isinstance(exc, GalleryUnavailable)
    assert exc.report.as_dict() == {"faces": 3, "written": 1, "unchanged": 0, "skipped": 0, "batches_committed": 0}
    assert postgrest.url.removeprefix("http://") in str(exc)
    assert "1 of 3 rows were committed before, the rest is left for the next run" in str(exc)
    assert_no_key(exc)
    assert postgrest.row("photo_faces", ids(0, 1))["insightface_descriptor"] is not None


def test_rest_contract_write_back_rejects_a_vector_postgrest_refuses(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    seed_face(postgrest, 1, ANN, 1)
    postgrest.faults.append(
        Fault("PATCH", status=400, body={"code": "22000", "message": "expected 512 dimensions, not 511", "details": None})
    )

    with pytest.raises(GalleryError) as caught:
        gallery.write_descriptors([update_for(1)])

    assert not isinstance(caught.value, GalleryUnavailable)
    assert "22000: expected 512 dimensions, not 511" in str(caught.value)


# -- unreachable and failing servers ---------------------------------------------------------------


@pytest.fixture()
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.ping(),
        lambda g: g.read(FaceFilters()),
        lambda g: g.face_labels(),
        lambda g: g.read_config(),
        lambda g: g.write_config("context_weight", 0.2),
        lambda g: g.create_session({"status": "running"}),
    ],
    ids=["ping", "read", "face_labels", "read_config", "write_config", "create_session"],
)
def test_rest_contract_connection_refused_names_the_host_not_the_key(closed_port: int, call) -> None:
    rest = RestGallery(f"http://127.0.0.1:{closed_port}", KEY, timeout_s=2)

    with pytest.raises(GalleryUnavailable) as caught:
        call(rest)

    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert "cannot reach" in str(caught.value)
    assert_no_key(caught.value)


def test_rest_contract_connection_refused_during_write_back(closed_port: int) -> None:
    rest = RestGallery(f"http://127.0.0.1:{closed_port}", KEY, timeout_s=2)

    with pytest.raises(WriteBackInterrupted) as caught:
        rest.write_descriptors([update_for(1)])

    assert caught.value.report.done == 0
    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert_no_key(caught.value)


def test_rest_contract_timeout_is_unavailable(postgrest: FakePostgrest) -> None:
    postgrest.before.append(lambda seen: threading.Event().wait(1.5))
    rest = RestGallery(postgrest.url, KEY, timeout_s=0.3)
    try:
        with pytest.raises(GalleryUnavailable) as caught:
            rest.ping()
    finally:
        rest.close()
    assert postgrest.url.removeprefix("http://") in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "error", "expected"),
    [
        (400, {"code": "PGRST100", "message": '"failed to parse filter (eqq.1)"', "details": 'unexpected "q"', "hint": None},
         GalleryError, 'PGRST100: "failed to parse filter (eqq.1)" (unexpected "q")'),
        (400, {"code": "22P02", "message": 'invalid input syntax for type uuid: "nope"', "details": None, "hint": None},
         GalleryError, '22P02: invalid input syntax for type uuid: "nope"'),
        (401, {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."},
         GalleryError, "Invalid API key; hint: Double check your Supabase"),
        (500, {"code": "XX000", "message": "internal error", "details": "boom", "hint": "retry later"},
         GalleryError, "XX000: internal error (boom); hint: retry later"),
        (503, {"code": "PGRST001", "message": "Database client error. Retrying the connection.", "details": "no connection"},
         GalleryUnavailable, "PGRST001: Database client error"),
        (502, "<html><body>502 Bad Gateway</body></html>", GalleryUnavailable, "502: Bad Gateway"),
    ],
    ids=["PGRST100", "bad-uuid", "bad-key", "500", "PGRST001", "gateway-html"],
)
def test_rest_contract_postgrest_errors_carry_postgrests_message(
    postgrest: FakePostgrest, gallery: RestGallery, status: int, body: Any, error: type, expected: str
) -> None:
    postgrest.faults.append(Fault("GET", status=status, body=body))

    with pytest.raises(GalleryError) as caught:
        gallery.read(FaceFilters())

    assert type(caught.value) is error
    assert expected in str(caught.value)
    assert postgrest.url.removeprefix("http://") in str(caught.value)
    assert_no_key(caught.value)


def test_rest_contract_a_key_echoed_by_the_server_is_redacted(postgrest: FakePostgrest) -> None:
    # Not shaped like a JWT or an sb_secret_ key, so only redact(text, [key]) can hide it.
    plain_key = "plain-service-key-echoed-back-42"
    rest = RestGallery(postgrest.url, plain_key)
    postgrest.faults.append(
        Fault("GET", status=401, body={
            "code": "PGRST301", "message": f"JWSError: key {plain_key} is not a JWT", "details": plain_key, "hint": plain_key,
        })
    )
    try:
        with pytest.raises(GalleryError) as caught:
            rest.ping()
    finally:
        rest.close()

    assert "PGRST301: JWSError: key *** is not a JWT" in str(caught.value)
    assert_no_key(caught.value, plain_key)
    assert_authenticated(postgrest.requests[0], plain_key)


# -- construction ----------------------------------------------------------------------------------


def test_rest_contract_settings_come_from_arguments_or_the_environment(
    postgrest: FakePostgrest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
    with pytest.raises(GalleryError, match="SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"):
        RestGallery()
    with pytest.raises(GalleryError) as caught:
        RestGallery(service_role_key=KEY)
    assert "SUPABASE_URL" in str(caught.value) and "SUPABASE_SERVICE_ROLE_KEY" not in str(caught.value)
    assert_no_key(caught.value)
    with pytest.raises(GalleryError, match="SUPABASE_SERVICE_ROLE_KEY"):
        RestGallery(postgrest.url)
    with pytest.raises(GalleryError, match="must be an http") as caught:
        RestGallery("ftp://example.org", KEY)
    assert_no_key(caught.value)

    monkeypatch.setenv("SUPABASE_URL", postgrest.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    rest = RestGallery()
    try:
        rest.ping()
    finally:
        rest.close()
    (seen,) = postgrest.requests
    assert (seen.method, seen.path) == ("GET", "/rest/v1/face_recognition_config")
    assert seen.query == [("select", "id"), ("limit", "1")]
    assert_authenticated(seen)


def test_rest_contract_repr_and_description_show_the_host_only(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    assert isinstance(gallery, Gallery)
    where = postgrest.url.removeprefix("http://")
    assert gallery.description == f"supabase://{where}"
    assert KEY not in repr(gallery) and KEY not in str(gallery)
    assert where in repr(gallery)
    hosted = RestGallery("https://abcdefgh.supabase.co", KEY)
    assert hosted.description == "supabase://abcdefgh.supabase.co"
    hosted.close()
    opened = open_source("supabase", supabase_url=postgrest.url, service_role_key=KEY + "\n")  # as read from a secrets file
    assert isinstance(opened, RestGallery) and opened.description == f"supabase://{where}"
    opened.ping()
    opened.close()
    assert_authenticated(postgrest.requests[-1])


# -- sessions and config ---------------------------------------------------------------------------


def test_rest_contract_sessions_insert_and_update(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    session_id = gallery.create_session(
        {"training_mode": "full", "status": "running", "context_weight": 0.1, "min_faces_per_person": 3,
         "metrics": {"started": date(2024, 5, 1)}}
    )

    insert = postgrest.requests[-1]
    assert (insert.method, insert.path, insert.query) == ("POST", "/rest/v1/face_training_sessions", [("select", "id")])
    assert insert.headers["prefer"] == "return=representation"
    assert insert.body == {
        "training_mode": "full", "status": "running", "context_weight": 0.1, "min_faces_per_person": 3,
        "metrics": {"started": "2024-05-01"},
    }
    assert session_id == postgrest.tables["face_training_sessions"][0]["id"]
    assert_authenticated(insert)

    gallery.update_session(session_id, {"status": "completed", "faces_count": 42, "metrics": {"accuracy": 0.97}})

    update = postgrest.requests[-1]
    assert (update.method, update.path) == ("PATCH", "/rest/v1/face_training_sessions")
    assert update.query == [("id", f"eq.{session_id}")]
    assert update.headers["prefer"] == "return=minimal"
    assert update.body == {"status": "completed", "faces_count": 42, "metrics": {"accuracy": 0.97}}
    row = postgrest.row("face_training_sessions", session_id)
    assert row["status"] == "completed" and row["faces_count"] == 42 and row["metrics"] == {"accuracy": 0.97}
    assert row["training_mode"] == "full"  # left as it was


def test_rest_contract_sessions_refuse_bad_fields_before_any_request(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    with pytest.raises(ValueError, match="status"):
        gallery.create_session({"status": "done"})
    with pytest.raises(ValueError, match="not columns"):
        gallery.update_session(ids(9, 1), {"nonsense": 1})
    assert postgrest.requests == []


def test_rest_contract_config_read_and_upsert(postgrest: FakePostgrest, gallery: RestGallery) -> None:
    thresholds = {"low_data": 0.75, "medium_data": 0.65, "high_data": 0.55}
    postgrest.put("face_recognition_config", id=ids(5, 1), key="min_faces_per_person", value=3, updated_at="2024-01-01T00:00:00Z")
    postgrest.put("face_recognition_config", id=ids(5, 2), key="confidence_thresholds", value=thresholds)

    assert gallery.read_config() == {
        "confidence_thresholds": {"low_data": 0.75, "medium_data": 0.65, "high_data": 0.55}, "min_faces_per_person": 3,
    }
    (read,) = postgrest.requests
    assert (read.method, read.path) == ("GET", "/rest/v1/face_recognition_config")
    assert read.query == [("select", "key,value"), ("order", "key.asc")]

    gallery.write_config("min_faces_per_person", 5)
    gallery.write_config("mode", "incremental")

    upsert = postgrest.requests[1]
    assert (upsert.method, upsert.path, upsert.query) == ("POST", "/rest/v1/face_recognition_config", [("on_conflict", "key")])
    assert set(upsert.headers["prefer"].split(",")) == {"return=minimal", "resolution=merge-duplicates"}
    assert {k: v for k, v in upsert.body.items() if k != "updated_at"} == {"key": "min_faces_per_person", "value": 5}
    stamped = datetime.fromisoformat(upsert.body["updated_at"])
    assert stamped.tzinfo is not None and abs(datetime.now(UTC) - stamped) < timedelta(minutes=1)
    assert_authenticated(upsert)
    assert gallery.read_config() == {
        "confidence_thresholds": {"low_data": 0.75, "medium_data": 0.65, "high_data": 0.55}, "min_faces_per_person": 5,
        "mode": "incremental",
    }
    assert postgrest.row("face_recognition_config", ids(5, 1))["value"] == 5  # updated in place, not a second row
    assert len(postgrest.tables["face_recognition_config"]) == 3


# -- recognition: pending events and photos, suggestions, unknown faces ----------------------------


WINTER = {"id": ids(3, 3), "name": "Winter fair", "date": "2023-12-24"}
AUTUMN = {"id": ids(3, 4), "name": "Autumn walk", "date": "2024-10-05"}
PICNIC = {"id": ids(3, 5), "name": "Spring picnic", "date": "2024-03-10"}  # SPRING's date: after it by id
GONE_PERSON = ids(1, 9)
PHOTOS_SELECT = "id,event_id,url,created_at,photo_faces(id,bbox,person_id,verified,insightface_bbox,training_context)"
SUGGESTION_SELECT = (
    "id,verified,person_id,bbox,confidence,insightface_descriptor,insightface_confidence,insightface_bbox,training_context"
)
OURS = {"suggested_by": SUGGESTED_BY, "suggested_person_id": ANN, "index_version": "v1"}
OLD_BOX = {"x": 100, "y": 200, "width": 150, "height": 150}
NEW_BOX = {"x": 104, "y": 198, "width": 149, "height": 152}


def photo(n: int) -> str:
    return ids(6, n)


def face(n: int) -> str:
    return ids(7, n)


# photo -> (event, created_at as PostgREST sends timestamptz); stored out of id order
RECOGNITION_PHOTOS = {
    5: (SUMMER, "2024-07-02T08:00:00+02:00"),
    1: (SPRING, "2024-03-10T18:00:00.5+00:00"),
    10: (PICNIC, "2024-03-10T12:00:00+00:00"),
    3: (SPRING, "2024-03-10T20:00:00.500000+02:00"),  # the same instant as photo 1: id decides
    2: (SPRING, "2024-03-10T17:59:59.999999+00:00"),  # before photo 1 although its id is after
    4: (SPRING, "2024-03-12T09:00:00+00:00"),  # has verified faces: not pending, not the latest
    8: (None, "2023-01-01T00:00:00+00:00"),
    6: (WINTER, "2023-12-24T21:15:30.25+00:00"),
    9: (AUTUMN, "2024-10-05T10:00:00+00:00"),  # a verified face: the event is not pending
    7: (None, "2024-01-05T00:00:00.000001+00:00"),
}


def put_face(fake: FakePostgrest, n: int, photo_n: int, *, person: str | None = None, verified: bool | None = False,
             bbox: Any = None, **columns: Any) -> str:
    """A ``photo_faces`` row as the gallery stores it (its ``photos`` embed comes from the photos table)."""
    row = {
        "confidence": None, "insightface_descriptor": None, "insightface_confidence": None, "insightface_bbox": None,
        "training_used": False, "training_context": None, **columns,
    }
    fake.put("photo_faces", id=face(n), photo_id=photo(photo_n), person_id=person, verified=verified,
             bbox=copy.deepcopy(OLD_BOX if bbox is None else bbox), **row)
    return face(n)


def ours(n: int, photo_n: int, **changes: Any) -> ExistingFace:
    """One of facepipeline's rows as ``pending_photos`` reads it: Ann on OLD_BOX, unverified."""
    values = {"face_id": face(n), "bbox": dict(OLD_BOX), "person_id": ANN, "verified": False,
              "insightface_bbox": {"x": 100.4, "y": 199.6, "width": 150.2, "height": 149.8}, "context": dict(OURS)}
    return ExistingFace(**{**values, **changes})


@pytest.fixture()
def recognition_gallery(postgrest: FakePostgrest) -> FakePostgrest:
    for event in (PICNIC, SUMMER, WINTER, SPRING, AUTUMN):
        postgrest.put("events", **event, created_at="2023-01-01T00:00:00+00:00")
    for person in (ANN, BOB, CAROL, DAN):
        postgrest.put("people", id=person, **PEOPLE[person])
    for n, (event, created) in RECOGNITION_PHOTOS.items():
        postgrest.put(
            "photos", id=photo(n), event_id=event and event["id"], storage_path=f"events/{n}.jpg",
            url=f"https://cdn.example/r{n}.jpg", width=4000, height=3000, created_at=created,
        )
    existing = ours(1, 1)
    # photo 1: a nobody face a person drew, and one of ours (stored after it although its id is first)
    put_face(postgrest, 2, 1, bbox={"x": 5, "y": 6, "width": 70, "height": 80})
    put_face(postgrest, 1, 1, person=ANN, insightface_bbox=existing.insightface_bbox, training_context=dict(OURS),
             confidence=0.71, insightface_confidence=0.88, insightface_descriptor=unit_vector(1).tolist())
    put_face(postgrest, 3, 4, person=ANN, verified=True)
    put_face(postgrest, 4, 4, person=BOB, verified=True)
    put_face(postgrest, 5, 9, person=CAROL, verified=True)
    put_face(postgrest, 6, 5, verified=None)  # verified null: the photo is still pending
    return postgrest


def paged(fake: FakePostgrest, page_size: int) -> RestGallery:
    return RestGallery(fake.url, KEY, page_size=page_size)


def test_rest_contract_rest_gallery_is_a_gallery(gallery: RestGallery) -> None:
    assert isinstance(gallery, Gallery)
    for name in ("pending_events", "pending_photos", "write_suggestions", "unknown_faces"):
        assert callable(getattr(gallery, name))


def test_rest_contract_pending_events_groups_counts_and_orders_like_the_sql(recognition_gallery: FakePostgrest) -> None:
    rest = paged(recognition_gallery, 3)
    try:
        events = rest.pending_events()
    finally:
        rest.close()

    def fingerprint(event: dict | None) -> str:
        """Of the event's photos without a verified face (photos 4 and 9 have one), as the SQL's md5."""
        ids = [photo(n) for n, (e, _) in RECOGNITION_PHOTOS.items() if n not in (4, 9) and e is event]
        return photos_fingerprint(ids)

    assert events == [
        EventPhotos(WINTER["id"], "Winter fair", "2023-12-24", 1, fingerprint(WINTER)),
        EventPhotos(SPRING["id"], "Spring party", "2024-03-10", 3, fingerprint(SPRING)),
        EventPhotos(PICNIC["id"], "Spring picnic", "2024-03-10", 1, fingerprint(PICNIC)),
        EventPhotos(SUMMER["id"], "Summer camp", "2024-07-01", 1, fingerprint(SUMMER)),
        EventPhotos(None, None, None, 2, fingerprint(None)),
    ]
    verified = recognition_gallery.seen("GET", "/rest/v1/photo_faces")
    # three verified faces, pages of 3: a full page, then an empty one
    assert [v.query for v in verified] == [
        [("select", "id,photo_id"), ("verified", "is.true"), ("order", "id.asc"), ("limit", "3")],
        [("select", "id,photo_id"), ("verified", "is.true"), ("id", f"gt.{face(5)}"), ("order", "id.asc"), ("limit", "3")],
    ]
    photos = recognition_gallery.seen("GET", "/rest/v1/photos")
    assert [p.query for p in photos] == [
        [("select", "id,event_id,events(name,date)"), *([("id", f"gt.{photo(last)}")] if last else []),
         ("order", "id.asc"), ("limit", "3")]
        for last in (None, 3, 6, 9)
    ]
    assert len(recognition_gallery.requests) == 6
    assert_authenticated(photos[0])


def test_rest_contract_pending_photos_of_an_event(recognition_gallery: FakePostgrest, gallery: RestGallery) -> None:
    photos = gallery.pending_photos(SPRING["id"])

    nobody = ExistingFace(face(2), {"x": 5, "y": 6, "width": 70, "height": 80}, None, False, None, None)
    assert photos == [
        PendingPhoto(photo(2), SPRING["id"], "https://cdn.example/r2.jpg", ()),
        PendingPhoto(photo(1), SPRING["id"], "https://cdn.example/r1.jpg", (ours(1, 1), nobody)),
        PendingPhoto(photo(3), SPRING["id"], "https://cdn.example/r3.jpg", ()),
    ]
    assert photos[1].existing[0].ours and not photos[1].existing[0].edited
    (seen,) = recognition_gallery.requests
    assert (seen.method, seen.path) == ("GET", "/rest/v1/photos")
    assert seen.query == [
        ("select", PHOTOS_SELECT), ("event_id", f"eq.{SPRING['id']}"), ("order", "id.asc"), ("limit", "1000"),
    ]


def test_rest_contract_pending_photos_without_an_event_and_with_an_unset_verified(
    recognition_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    assert [p.photo_id for p in gallery.pending_photos(None)] == [photo(8), photo(7)]
    assert recognition_gallery.requests[-1].query == [
        ("select", PHOTOS_SELECT), ("event_id", "is.null"), ("order", "id.asc"), ("limit", "1000"),
    ]
    (summer,) = gallery.pending_photos(SUMMER["id"])
    assert summer.existing == (ExistingFace(face(6), OLD_BOX, None, False, None, None),)  # verified null reads as False


def test_rest_contract_pending_photos_paginates(recognition_gallery: FakePostgrest) -> None:
    rest = paged(recognition_gallery, 2)
    try:
        photos = rest.pending_photos(SPRING["id"])
    finally:
        rest.close()

    assert [p.photo_id for p in photos] == [photo(2), photo(1), photo(3)]
    pages = recognition_gallery.seen("GET", "/rest/v1/photos")
    assert [p.param("id") for p in pages] == [None, f"gt.{photo(2)}", f"gt.{photo(4)}"]  # photo 4 is read, then dropped


def suggestion(n: int, photo_n: int, person: str | None, *, replaces: ExistingFace | None = None, seed: int = 50,
               bbox: dict[str, int] = NEW_BOX) -> SuggestionRow:
    return SuggestionRow(
        face_id=face(n), photo_id=photo(photo_n), person_id=person, confidence=None if person is None else 0.734567,
        bbox=dict(bbox), descriptor=unit_vector(seed + n), det_score=0.912345,
        detected_bbox={k: v + 0.25 for k, v in bbox.items()},
        context={**OURS, "suggested_person_id": person, "candidates": [{"person_id": ANN, "similarity": 0.61}]},
        replaces=replaces,
    )


def inserted_row(row: SuggestionRow, person: str | None) -> dict[str, Any]:
    return {
        "id": row.face_id, "photo_id": row.photo_id, "verified": False, "person_id": person,
        "confidence": row.confidence, "bbox": dict(row.bbox), "insightface_descriptor": row.vector_literal(),
        "insightface_confidence": row.det_score, "insightface_bbox": dict(row.detected_bbox),
        "training_context": json.loads(json.dumps(row.context)),
    }


def test_rest_contract_write_suggestions_inserts_new_rows_ignoring_duplicates(
    recognition_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    rows = [
        suggestion(11, 2, ANN),
        suggestion(12, 7, None),
        suggestion(13, 4, BOB),  # photo 4 has a verified face: skipped
        suggestion(14, 99, ANN),  # photo 99 does not exist: skipped
        suggestion(15, 6, GONE_PERSON),  # the person was deleted since: written without one
    ]

    report = gallery.write_suggestions(rows)

    assert report == SuggestionReport(rows=5, inserted=3, updated=0, unchanged=0, skipped=2, skipped_ids=[face(13), face(14)])
    check, people, insert = recognition_gallery.requests
    assert (check.method, check.path) == ("GET", "/rest/v1/photos")
    assert check.query == [("select", "id,photo_faces(verified)"), ("id", f"in.({','.join(photo(n) for n in (2, 7, 4, 99, 6))})")]
    assert (people.method, people.path) == ("GET", "/rest/v1/people")
    assert people.query == [("select", "id"), ("id", f"in.({ANN},{GONE_PERSON})")]
    assert (insert.method, insert.path) == ("POST", "/rest/v1/photo_faces")
    assert insert.param("on_conflict") == "id" and insert.param("select") == "id"
    assert set(insert.param("columns").replace('"', "").split(",")) == set(inserted_row(rows[0], ANN))
    assert set(insert.headers["prefer"].split(",")) == {"resolution=ignore-duplicates", "return=representation"}
    assert_authenticated(insert)
    assert insert.body == [inserted_row(rows[0], ANN), inserted_row(rows[1], None), inserted_row(rows[4], None)]
    stored = recognition_gallery.row("photo_faces", face(11))
    assert np.array_equal(np.array(json.loads(stored["insightface_descriptor"]), dtype=np.float32), rows[0].descriptor)
    assert stored["verified"] is False and stored["person_id"] == ANN
    assert recognition_gallery.row("photo_faces", face(15))["person_id"] is None

    # a rerun: the ids are there already, nothing is inserted twice
    again = gallery.write_suggestions(rows)

    assert again.as_dict() == {"rows": 5, "inserted": 0, "updated": 0, "unchanged": 3, "skipped": 2}
    assert len([f for f in recognition_gallery.tables["photo_faces"] if f["id"] == face(11)]) == 1


def test_rest_contract_write_suggestions_goes_batch_by_batch(recognition_gallery: FakePostgrest, gallery: RestGallery) -> None:
    rows = [suggestion(20 + n, 2, None) for n in range(5)]

    report = gallery.write_suggestions(rows, batch_size=2)

    assert report.as_dict() == {"rows": 5, "inserted": 5, "updated": 0, "unchanged": 0, "skipped": 0}
    assert [(r.method, r.path) for r in recognition_gallery.requests] == [
        ("GET", "/rest/v1/photos"), ("POST", "/rest/v1/photo_faces")
    ] * 3  # no people to look up: none is suggested
    assert [[row["id"] for row in r.body] for r in recognition_gallery.seen("POST")] == [
        [face(20), face(21)], [face(22), face(23)], [face(24)]
    ]


def test_rest_contract_write_suggestions_updates_own_rows_behind_guards(
    recognition_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    # photo 3: one of ours that already holds what is offered, and one a person labelled since the read
    same = suggestion(31, 3, ANN, bbox=OLD_BOX)
    held = inserted_row(same, ANN)
    put_face(recognition_gallery, 31, 3, person=ANN, insightface_descriptor=same.descriptor.tolist(),
             **{k: v for k, v in held.items() if k not in ("id", "photo_id", "verified", "person_id", "insightface_descriptor")})
    put_face(recognition_gallery, 32, 3, person=CAROL, training_context=dict(OURS))
    # photo 5: one of ours without a person, and a person's own row (never one of ours to update)
    put_face(recognition_gallery, 33, 5, training_context={**OURS, "suggested_person_id": None})
    put_face(recognition_gallery, 34, 5, training_context={"note": "drawn by hand"})
    rows = [
        suggestion(1, 1, BOB, replaces=ours(1, 1)),
        suggestion(31, 3, ANN, replaces=ours(31, 3), bbox=OLD_BOX),
        suggestion(32, 3, ANN, replaces=ours(32, 3, person_id=None)),
        suggestion(33, 5, DAN, replaces=ours(33, 5, person_id=None)),
        suggestion(34, 5, DAN, replaces=ours(34, 5, person_id=None)),
    ]

    report = gallery.write_suggestions(rows)

    assert report == SuggestionReport(rows=5, inserted=0, updated=2, unchanged=1, skipped=2, skipped_ids=[face(32), face(34)])
    check, people, current, first, second = recognition_gallery.requests
    assert (check.path, people.path) == ("/rest/v1/photos", "/rest/v1/people")
    assert people.query == [("select", "id"), ("id", f"in.({BOB},{ANN},{DAN})")]
    assert (current.method, current.path) == ("GET", "/rest/v1/photo_faces")
    assert current.query == [("select", SUGGESTION_SELECT), ("id", f"in.({','.join(face(n) for n in (1, 31, 32, 33, 34))})")]
    assert (first.method, first.path) == ("PATCH", "/rest/v1/photo_faces")
    assert first.query == [
        ("id", f"eq.{face(1)}"), ("verified", "is.false"), ("person_id", f"eq.{ANN}"),
        ("bbox", 'eq.{"x":100,"y":200,"width":150,"height":150}'), ("training_context->>suggested_by", "eq.facepipeline"),
        ("select", "id"),
    ]
    assert first.headers["prefer"] == "return=representation"
    assert_authenticated(first)
    assert first.body == {k: v for k, v in inserted_row(rows[0], BOB).items() if k not in ("id", "photo_id", "verified")}
    assert second.param("id") == f"eq.{face(33)}" and second.param("person_id") == "is.null"
    updated = recognition_gallery.row("photo_faces", face(1))
    assert (updated["person_id"], updated["bbox"], updated["verified"]) == (BOB, NEW_BOX, False)
    assert recognition_gallery.row("photo_faces", face(33))["person_id"] == DAN
    for n in (32, 34):  # the edited row and the person's own row are left, without a PATCH
        assert recognition_gallery.row("photo_faces", face(n))["insightface_descriptor"] is None


def test_rest_contract_write_suggestions_counts_a_row_verified_before_the_patch_as_skipped(
    recognition_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    def verify_before_patch(seen: Seen) -> None:
        if seen.method == "PATCH":
            recognition_gallery.row("photo_faces", face(1))["verified"] = True

    recognition_gallery.before.append(verify_before_patch)

    report = gallery.write_suggestions([suggestion(1, 1, BOB, replaces=ours(1, 1))])

    assert (report.updated, report.skipped, report.skipped_ids) == (0, 1, [face(1)])
    assert len(recognition_gallery.seen("PATCH")) == 1
    assert recognition_gallery.row("photo_faces", face(1))["person_id"] == ANN


def test_rest_contract_write_suggestions_skips_a_photo_that_got_a_verified_face(
    recognition_gallery: FakePostgrest, gallery: RestGallery
) -> None:
    (pending,) = [p for p in gallery.pending_photos(SPRING["id"]) if p.photo_id == photo(1)]
    recognition_gallery.row("photo_faces", face(2))["verified"] = True  # a person verified a face since the read
    recognition_gallery.requests.clear()

    report = gallery.write_suggestions(
        [suggestion(1, 1, BOB, replaces=pending.existing[0]), suggestion(40, 1, ANN), suggestion(41, 2, ANN)]
    )

    assert report == SuggestionReport(rows=3, inserted=1, updated=0, unchanged=0, skipped=2, skipped_ids=[face(1), face(40)])
    assert [row["id"] for row in recognition_gallery.seen("POST")[0].body] == [face(41)]
    assert recognition_gallery.seen("PATCH") == []
    assert recognition_gallery.row("photo_faces", face(1))["person_id"] == ANN
    assert not any(f["id"] == face(40) for f in recognition_gallery.tables["photo_faces"])


def test_rest_contract_unknown_faces(recognition_gallery: FakePostgrest) -> None:
    put_face(recognition_gallery, 51, 1, insightface_descriptor=unit_vector(51).tolist())
    put_face(recognition_gallery, 52, 5, verified=None, insightface_descriptor=unit_vector(52).tolist())
    put_face(recognition_gallery, 53, 1, person=ANN, insightface_descriptor=unit_vector(53).tolist())  # has a person
    put_face(recognition_gallery, 54, 1)  # no descriptor
    put_face(recognition_gallery, 55, 2, verified=True, insightface_descriptor=unit_vector(55).tolist())  # verified
    put_face(recognition_gallery, 56, 7, insightface_descriptor=unit_vector(56).tolist())  # a photo without an event
    rest = paged(recognition_gallery, 2)
    try:
        faces = rest.unknown_faces()
    finally:
        rest.close()

    assert [(f.face_id, f.photo_id, f.event_id) for f in faces] == [
        (face(51), photo(1), SPRING["id"]), (face(52), photo(5), SUMMER["id"]), (face(56), photo(7), None),
    ]
    for f, n in zip(faces, (51, 52, 56), strict=True):
        assert f.descriptor.dtype == np.float32 and np.array_equal(f.descriptor, unit_vector(n))
        assert isinstance(f, UnknownFaceRow)
    first, second = recognition_gallery.requests
    expected = [
        ("select", "id,photo_id,insightface_descriptor,photos!inner(event_id)"), ("verified", "not.is.true"),
        ("person_id", "is.null"), ("insightface_descriptor", "not.is.null"),
    ]
    assert (first.method, first.path) == ("GET", "/rest/v1/photo_faces")
    assert first.query == [*expected, ("order", "id.asc"), ("limit", "2")]
    assert second.query == [*expected, ("id", f"gt.{face(52)}"), ("order", "id.asc"), ("limit", "2")]


RECOGNITION_CALLS = {
    "pending_events": lambda g: g.pending_events(),
    "pending_photos": lambda g: g.pending_photos(SPRING["id"]),
    "write_suggestions": lambda g: g.write_suggestions([suggestion(11, 2, ANN)]),
    "unknown_faces": lambda g: g.unknown_faces(),
}


@pytest.mark.parametrize("name", list(RECOGNITION_CALLS))
def test_rest_contract_recognition_connection_refused_is_unavailable(closed_port: int, name: str) -> None:
    rest = RestGallery(f"http://127.0.0.1:{closed_port}", KEY, timeout_s=2)

    with pytest.raises(GalleryUnavailable) as caught:
        RECOGNITION_CALLS[name](rest)

    assert f"127.0.0.1:{closed_port}" in str(caught.value) and "cannot reach" in str(caught.value)
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("name", "fault", "error", "expected"),
    [
        *[(name, Fault("GET", status=503, body={"code": "PGRST001", "message": f"Database client error {KEY}"}),
           GalleryUnavailable, "PGRST001: Database client error ***") for name in RECOGNITION_CALLS],
        ("write_suggestions", Fault("POST", status=502, body="<html>502 Bad Gateway</html>"), GalleryUnavailable, "502"),
        ("write_suggestions", Fault("POST", status=400, body={"code": "22000", "message": "expected 512 dimensions"}),
         GalleryError, "22000: expected 512 dimensions"),
    ],
    ids=[*(f"{name}-503" for name in RECOGNITION_CALLS), "insert-502", "insert-400"],
)
def test_rest_contract_recognition_errors_are_mapped_without_the_key(
    recognition_gallery: FakePostgrest, gallery: RestGallery, name: str, fault: Fault, error: type, expected: str
) -> None:
    recognition_gallery.faults.append(fault)

    with pytest.raises(GalleryError) as caught:
        RECOGNITION_CALLS[name](gallery)

    assert type(caught.value) is error
    assert expected in str(caught.value)
    assert recognition_gallery.url.removeprefix("http://") in str(caught.value)
    assert_no_key(caught.value)
