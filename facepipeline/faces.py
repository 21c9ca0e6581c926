"""The verified face: one labelled face on one photo, the unit of training data."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from facepipeline.geometry import BBox


@dataclass(frozen=True, slots=True)
class VerifiedFace:
    face_id: str
    person_id: str
    person_name: str
    photo_ref: str
    """Where the photo's bytes live: an ``http(s)://`` URL or a ``file://`` URI."""
    bbox: BBox | None
    """The confirmed box, or None: then the detected face nearest the photo's centre is the one."""
    event_id: str | None = None
    event_name: str | None = None
    photo_id: str | None = None
    """The gallery's ``photos.id`` (None for the folder source)."""
    event_date: str | None = None
    """The event's day, ISO 8601."""


VERIFIED_FACES_SCHEMA = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("person_name", pa.string()),
        pa.field("photo_ref", pa.string(), nullable=False),
        pa.field("bbox_x", pa.float64()),
        pa.field("bbox_y", pa.float64()),
        pa.field("bbox_width", pa.float64()),
        pa.field("bbox_height", pa.float64()),
        pa.field("event_id", pa.string()),
        pa.field("event_name", pa.string()),
        pa.field("photo_id", pa.string()),
        pa.field("event_date", pa.string()),
    ]
)


def faces_to_table(faces: Iterable[VerifiedFace]) -> pa.Table:
    rows = [
        {
            "face_id": f.face_id,
            "person_id": f.person_id,
            "person_name": f.person_name,
            "photo_ref": f.photo_ref,
            "bbox_x": f.bbox.x if f.bbox else None,
            "bbox_y": f.bbox.y if f.bbox else None,
            "bbox_width": f.bbox.width if f.bbox else None,
            "bbox_height": f.bbox.height if f.bbox else None,
            "event_id": f.event_id,
            "event_name": f.event_name,
            "photo_id": f.photo_id,
            "event_date": f.event_date,
        }
        for f in faces
    ]
    return pa.Table.from_pylist(rows, schema=VERIFIED_FACES_SCHEMA)


_last_converted: tuple[weakref.ref[pa.Table], list[VerifiedFace]] | None = None
"""The most recent table converted, and its faces: the steps of a run convert the same table."""


def table_to_faces(table: pa.Table) -> list[VerifiedFace]:
    """The faces of a verified-faces table, column by column (tables written before ``photo_id`` and
    ``event_date`` existed have neither).

    Most steps of a retrain convert the verified faces, and in one process they get the very same
    table object (facepipeline.tables keeps it): it is converted once (~50 ms for 6,000 faces), and
    each call gets a list of its own of the same (frozen) faces.
    """
    global _last_converted
    last = _last_converted
    if last is not None and last[0]() is table:
        return list(last[1])
    faces = _converted(table)
    _last_converted = (weakref.ref(table), faces)
    return list(faces)


def _converted(table: pa.Table) -> list[VerifiedFace]:
    names = ("face_id", "person_id", "person_name", "photo_ref", "bbox_x", "bbox_y", "bbox_width", "bbox_height",
             "event_id", "event_name", "photo_id", "event_date")
    optional = ("photo_id", "event_date")
    columns = [
        [None] * table.num_rows if name in optional and name not in table.schema.names else table.column(name).to_pylist()
        for name in names
    ]
    return [
        VerifiedFace(
            face_id=face_id,
            person_id=person_id,
            person_name=person_name,
            photo_ref=photo_ref,
            bbox=None if width is None else BBox(x, y, width, height),
            event_id=event_id,
            event_name=event_name,
            photo_id=photo_id,
            event_date=event_date,
        )
        for face_id, person_id, person_name, photo_ref, x, y, width, height, event_id, event_name, photo_id, event_date in zip(
            *columns, strict=True
        )
    ]


_FACTS_PREFIX = "facepipeline."


def with_facts(table: pa.Table, **facts: object) -> pa.Table:
    """``table`` carrying ``facts`` (JSON values) in its schema metadata, which Parquet keeps.

    The verified-faces table says how it was selected (``min_faces_per_person``, ``partial``) and
    what it is (``dataset_fingerprint``), so any later step, in any run, reads it from the data.
    """
    metadata = dict(table.schema.metadata or {})
    metadata.update({f"{_FACTS_PREFIX}{key}".encode(): json.dumps(value).encode() for key, value in facts.items()})
    return table.replace_schema_metadata(metadata)


def facts_of(table: pa.Table) -> dict[str, object]:
    return {
        key.decode().removeprefix(_FACTS_PREFIX): json.loads(value)
        for key, value in (table.schema.metadata or {}).items()
        if key.decode().startswith(_FACTS_PREFIX)
    }
