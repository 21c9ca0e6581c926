"""Search by face: the faces of the promoted index most like the faces on a sample photo.

Every face detected on the sample is a query. Without an event, the index (hnswlib) answers; within
one event, the event's faces are few enough to compare exactly (one matrix product), which also
never misses a face the approximate search would have skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc

from facepipeline.geometry import BBox
from facepipeline.images import decode_image
from facepipeline.index import FaceIndex, IndexVersion
from facepipeline.model.face_model import FaceModel
from facepipeline.recognition import check_same_model, embed_faces_on_photo


@dataclass(frozen=True)
class Match:
    face_id: str
    person_id: str
    person_name: str | None
    similarity: float
    photo: str | None
    """Where the matching face's photo is (its URL, or file for the folder source)."""
    event_id: str | None
    bbox: dict | None


@dataclass(frozen=True)
class QueryFace:
    bbox: BBox
    det_score: float
    matches: list[Match]

    def as_dict(self) -> dict:
        return {"bbox": self.bbox.to_json(), "det_score": round(self.det_score, 4), "matches": [asdict(m) for m in self.matches]}


def search_photo(
    model: FaceModel, photo: bytes, version: IndexVersion, *, k: int = 10, event_id: str | None = None
) -> list[QueryFace]:
    """The top-``k`` matches of every face on ``photo`` (encoded bytes), largest face first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    check_same_model(version, model)
    image = decode_image(photo)
    detections, vectors, _ = embed_faces_on_photo(model, image)
    if not detections:
        return []
    largest_first = np.argsort([-d.bbox.width * d.bbox.height for d in detections], kind="stable")
    detections, vectors = [detections[i] for i in largest_first], vectors[largest_first]
    index = version.load()
    found = _within_event(index, vectors, k, event_id) if event_id else index.search(vectors, k=k)
    return [
        QueryFace(d.bbox, d.score, [_match(index, int(label), float(sim)) for label, sim in zip(labels, sims, strict=True)])
        for d, labels, sims in zip(detections, *found, strict=True)
    ]


def _within_event(index: FaceIndex, vectors: np.ndarray, k: int, event_id: str) -> tuple[np.ndarray, np.ndarray]:
    if "event_id" not in index.entries.column_names:
        return np.empty((len(vectors), 0), dtype=np.int64), np.empty((len(vectors), 0), dtype=np.float32)
    in_event = pc.fill_null(pc.equal(index.entries.column("event_id"), event_id), False)
    rows = np.flatnonzero(in_event.to_numpy(zero_copy_only=False))
    sims = vectors @ index.vectors()[rows].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return rows[order], np.take_along_axis(sims, order, axis=1)


def _match(index: FaceIndex, label: int, similarity: float) -> Match:
    row = {name: index.entries.column(name)[label].as_py() for name in index.entries.column_names}
    bbox = None
    if row.get("bbox_x") is not None:
        bbox = {key: round(row[f"bbox_{key}"], 1) for key in ("x", "y", "width", "height")}
    return Match(
        face_id=row["face_id"],
        person_id=row["person_id"],
        person_name=row.get("person_name"),
        similarity=round(similarity, 4),
        photo=row.get("photo_ref"),
        event_id=row.get("event_id"),
        bbox=bbox,
    )
