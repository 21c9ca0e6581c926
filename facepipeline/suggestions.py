"""What recognition writes to ``photo_faces``, reconciled with the rows already on the photo.

Every detected face becomes one row (``verified = false``): with ``person_id`` and ``confidence``
when a person was suggested, without when the face is unknown (so it can be clustered and named
later). Before writing, each detected face is matched to the rows already on its photo (box
overlap, IoU >= ``MATCH_IOU``, each row matched once):

* no row there: a **new** row, with an id derived from the photo and the box, so a rerun that
  detects the same face finds the same id;
* facepipeline's own row, unedited: **rewritten** in place when the suggestion changed (a new index
  version), left alone when it did not;
* facepipeline's own row that a person edited since (another person, a moved box), or a row
  someone else wrote: **kept**, never touched, and no second row is added for that face (its
  person, if any, is on the photo: recognition will not suggest them for another face);
* no row there, but facepipeline wrote this face's row before (``written_before``): a person
  deleted it, and it stays deleted.

Verified rows are never touched: a photo with a verified face is not a photo awaiting recognition.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from facepipeline.gallery.base import (
    SUGGESTED_BY,
    ExistingFace,
    PendingPhoto,
    SuggestionRow,
    rounded_box,
)
from facepipeline.geometry import BBox, BBoxError
from facepipeline.recognition import FoundFace, PhotoRecognition, RecognizedFace

MATCH_IOU = 0.5
_ROW_IDS = uuid.UUID("6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f")

NEW, REWRITE, KEPT_EDITED, KEPT_OTHERS, KEPT_DELETED = "new", "rewrite", "kept_edited", "kept_others", "kept_deleted"
KEPT = frozenset({KEPT_EDITED, KEPT_OTHERS, KEPT_DELETED})
WRITTEN = frozenset({NEW, REWRITE, KEPT_DELETED})
"""Actions whose row facepipeline wrote at some time: the memory that makes a deletion stick."""


@dataclass(frozen=True)
class FaceOutcome:
    face: RecognizedFace
    action: str
    """``new`` / ``rewrite`` (a row is offered to the gallery), or one of :data:`KEPT` (nothing is written)."""
    face_id: str
    """The row this face is (new or existing)."""


def row_id(photo_id: str, box: BBox) -> str:
    """The id of a new row: the same photo and detected box always give the same id."""
    corners = ",".join(str(v) for v in rounded_box(box.to_json()).values())
    return str(uuid.uuid5(_ROW_IDS, f"{photo_id}|{corners}"))


def is_kept(existing: ExistingFace | None) -> bool:
    """A row on the face that recognition must leave as it is (a person's, or edited by one)."""
    return existing is not None and (existing.edited or not existing.ours)


def reconcile(
    photo: PendingPhoto,
    recognition: PhotoRecognition,
    matches: Sequence[ExistingFace | None],
    context: dict,
    written_before: Collection[str] = frozenset(),
) -> tuple[list[SuggestionRow], list[FaceOutcome]]:
    """The rows to offer the gallery for one photo, and what became of each detected face.

    ``matches``: each face's row on the photo (:func:`match_rows`). ``context`` goes into every
    row's ``training_context`` (index version, model pack): whatever identifies the suggestion, but
    nothing that changes from run to run, or reruns would rewrite. ``written_before``: ids of rows
    facepipeline wrote in earlier runs.
    """
    rows, outcomes = [], []
    for face, existing in zip(recognition.faces, matches, strict=True):
        if is_kept(existing):
            outcomes.append(FaceOutcome(face, KEPT_EDITED if existing.ours else KEPT_OTHERS, existing.face_id))
            continue
        face_id = existing.face_id if existing else row_id(photo.photo_id, face.bbox)
        if existing is None and face_id in written_before:
            outcomes.append(FaceOutcome(face, KEPT_DELETED, face_id))
            continue
        rows.append(_row(photo.photo_id, face_id, face, context, existing))
        outcomes.append(FaceOutcome(face, REWRITE if existing else NEW, face_id))
    return rows, outcomes


def _row(photo_id: str, face_id: str, face: RecognizedFace, context: dict, replaces: ExistingFace | None) -> SuggestionRow:
    suggestion = face.suggestion
    best = face.candidates[0] if face.candidates else None
    return SuggestionRow(
        face_id=face_id,
        photo_id=photo_id,
        person_id=suggestion.person_id if suggestion else None,
        confidence=suggestion.similarity if suggestion else None,
        bbox=rounded_box(face.bbox.to_json()),
        descriptor=face.descriptor,
        det_score=round(face.det_score, 6),
        detected_bbox={k: round(v, 2) for k, v in face.bbox.to_json().items()},
        context={
            **context,
            "suggested_by": SUGGESTED_BY,
            "suggested_person_id": suggestion.person_id if suggestion else None,
            "level": suggestion.level if suggestion else None,
            "threshold": suggestion.threshold if suggestion else None,
            "context_score": suggestion.context if suggestion else None,
            "best_similarity": best.similarity if best else None,
            "candidates": [{"person_id": c.person_id, "similarity": c.similarity} for c in face.candidates[:3]],
        },
        replaces=replaces,
    )


def match_rows(faces: Sequence[FoundFace], existing: Sequence[ExistingFace]) -> list[ExistingFace | None]:
    """Each face's row on the photo: the best-overlapping one, greedily by IoU, each row once."""
    boxes = []
    for row in existing:
        try:
            boxes.append(BBox.from_json(row.bbox) if row.bbox is not None else None)
        except BBoxError:
            boxes.append(None)  # a row with a broken box cannot be this face
    pairs = sorted(
        ((face.bbox.iou(box), f, r) for f, face in enumerate(faces) for r, box in enumerate(boxes) if box is not None),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    matched: list[ExistingFace | None] = [None] * len(faces)
    used_rows: set[int] = set()
    for iou, f, r in pairs:
        if iou < MATCH_IOU:
            break
        if matched[f] is None and r not in used_rows:
            matched[f] = existing[r]
            used_rows.add(r)
    return matched
