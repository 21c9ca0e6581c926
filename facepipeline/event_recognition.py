"""Recognition of one event's new photos, end to end: read, fetch, detect, suggest, write back.

The photos are the event's photos without a verified face. Each is fetched through the photo cache,
every face on it is recognized (:mod:`facepipeline.recognition`), reconciled with the rows already
on the photo (:mod:`facepipeline.suggestions`) and written to ``photo_faces``. Photos are handled
in the order they were added, and the people suggested on earlier photos give context to the later
ones (as do the event's verified faces). Nothing is lost: a photo that cannot be fetched or decoded
and a photo with no face on it each get a row in the result table, with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pyarrow as pa

from facepipeline.annotate import GREEN, GREY, YELLOW, Box, annotate
from facepipeline.errors import FacePipelineError
from facepipeline.gallery.base import Gallery, PendingPhoto, SuggestionReport, SuggestionRow
from facepipeline.images import decode_image
from facepipeline.photos import PhotoCache
from facepipeline.recognition import PhotoRecognition, RecognizedFace, Recognizer
from facepipeline.suggestions import KEPT, WRITTEN, FaceOutcome, is_kept, match_rows, reconcile

# Photo statuses in the result table.
RECOGNIZED, NO_FACE, PHOTO_FAILED = "recognized", "no_face", "photo_failed"

RESULT_SCHEMA = pa.schema(
    [
        ("photo_id", pa.string()), ("event_id", pa.string()), ("photo_url", pa.string()),
        ("photo_status", pa.string()), ("error", pa.string()),
        ("face_id", pa.string()), ("action", pa.string()),
        ("bbox_x", pa.float32()), ("bbox_y", pa.float32()), ("bbox_width", pa.float32()), ("bbox_height", pa.float32()),
        ("det_score", pa.float32()),
        ("person_id", pa.string()), ("person_name", pa.string()), ("similarity", pa.float32()),
        ("level", pa.string()), ("threshold", pa.float32()), ("context_score", pa.float32()),
        ("best_candidate_id", pa.string()), ("best_similarity", pa.float32()),
    ]
)


@dataclass
class EventRecognition:
    event_id: str | None
    table: pa.Table
    written: SuggestionReport
    photos: int = 0
    photos_failed: int = 0
    photos_without_faces: list[str] = field(default_factory=list)
    faces: int = 0
    suggested: int = 0
    unknown: int = 0
    kept: int = 0
    """Faces whose row a person wrote, edited or deleted: left as they are."""
    ignored: int = 0
    """Detections too small or too unsure to recognize."""
    failures: Counter = field(default_factory=Counter)
    annotated: list[tuple[str, bytes]] = field(default_factory=list)
    """(photo id, JPEG) of a sample of the photos, drawn with their boxes and names."""

    def summary(self) -> dict:
        return {
            "event_id": self.event_id,
            "photos": self.photos,
            "photos_failed": self.photos_failed,
            "photos_without_faces": len(self.photos_without_faces),
            "faces_found": self.faces,
            "suggested": self.suggested,
            "unknown": self.unknown,
            "kept_existing": self.kept,
            "detections_ignored": self.ignored,
            "written": self.written.as_dict(),
        }


def recognize_event(
    gallery: Gallery,
    cache: PhotoCache,
    recognizer: Recognizer,
    event_id: str | None,
    *,
    nearby: set[str] = frozenset(),
    row_context: dict | None = None,
    written_before: Collection[str] = frozenset(),
    annotate_sample: int = 6,
    log: Callable[[str], None] = lambda _: None,
) -> EventRecognition:
    """Recognize every photo of the event that has no verified face; write the suggestions.

    ``nearby``: people already known at this event (its verified faces). ``row_context`` goes into
    every written row's ``training_context`` (which index version, which model). ``written_before``:
    ids of the rows facepipeline wrote for this event before (a deleted one is not written again).
    """
    photos = gallery.pending_photos(event_id)
    log(f"{len(photos)} photos without a verified face")
    records = {r.ref: r for r in cache.fetch_all(p.url for p in photos)}
    result = EventRecognition(event_id, RESULT_SCHEMA.empty_table(), SuggestionReport(), photos=len(photos))
    rows: list[dict] = []
    to_write: list[SuggestionRow] = []
    present = set(nearby)
    for photo in photos:
        record = records[photo.url]
        if not record.ok:
            _photo_failed(result, rows, photo, record.error or "photo unavailable")
            continue
        try:
            image = decode_image(cache.read(record.sha256))
        except (OSError, FacePipelineError) as exc:
            _photo_failed(result, rows, photo, f"photo unreadable: {exc}")
            continue
        found, ignored = recognizer.find(image)
        result.ignored += ignored
        if not found:
            result.photos_without_faces.append(photo.photo_id)
            rows.append(_photo_row(photo, NO_FACE, None))
            continue
        # Faces on rows a person wrote or edited keep them; their people are on the photo already.
        matches = match_rows(found, photo.existing)
        kept = [is_kept(row) for row in matches]
        on_photo = {row.person_id for row, keep in zip(matches, kept, strict=True) if keep and row.person_id}
        open_faces = [face for face, keep in zip(found, kept, strict=True) if not keep]
        suggestions = iter(recognizer.suggest(open_faces, present | on_photo, taken=on_photo))
        recognition = PhotoRecognition(
            tuple(RecognizedFace(**vars(face), suggestion=None if keep else next(suggestions))
                  for face, keep in zip(found, kept, strict=True)),
            ignored,
        )
        offered, outcomes = reconcile(photo, recognition, matches, row_context or {}, written_before)
        to_write.extend(offered)
        present |= on_photo
        for outcome in outcomes:
            _count(result, outcome)
            rows.append(_face_row(photo, outcome))
            if outcome.face.person_id and outcome.action not in KEPT:
                present.add(outcome.face.person_id)
        if len(result.annotated) < annotate_sample:
            result.annotated.append((photo.photo_id, annotate(image, _boxes(outcomes))))
    result.written = gallery.write_suggestions(to_write)
    result.table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    return result


def _count(result: EventRecognition, outcome: FaceOutcome) -> None:
    result.faces += 1
    if outcome.action in KEPT:
        result.kept += 1
    elif outcome.face.suggestion:
        result.suggested += 1
    else:
        result.unknown += 1


def _photo_failed(result: EventRecognition, rows: list[dict], photo: PendingPhoto, error: str) -> None:
    result.photos_failed += 1
    result.failures[error.split(":")[0]] += 1
    rows.append(_photo_row(photo, PHOTO_FAILED, error))


def _photo_row(photo: PendingPhoto, status: str, error: str | None) -> dict:
    return {"photo_id": photo.photo_id, "event_id": photo.event_id, "photo_url": photo.url, "photo_status": status, "error": error}


def _face_row(photo: PendingPhoto, outcome: FaceOutcome) -> dict:
    face, suggestion = outcome.face, outcome.face.suggestion
    best = face.candidates[0] if face.candidates else None
    return {
        **_photo_row(photo, RECOGNIZED, None),
        "face_id": outcome.face_id,
        "action": outcome.action,
        "bbox_x": face.bbox.x, "bbox_y": face.bbox.y, "bbox_width": face.bbox.width, "bbox_height": face.bbox.height,
        "det_score": face.det_score,
        "person_id": suggestion.person_id if suggestion else None,
        "person_name": suggestion.person_name if suggestion else None,
        "similarity": suggestion.similarity if suggestion else None,
        "level": suggestion.level if suggestion else None,
        "threshold": suggestion.threshold if suggestion else None,
        "context_score": suggestion.context if suggestion else None,
        "best_candidate_id": best.person_id if best else None,
        "best_similarity": best.similarity if best else None,
    }


def _boxes(outcomes: list[FaceOutcome]) -> list[Box]:
    boxes = []
    for outcome in outcomes:
        face = outcome.face
        if outcome.action in KEPT:
            boxes.append(Box(face.bbox, "kept (a person's)", GREY))
        elif face.suggestion:
            name = face.suggestion.person_name or face.suggestion.person_id[:8]
            boxes.append(Box(face.bbox, f"{name} {face.suggestion.similarity:.2f}", GREEN))
        else:
            best = f" (best {face.candidates[0].similarity:.2f})" if face.candidates else ""
            boxes.append(Box(face.bbox, f"unknown{best}", YELLOW))
    return boxes



def written_ids(previous: pa.Table | None) -> set[str]:
    """The rows an earlier result table says facepipeline wrote (or kept deleted)."""
    if previous is None:
        return set()
    return {face for face, action in zip(previous.column("face_id").to_pylist(), previous.column("action").to_pylist(), strict=True)
            if action in WRITTEN}
