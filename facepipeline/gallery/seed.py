"""Fill an empty gallery database from a folder of photos: the demo's and the tests' gallery.

Two folder layouts, as :class:`~facepipeline.sources.folder.FolderSource` reads them:

* one sub-folder per person: each photo is one face of that person, in the LFW nominal box
  (x=68, y=68, 115x115 on a 250x250 photo, scaled to the photo's size);
* a ``face_boxes.csv`` at the top (``path,x,y,w,h,identity,...``): each row is one face in that box;
  a row without an identity is a face nobody named (no person, not verified).

A few synthetic events spread over a year get the photos (by a hash of the path). A fixed share of
the named faces is left ``verified = false``: the new faces awaiting confirmation. Everything is
deterministic, ids included (uuid5 of the path, the same ids ``FolderSource`` gives), so seeding
the same folder twice gives the same rows. One transaction, ``COPY`` for photos and faces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from PIL import Image, UnidentifiedImageError
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from facepipeline.errors import SourceError
from facepipeline.gallery.base import GalleryError, GalleryUnavailable
from facepipeline.gallery.schema import has_schema
from facepipeline.gallery.secrets import redact
from facepipeline.sources.folder import BOXES_FILE, PHOTO_SUFFIXES, read_box_rows, stable_id

LFW_SIZE = 250
LFW_BOX = (68, 68, 115, 115)
EVENT_THEMES = ("Winter Gala", "Spring Conference", "Summer Picnic", "Autumn Meetup", "Charity Run", "Team Offsite",
                "Awards Night", "Hackathon")
FIRST_EVENT = dt.date(2024, 1, 20)


class SeedError(GalleryError):
    """The gallery could not be seeded (not empty, no schema, unreadable folder)."""


@dataclass(frozen=True)
class SeedReport:
    people: int
    events: int
    photos: int
    faces: int
    verified: int
    unverified: int
    seconds: float
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return "gallery already has photos: nothing seeded"
        return (f"seeded {self.people} people, {self.events} events, {self.photos} photos, {self.faces} faces "
                f"({self.verified} verified, {self.unverified} awaiting confirmation) in {self.seconds:.2f} s")


@dataclass(frozen=True)
class _Face:
    id: str
    path: str
    person: str | None
    bbox: dict


def _first_line(exc: BaseException, dsn: str) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__, [dsn])


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise SeedError(f"seed: cannot read the image size of {path}: {exc}") from None


def _nominal_box(width: int, height: int) -> dict:
    x, y, w, h = LFW_BOX
    sx, sy = width / LFW_SIZE, height / LFW_SIZE
    return {"x": round(x * sx), "y": round(y * sy), "width": round(w * sx), "height": round(h * sy)}


def _from_person_folders(root: Path) -> tuple[list[str], list[_Face]]:
    photos, faces = [], []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for photo in sorted(person_dir.iterdir()):
            if photo.suffix.lower() in PHOTO_SUFFIXES and not photo.name.startswith(".") and photo.is_file():
                relative = photo.relative_to(root).as_posix()
                photos.append(relative)
                faces.append(_Face(stable_id("face", relative), relative, person_dir.name, {}))
    return photos, faces


def _from_boxes(root: Path, boxes_csv: Path) -> tuple[list[str], list[_Face]]:
    faces: dict[str, _Face] = {}
    try:
        rows = list(read_box_rows(root, boxes_csv))
    except SourceError as exc:
        raise SeedError(str(exc)) from None
    for row in rows:
        if not row.photo.is_file():
            raise SeedError(f"{boxes_csv}, line {row.line}: no such photo in the folder: {row.path!r}")
        x, y, w, h = row.values
        face = _Face(row.face_id, row.photo.relative_to(root).as_posix(), row.identity,
                     {"x": x, "y": y, "width": w, "height": h})
        earlier = faces.setdefault(face.id, face)
        if earlier.person != row.identity:
            raise SeedError(f"{boxes_csv}, line {row.line}: this box of {row.path} is already labelled {earlier.person!r}")
    photos = sorted({face.path for face in faces.values()})
    return photos, sorted(faces.values(), key=lambda f: (f.path, f.id))


def _unverified(faces: list[_Face], share: float, seed: int) -> set[str]:
    """A fixed share of the named faces, chosen by hash; every person keeps one verified face."""
    named = [f for f in faces if f.person is not None]
    left = Counter(f.person for f in named)
    chosen: set[str] = set()
    target = round(share * len(named))
    for face in sorted(named, key=lambda f: (_hash(seed, "unverified", f.id), f.id)):
        if len(chosen) >= target:
            break
        if left[face.person] > 1:
            left[face.person] -= 1
            chosen.add(face.id)
    return chosen


def _events(count: int) -> list[tuple[str, str, dt.date]]:
    events = []
    for i in range(count):
        day = FIRST_EVENT + dt.timedelta(days=round(i * 365 / count))
        name = f"{EVENT_THEMES[i % len(EVENT_THEMES)]} {day.year}"
        if i >= len(EVENT_THEMES):
            name += f" ({i // len(EVENT_THEMES) + 1})"
        events.append((stable_id("event", name), name, day))
    return events


def _has_photos(dsn: str) -> bool:
    """Whether the gallery at ``dsn`` has photos already (False when that cannot be told here: the
    seeding itself then says why, or checks again under its lock)."""
    try:
        with psycopg.connect(dsn, connect_timeout=10, application_name="facepipeline-seed") as conn:
            return has_schema(conn) and conn.execute("select exists (select 1 from photos)").fetchone()[0]
    except psycopg.Error:
        return False


def seed_from_folder(dsn: str, folder: Path, url_for: Callable[[str], str], *, events: int = 4,
                     unverified_share: float = 0.1, seed: int = 7, if_empty: bool = False) -> SeedReport:
    """Fill the empty gallery at ``dsn`` (schema already created) from ``folder``.

    ``url_for`` turns a photo's path relative to ``folder`` into its ``photos.url``. A gallery that
    already has photos is refused with :class:`SeedError`, or, with ``if_empty=True``, left alone
    (the report says ``skipped``).
    """
    started = time.monotonic()
    if events < 0 or not 0.0 <= unverified_share <= 1.0:
        raise ValueError("events must be >= 0 and unverified_share within [0, 1]")
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise SeedError(f"seed: directory not found: {root}")
    if if_empty and _has_photos(dsn):  # the usual case on every start: no need to read the folder
        return SeedReport(0, 0, 0, 0, 0, 0, time.monotonic() - started, skipped=True)
    boxes = root / BOXES_FILE
    photos, faces = _from_boxes(root, boxes) if boxes.is_file() else _from_person_folders(root)
    if not photos:
        raise SeedError(f"seed: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) found under {root}")
    sizes = {path: _size(root / path) for path in photos}
    event_rows = _events(events)
    unverified = _unverified(faces, unverified_share, seed)
    people = sorted({f.person for f in faces if f.person is not None})

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise SeedError(f"seed: not a valid Postgres connection string: {redact(dsn)}") from None
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name="facepipeline-seed")
    except psycopg.Error as exc:
        raise GalleryUnavailable(f"seed: cannot reach the gallery database at {where}: {_first_line(exc, dsn)}") from None
    try:
        with conn:
            if not has_schema(conn):
                raise SeedError(f"seed: the database at {where} has no gallery schema (create_schema first)")
            conn.execute("lock table events, people, photos, photo_faces in share row exclusive mode")
            if conn.execute("select exists (select 1 from photos)").fetchone()[0]:
                if if_empty:
                    return SeedReport(0, 0, 0, 0, 0, 0, time.monotonic() - started, skipped=True)
                raise SeedError(f"seed: the gallery at {where} already has photos; seed only an empty gallery")
            with conn.cursor() as cur:
                cur.executemany("insert into events (id, name, date) values (%s, %s, %s) on conflict (id) do nothing",
                                event_rows)
                cur.executemany("insert into people (id, real_name) values (%s, %s) on conflict (id) do nothing",
                                [(stable_id("person", p), p.replace("_", " ")) for p in people])
                with cur.copy("copy photos (id, event_id, storage_path, url, width, height) from stdin") as copy:
                    for path in photos:
                        event_id = event_rows[_hash(seed, "event", path) % events][0] if events else None
                        copy.write_row((stable_id("photo", path), event_id, path, url_for(path), *sizes[path]))
                with cur.copy("copy photo_faces (id, photo_id, person_id, bbox, verified) from stdin") as copy:
                    for face in faces:
                        copy.write_row((
                            face.id, stable_id("photo", face.path),
                            stable_id("person", face.person) if face.person is not None else None,
                            Jsonb(face.bbox or _nominal_box(*sizes[face.path])),
                            face.person is not None and face.id not in unverified,
                        ))
    except psycopg.Error as exc:
        raise SeedError(f"seed: the gallery at {where} refused the rows: {_first_line(exc, dsn)}") from None
    finally:
        conn.close()
    verified = sum(1 for f in faces if f.person is not None and f.id not in unverified)
    return SeedReport(len(people), len(event_rows), len(photos), len(faces), verified, len(faces) - verified,
                      time.monotonic() - started)
