"""Statistics and validation of a verified-face dataset (SPEC section 3, "Dataset")."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from facepipeline.faces import VerifiedFace

# People by face count. The SPEC's bands start at 3 (its default minimum); "1-2" keeps the
# histogram honest when a smaller minimum is configured.
FACE_COUNT_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("1-2", 1, 2),
    ("3-4", 3, 4),
    ("5-9", 5, 9),
    ("10-14", 10, 14),
    ("15-19", 15, 19),
    ("20+", 20, None),
)
MIN_PEOPLE = 2
WARN_BELOW_FACES = 5


@dataclass(frozen=True)
class DatasetStats:
    people: int
    faces: int
    min_faces_per_person: int
    max_faces_per_person: int
    avg_faces_per_person: float
    people_by_face_count: dict[str, int]

    def as_dict(self) -> dict:
        return {
            "people": self.people,
            "faces": self.faces,
            "min_faces_per_person": self.min_faces_per_person,
            "max_faces_per_person": self.max_faces_per_person,
            "avg_faces_per_person": self.avg_faces_per_person,
            "people_by_face_count": dict(self.people_by_face_count),
        }


@dataclass(frozen=True)
class Validation:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def faces_per_person(faces: Sequence[VerifiedFace]) -> Counter[str]:
    return Counter(f.person_id for f in faces)


def dataset_stats(faces: Sequence[VerifiedFace]) -> DatasetStats:
    counts = faces_per_person(faces)
    values = list(counts.values())
    bands = {name: 0 for name, _, _ in FACE_COUNT_BANDS}
    for n in values:
        for name, low, high in FACE_COUNT_BANDS:
            if n >= low and (high is None or n <= high):
                bands[name] += 1
                break
    return DatasetStats(
        people=len(counts),
        faces=len(faces),
        min_faces_per_person=min(values, default=0),
        max_faces_per_person=max(values, default=0),
        avg_faces_per_person=round(sum(values) / len(values), 2) if values else 0.0,
        people_by_face_count=bands,
    )


def validate_dataset(faces: Sequence[VerifiedFace]) -> Validation:
    """Errors stop a training run; warnings are shown and the run goes on."""
    counts = faces_per_person(faces)
    names = {f.person_id: f.person_name for f in faces}
    errors: list[str] = []
    repeated = [face_id for face_id, n in Counter(f.face_id for f in faces).items() if n > 1]
    if repeated:
        errors.append(f"{len(repeated)} face ids appear more than once (e.g. {repeated[0]}): a face has one label")
    if len(counts) < MIN_PEOPLE:
        errors.append(f"need at least {MIN_PEOPLE} people with verified faces, found {len(counts)}")
    warnings = [
        f"{names[pid] or pid} has only {n} verified faces (fewer than {WARN_BELOW_FACES})"
        for pid, n in sorted(counts.items(), key=lambda item: (item[1], names[item[0]] or item[0]))
        if n < WARN_BELOW_FACES
    ]
    return Validation(errors=errors, warnings=warnings)


def keep_people_with_min_faces(faces: Sequence[VerifiedFace], min_faces_per_person: int) -> list[VerifiedFace]:
    if min_faces_per_person < 1:
        raise ValueError(f"min_faces_per_person must be >= 1, got {min_faces_per_person}")
    counts = faces_per_person(faces)
    return [f for f in faces if counts[f.person_id] >= min_faces_per_person]


def dataset_fingerprint(faces: Sequence[VerifiedFace]) -> str:
    """A stable hash of what was trained on: which face, whose, on which photo, where."""
    digest = hashlib.sha256()
    for f in sorted(faces, key=lambda face: face.face_id):
        box = f.bbox.to_json() if f.bbox else None
        digest.update(f"{f.face_id}|{f.person_id}|{f.photo_ref}|{box}\n".encode())
    return digest.hexdigest()
