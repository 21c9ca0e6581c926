"""Name the faces on a new photo: detect every face, embed it, search the promoted index, suggest.

For each detected face the index gives its nearest known faces; they are folded into one
*candidate* per person, scored by the best similarity to any of that person's faces. A candidate
can be suggested only when its similarity reaches the threshold of its person's data level
(``confidence_thresholds.low_data / medium_data / high_data``; the level comes from how many faces
of the person the index holds, see :class:`~facepipeline.gallery.config.DataLevels`).

Among the candidates that pass, ``context_weight`` re-ranks: a person gets
``context_weight x (share of the people already recognized on this photo or at this event whom they
were seen with before)`` added to their score. The threshold is always checked on the plain
similarity, so the calibrated false-accept rate holds whatever the context; context only decides
between people who are each plausible on their own.

A person is on a photo once. Faces are assigned greedily, best score first: the best
(face, person) pair of the whole photo is taken, that person is no longer available to the other
faces of the photo, the context is recomputed with them present, and so on. A face whose every
passing candidate is taken stays unknown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from facepipeline.errors import FacePipelineError
from facepipeline.gallery.base import CoOccurrence
from facepipeline.gallery.config import ConfidenceThresholds, DataLevels
from facepipeline.geometry import BBox
from facepipeline.index import FaceIndex, IndexVersion
from facepipeline.model.face_model import Detection, FaceModel

# Faces smaller than this (the shorter side, in pixels of the photo) are not recognized: ArcFace
# is trained on 112 px crops, and a face of a dozen pixels gives a vector that matches anyone.
MIN_FACE_PX = 20
# Detections scoring less are not recognized: on whole photos SCRFD's weakest detections are
# mostly not faces (a dog scored 0.64 on dlib_dogs.jpg; real faces there scored 0.73 and more).
MIN_DET_SCORE = 0.7
# Nearest faces searched per detected face (then folded into people): enough to reach the
# second and third person behind one person's many photos.
NEIGHBOURS = 50


class RecognitionError(FacePipelineError):
    """Recognition cannot run as configured (no promoted index, another model's index, bad settings)."""


@dataclass(frozen=True)
class RecognitionPolicy:
    thresholds: ConfidenceThresholds
    levels: DataLevels = field(default_factory=DataLevels)
    context_weight: float = 0.1
    min_face_px: int = MIN_FACE_PX
    min_det_score: float = MIN_DET_SCORE
    neighbours: int = NEIGHBOURS

    def __post_init__(self) -> None:
        for level in ("low_data", "medium_data", "high_data"):
            value = getattr(self.thresholds, level)
            if not 0.0 <= value <= 1.0:
                raise RecognitionError(f"confidence_thresholds.{level} must be between 0 and 1, got {value}")
        if not 0.0 <= self.context_weight <= 1.0:
            raise RecognitionError(f"context_weight must be between 0 and 1, got {self.context_weight}")

    def threshold(self, level: str) -> float:
        return getattr(self.thresholds, level)


@dataclass(frozen=True)
class Candidate:
    person_id: str
    person_name: str | None
    similarity: float
    """Best cosine similarity to any of the person's indexed faces."""
    level: str
    threshold: float
    context: float = 0.0
    """Share of the people already recognized nearby who were seen with this person before."""

    @property
    def passes(self) -> bool:
        return self.similarity >= self.threshold

    def score(self, context_weight: float) -> float:
        return self.similarity + context_weight * self.context


class PersonDirectory:
    """The people an index version knows: name, and how many faces (hence which data level)."""

    def __init__(self, person_ids: Sequence[str], names: Sequence[str | None], levels: DataLevels) -> None:
        counts: dict[str, int] = defaultdict(int)
        self.names: dict[str, str | None] = {}
        for person, name in zip(person_ids, names, strict=True):
            counts[person] += 1
            self.names.setdefault(person, name)
        self.counts = dict(counts)
        self.levels = levels

    @classmethod
    def of(cls, index: FaceIndex, levels: DataLevels) -> PersonDirectory:
        return cls(index.entries.column("person_id").to_pylist(), index.entries.column("person_name").to_pylist(), levels)

    def level(self, person_id: str) -> str:
        return self.levels.level(self.counts.get(person_id, 0))


class ContextPrior:
    """Who was seen with whom before (verified labels): on one photo, or at one event."""

    def __init__(self, co_occurrence: CoOccurrence | None = None) -> None:
        self._seen_with: dict[str, set[str]] = defaultdict(set)
        if co_occurrence is not None:
            for groups in (co_occurrence.photo_people, co_occurrence.event_people):
                for people in groups.values():
                    for person in people:
                        self._seen_with[person] |= people - {person}

    def context(self, person_id: str, present: Collection[str]) -> float:
        """Share of ``present`` (other people) seen with ``person_id`` before; 0 when nobody is present."""
        others = [p for p in present if p != person_id]
        if not others:
            return 0.0
        known = self._seen_with.get(person_id, set())
        return sum(p in known for p in others) / len(others)


def candidates_for(
    index: FaceIndex, vectors: np.ndarray, directory: PersonDirectory, policy: RecognitionPolicy
) -> list[list[Candidate]]:
    """Per query vector, one candidate per person among its nearest faces, best similarity first."""
    if len(vectors) == 0:
        return []
    labels, similarities = index.search(np.asarray(vectors, dtype=np.float32), k=policy.neighbours)
    people = index.entries.column("person_id").to_pylist()
    found = []
    for row_labels, row_sims in zip(labels, similarities, strict=True):
        best: dict[str, float] = {}
        for label, similarity in zip(row_labels.tolist(), row_sims.tolist(), strict=True):
            person = people[label]
            best[person] = max(best.get(person, -1.0), similarity)
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        found.append(
            [
                Candidate(person, directory.names.get(person), round(sim, 6), level, policy.threshold(level))
                for person, sim in ranked
                for level in (directory.level(person),)
            ]
        )
    return found


def assign(
    faces: Sequence[Sequence[Candidate]],
    prior: ContextPrior,
    policy: RecognitionPolicy,
    nearby: Collection[str] = (),
    taken: Collection[str] = (),
) -> list[Candidate | None]:
    """The suggestion for each face of one photo (None: unknown); no person twice.

    ``nearby``: people already known to be at this photo's event (its verified faces, earlier
    suggestions), who give context to everyone on the photo. ``taken``: people already on this
    photo (rows a person labelled): never suggested again, and context for the others.
    """
    chosen: list[Candidate | None] = [None] * len(faces)
    taken = set(taken)
    open_faces = set(range(len(faces)))
    while open_faces:
        present = set(nearby) | taken
        best: tuple[float, int, Candidate] | None = None
        for face in sorted(open_faces):
            for candidate in faces[face]:
                if not candidate.passes or candidate.person_id in taken:
                    continue
                candidate = replace(candidate, context=round(prior.context(candidate.person_id, present), 6))
                score = candidate.score(policy.context_weight)
                if best is None or score > best[0]:
                    best = (score, face, candidate)
        if best is None:
            break  # no face has a passing candidate left: the rest stay unknown
        _, face, candidate = best
        chosen[face] = candidate
        taken.add(candidate.person_id)
        open_faces.discard(face)
    return chosen


@dataclass(frozen=True)
class FoundFace:
    """A face detected on a photo, embedded and searched: its candidates, not yet a suggestion."""

    bbox: BBox
    det_score: float
    descriptor: np.ndarray
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class RecognizedFace(FoundFace):
    suggestion: Candidate | None = None

    @property
    def person_id(self) -> str | None:
        return self.suggestion.person_id if self.suggestion else None


@dataclass(frozen=True)
class PhotoRecognition:
    faces: tuple[RecognizedFace, ...]
    ignored: int = 0
    """Detections smaller than ``min_face_px`` or scored under ``min_det_score``: not recognized, not written."""


class Recognizer:
    """The promoted index version and the loaded model, checked to belong together."""

    def __init__(self, model: FaceModel, version: IndexVersion, policy: RecognitionPolicy, prior: ContextPrior) -> None:
        check_same_model(version, model)
        self.model = model
        self.version = version
        self.index = version.load()
        self.directory = PersonDirectory.of(self.index, policy.levels)
        self.policy = policy
        self.prior = prior

    def find(self, image: np.ndarray) -> tuple[list[FoundFace], int]:
        """Every usable face on a decoded BGR photo with its candidates, and how many detections were ignored."""
        kept, vectors, ignored = embed_faces_on_photo(
            self.model, image, min_face_px=self.policy.min_face_px, min_det_score=self.policy.min_det_score
        )
        candidates = candidates_for(self.index, vectors, self.directory, self.policy)
        faces = [FoundFace(d.bbox, d.score, v, tuple(c[:5])) for d, v, c in zip(kept, vectors, candidates, strict=True)]
        return faces, ignored

    def suggest(self, faces: Sequence[FoundFace], nearby: Collection[str] = (), taken: Collection[str] = ()) -> list[Candidate | None]:
        """One suggestion (or None) per face of one photo; see :func:`assign`."""
        return assign([face.candidates for face in faces], self.prior, self.policy, nearby, taken)

    def recognize(self, image: np.ndarray, nearby: Collection[str] = ()) -> PhotoRecognition:
        """Every face on a decoded BGR photo, with its suggestion (or none)."""
        faces, ignored = self.find(image)
        suggestions = self.suggest(faces, nearby)
        return PhotoRecognition(
            tuple(RecognizedFace(**vars(f), suggestion=s) for f, s in zip(faces, suggestions, strict=True)), ignored
        )


def embed_faces_on_photo(
    model: FaceModel, image: np.ndarray, *, min_face_px: int = MIN_FACE_PX, min_det_score: float = MIN_DET_SCORE
) -> tuple[list[Detection], np.ndarray, int]:
    """The faces on a whole photo big and sure enough to recognize, with their embeddings (a face
    whose vector is not finite is dropped), and how many detections were left out."""
    detections = model.detect(image)
    kept = [d for d in detections if min(d.bbox.width, d.bbox.height) >= min_face_px and d.score >= min_det_score]
    if not kept:
        return [], np.empty((0, model.embedding_dim), dtype=np.float32), len(detections)
    vectors = model.embed(np.stack([model.align(image, d) for d in kept]))
    finite = np.isfinite(vectors).all(axis=1)
    kept = [d for d, ok in zip(kept, finite, strict=True) if ok]
    return kept, vectors[finite], len(detections) - len(kept)


def check_same_model(version: IndexVersion, model: FaceModel) -> None:
    """An index holds one recognizer's vectors; searching it with another's would be meaningless."""
    made_by = version.model or {}
    if made_by.get("model_sha256") != model.pack.recognizer.sha256:
        raise RecognitionError(
            f"index {version.name} was built with the {made_by.get('model_pack', 'unknown')} pack "
            f"(recognizer {str(made_by.get('model_sha256'))[:12]}), but the loaded pack is {model.pack.name} "
            f"(recognizer {model.pack.recognizer.sha256[:12]}): retrain with this pack (mode=full) or load the other one"
        )

