"""A local folder of photos as the source of verified faces, for users without Supabase.

Two layouts:

* one sub-folder per person (``people/Ada_Lovelace/1.jpg``): each photo is one verified face of
  that person, the detected face nearest the photo's centre;
* a ``face_boxes.csv`` at the top (columns ``path,x,y,w,h,identity``): each row with an identity
  is one verified face in that box. Rows without an identity are faces nobody named.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from facepipeline.errors import SourceError
from facepipeline.faces import VerifiedFace
from facepipeline.geometry import BBox
from facepipeline.sources.base import FaceFilters, FaceRead, select_people

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
BOXES_FILE = "face_boxes.csv"

# Ids are derived from names, so the same folder always gives the same ids: reruns are incremental.
_NAMESPACE = uuid.UUID("6f1c1a52-8d0e-4f38-9f0e-2b7c0f4a9e11")


def stable_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{name}"))


@dataclass(frozen=True)
class BoxRow:
    """One valid row of a ``face_boxes.csv``: a face in a box on a photo inside the folder."""

    line: int
    path: str
    """The photo's path as the file writes it."""
    photo: Path
    """The photo, resolved (inside the folder)."""
    values: tuple[int | float, int | float, int | float, int | float]
    """x, y, w, h as written (whole numbers stay whole)."""
    identity: str | None

    @property
    def bbox(self) -> BBox:
        return BBox(*(float(v) for v in self.values))

    @property
    def face_id(self) -> str:
        """Derived from the path and the box: the same row always gives the same id."""
        x, y, w, h = (float(v) for v in self.values)
        return stable_id("face", f"{self.path}#{x:g},{y:g},{w:g},{h:g}")


def read_box_rows(root: Path, boxes_csv: Path) -> Iterator[BoxRow]:
    """Every row of ``boxes_csv`` (columns ``path,x,y,w,h,identity``), checked; raises SourceError."""
    with boxes_csv.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        required = {"path", "x", "y", "w", "h", "identity"}
        if not reader.fieldnames or not required <= set(reader.fieldnames):
            raise SourceError(f"{boxes_csv}: needs the columns {', '.join(sorted(required))}")
        for line, row in enumerate(reader, start=2):
            try:
                values = tuple(_number(row[k]) for k in ("x", "y", "w", "h"))
                BBox(*(float(v) for v in values))
            except (TypeError, ValueError) as exc:  # BBoxError is a ValueError
                raise SourceError(f"{boxes_csv}, line {line}: bad box: {exc}") from None
            photo = (root / row["path"]).resolve()
            if not photo.is_relative_to(root):
                raise SourceError(f"{boxes_csv}, line {line}: path leaves the folder: {row['path']!r}")
            yield BoxRow(line, row["path"], photo, values, (row["identity"] or "").strip() or None)


def _number(text: str | None) -> int | float:
    number = float(text)  # a missing cell (None) is a TypeError
    return int(number) if number.is_integer() else number


class FolderSource:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def description(self) -> str:
        return f"folder:{self.root}"

    def read(self, filters: FaceFilters) -> FaceRead:
        if filters.by_event:
            raise SourceError("the folder source has no events: event_ids, date_from and date_to need the gallery database")
        return select_people(self.verified_faces(), [], filters)

    def verified_faces(self) -> list[VerifiedFace]:
        """Every face in the folder, unfiltered."""
        if not self.root.is_dir():
            raise SourceError(f"folder source: directory not found: {self.root}")
        boxes = self.root / BOXES_FILE
        faces = self._faces_from_boxes(boxes) if boxes.is_file() else self._faces_from_person_folders()
        if not faces:
            raise SourceError(f"folder source: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) found under {self.root}")
        return faces

    def _faces_from_person_folders(self) -> list[VerifiedFace]:
        faces = []
        for person_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for photo in sorted(person_dir.iterdir()):
                if photo.suffix.lower() not in PHOTO_SUFFIXES or photo.name.startswith("."):
                    continue
                relative = photo.relative_to(self.root).as_posix()
                faces.append(
                    VerifiedFace(
                        face_id=stable_id("face", relative),
                        person_id=stable_id("person", person_dir.name),
                        person_name=person_dir.name,
                        photo_ref=photo.as_uri(),
                        bbox=None,
                    )
                )
        return faces

    def _faces_from_boxes(self, boxes_csv: Path) -> list[VerifiedFace]:
        faces: dict[str, VerifiedFace] = {}
        for row in read_box_rows(self.root, boxes_csv):
            if row.identity is None:
                continue
            face = VerifiedFace(
                face_id=row.face_id,
                person_id=stable_id("person", row.identity),
                person_name=row.identity,
                photo_ref=row.photo.as_uri(),
                bbox=row.bbox,
            )
            earlier = faces.setdefault(face.face_id, face)
            if earlier.person_name != row.identity:
                raise SourceError(
                    f"{boxes_csv}, line {row.line}: this box of {row.path} is already labelled {earlier.person_name!r}"
                )
        return list(faces.values())
