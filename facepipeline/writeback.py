"""What a retrain writes back to the gallery: one :class:`DescriptorUpdate` per embedded face."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow as pa

from facepipeline.embedding_store import usable_batches
from facepipeline.faces import VerifiedFace
from facepipeline.gallery.base import SESSION_KEY, CoOccurrence, DescriptorUpdate
from facepipeline.geometry import BBox


DETECTED_BOX = ("bbox_x", "bbox_y", "bbox_width", "bbox_height")


def descriptor_updates(
    faces: Sequence[VerifiedFace], embeddings: pa.Table, co_occurrence: CoOccurrence, session_id: str | None
) -> tuple[list[DescriptorUpdate], Counter[str]]:
    """Updates for every face embedded in this run's table, and why others get none.

    ``training_context`` holds the face's event, the other people on its photo and the session
    that wrote it.
    """
    by_id = {f.face_id: f for f in faces}
    updates: list[DescriptorUpdate] = []
    left_out: Counter[str] = Counter()
    for rows, vectors in usable_batches(embeddings, ("face_id", "det_score", *DETECTED_BOX)):  # one array per batch
        columns = {name: rows.column(name).to_pylist() for name in ("face_id", "det_score", *DETECTED_BOX)}
        for i, face_id in enumerate(columns["face_id"]):
            face = by_id.get(face_id)
            if face is None:
                left_out["not_in_dataset"] += 1
                continue
            if face.bbox is None:
                left_out["no_gallery_box"] += 1
                continue
            try:
                updates.append(
                    DescriptorUpdate(
                        face_id=face.face_id,
                        person_id=face.person_id,
                        bbox=face.bbox,
                        descriptor=vectors[i],
                        confidence=float(columns["det_score"][i]),
                        detected_bbox=BBox(*(columns[name][i] for name in DETECTED_BOX)),
                        context={
                            "event_id": face.event_id,
                            "co_occurring_people": co_occurrence.on_same_photo(face.photo_id, face.person_id),
                            SESSION_KEY: session_id,
                        },
                    )
                )
            except ValueError:
                left_out["not_finite"] += 1
    return updates, left_out
