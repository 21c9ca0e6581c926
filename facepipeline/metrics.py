"""How good an index is: a held-out evaluation with a fixed seed, stratified per person.

For every person with at least two usable faces, a share of their faces (at least one, never all)
is held out as probes; the rest form the gallery. Which faces are held out is decided per face, by
a seeded hash of its id: adding people or faces leaves the others where they were, so two versions
are compared on (nearly) the same probes. Every face is compared with every gallery face exactly
(a matrix product, no approximate search), which gives :class:`GalleryScores`: for each face, its
similarity to its own person's nearest gallery face and to the nearest gallery face of anybody
else. Everything below is read from them:

* rank-1 accuracy: is the nearest gallery face the probe's person? Micro (over probes) and macro
  (mean over people, so that a person with 500 photos does not drown the others).
* precision / recall / F1 at a threshold: a probe whose best similarity is under the threshold
  is "unknown" (no suggestion). precision = correct suggestions / suggestions;
  recall = correct suggestions / probes.
* false-accept rate: every face (probe or gallery) is also asked as a stranger, by searching the
  gallery *without* its own person (leave-identity-out). FAR(t) = share of those searches whose
  best similarity still reaches t: the rate at which an unknown face would be given somebody's
  name. With N faces, FARs below about 3/N cannot be shown (``far_resolution`` = 1/N).
* the recommended threshold: the lowest threshold whose FAR is at most the target. When no
  threshold reaches the target with recall > 0 (people too alike), the one with the lowest FAR is
  reported with ``target_met = False``. ``target_met`` is also False when there are too few
  strangers to show the target at all (fewer than 3 / target_far searches: ``far_verifiable``).
* per person (``per_person``, worst first): their probes, how many were named right, the mean
  similarity of their probes to their own nearest gallery face, and whom they were most often
  mistaken for.

The scores cost one dot product per (face, gallery face) pair, in bounded memory; a
:class:`ScoreCache` keeps what the next evaluation can reuse exactly (see
:mod:`facepipeline.person_scores`). Adding 25 faces to 5,000 then costs about 25 rows and the
columns of the people they join.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from facepipeline.person_scores import (
    DEFAULT_CONFIG,
    EvaluationConfig,
    GalleryScores,
    ScoreCache,
    gallery_scores,
    split_gallery_probes,
)

__all__ = [
    "EvaluationConfig", "Evaluation", "GalleryScores", "ScoreCache", "SweepPoint", "evaluate", "gallery_scores",
    "split_gallery_probes",
]

MIN_SAMPLES = 10
SWEEP = np.round(np.arange(0.0, 1.0001, 0.01), 2)


# The figures of an evaluation that a summary shows (a training session, the CLI's JSON).
SUMMARY_KEYS = (
    "status", "message", "rank1_accuracy", "rank1_accuracy_macro", "precision", "recall", "f1",
    "recommended_threshold", "far", "target_far", "target_met", "probe_faces", "gallery_faces",
)


@dataclass
class SweepPoint:
    threshold: float
    far: float
    precision: float
    recall: float
    f1: float


@dataclass
class PersonResult:
    person_id: str
    probes: int
    correct: int
    rank1_accuracy: float
    genuine_similarity_mean: float | None  # the probes' similarity to their own best gallery face
    confused_with: str | None  # the person most often named wrongly for these probes; None without errors


@dataclass
class Evaluation:
    status: str  # "ok" | "too_few_samples"
    message: str
    faces: int
    people: int
    gallery_faces: int = 0
    probe_faces: int = 0
    probe_people: int = 0
    rank1_accuracy: float | None = None
    rank1_accuracy_macro: float | None = None
    recommended_threshold: float | None = None
    target_far: float | None = None
    target_met: bool | None = None
    impostor_trials: int = 0
    far_resolution: float | None = None
    far_verifiable: bool | None = None
    far: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    genuine_similarity_mean: float | None = None
    impostor_similarity_p99: float | None = None
    sweep: list[SweepPoint] = field(default_factory=list)
    per_person: list[PersonResult] = field(default_factory=list)  # worst first
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        if self.status != "ok":
            return f"**{self.message}**"
        lines = [
            "| threshold | FAR | precision | recall | F1 |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        shown = {round(t, 2) for t in np.arange(0.2, 0.81, 0.05)} | {self.recommended_threshold}
        for point in self.sweep:
            if point.threshold in shown:
                mark = " **(recommended)**" if point.threshold == self.recommended_threshold else ""
                lines.append(
                    f"| {point.threshold:.2f}{mark} | {point.far:.4f} | {point.precision:.4f} | {point.recall:.4f} | {point.f1:.4f} |"
                )
        return "\n".join(lines)


def evaluate(
    vectors: np.ndarray,
    person_ids: Sequence[str],
    config: EvaluationConfig = DEFAULT_CONFIG,
    face_ids: Sequence[str] | None = None,
    *,
    scores: GalleryScores | None = None,
) -> Evaluation:
    """The held-out evaluation of these faces (``scores``: their table, when already made)."""
    people = len(set(person_ids))
    base = {"faces": len(person_ids), "people": people, "config": asdict(config)}
    if len(person_ids) < MIN_SAMPLES:
        return Evaluation(status="too_few_samples", message=f"too few samples: {len(person_ids)} faces (need at least {MIN_SAMPLES})", **base)
    if scores is None:
        scores = gallery_scores(vectors, person_ids, config, face_ids)
    gallery, probes = scores.gallery, scores.probes
    if len(probes) == 0 or people < 2:
        return Evaluation(status="too_few_samples", message="too few samples: no person has two faces to hold one out", **base)

    truth = np.asarray(person_ids, dtype=object)
    # Probes: is the nearest gallery face their person? (Probes are not in the gallery.)
    nearest = scores.nearest(probes)
    predicted = scores.people[nearest]
    correct = nearest == scores.own[probes]
    genuine = scores.own_score[probes]
    best = np.where(correct, genuine, scores.best_stranger[probes])
    # Every face as a stranger: its best match outside its own person.
    impostor = scores.best_stranger

    sweep = [_sweep_point(t, best, correct, impostor) for t in SWEEP]
    passing = [p for p in sweep if p.far <= config.target_far and p.recall > 0]
    chosen = min(passing, key=lambda p: p.threshold) if passing else min(sweep, key=lambda p: (p.far, p.threshold))

    per_person = defaultdict(list)
    for person, ok in zip(truth[probes], correct, strict=True):
        per_person[person].append(ok)
    verifiable = config.target_far >= 3 / len(impostor)
    message = f"held out {len(probes)} of {len(person_ids)} faces from {len(per_person)} people"
    if not passing:
        message += f"; no threshold reaches FAR <= {config.target_far} with recall > 0 (best: FAR {chosen.far} at {chosen.threshold})"
    if not verifiable:
        message += f"; {len(impostor)} impostor trials cannot show a FAR below ~{3 / len(impostor):.4f}"
    return Evaluation(
        status="ok",
        message=message,
        gallery_faces=len(gallery),
        probe_faces=len(probes),
        probe_people=len(per_person),
        rank1_accuracy=round(float(correct.mean()), 4),
        rank1_accuracy_macro=round(float(np.mean([np.mean(v) for v in per_person.values()])), 4),
        recommended_threshold=chosen.threshold,
        target_far=config.target_far,
        target_met=bool(passing) and verifiable,
        impostor_trials=len(impostor),
        far_resolution=round(1 / len(impostor), 6),
        far_verifiable=verifiable,
        far=chosen.far,
        precision=chosen.precision,
        recall=chosen.recall,
        f1=chosen.f1,
        genuine_similarity_mean=round(float(np.mean(genuine[np.isfinite(genuine)])), 4) if np.isfinite(genuine).any() else None,
        impostor_similarity_p99=round(float(np.quantile(impostor, 0.99)), 4),
        sweep=sweep,
        per_person=person_results(truth[probes], predicted, genuine),
        **base,
    )


def person_results(truth: np.ndarray, predicted: np.ndarray, genuine: np.ndarray) -> list[PersonResult]:
    """Per person, from each probe's person, the person named for it and its genuine similarity
    (-inf where none of the person's gallery faces was reached): worst rank-1 first, then most
    probes, then id."""
    rows_by_person: dict[str, list[int]] = defaultdict(list)
    for row, person in enumerate(truth.tolist()):
        rows_by_person[str(person)].append(row)
    results = []
    for person, rows in rows_by_person.items():
        named = [str(p) for p in predicted[rows].tolist()]
        correct = sum(p == person for p in named)
        wrong = Counter(p for p in named if p != person)
        sims = genuine[rows]
        sims = sims[np.isfinite(sims)]
        results.append(PersonResult(
            person_id=person,
            probes=len(rows),
            correct=correct,
            rank1_accuracy=round(correct / len(rows), 4),
            genuine_similarity_mean=round(float(sims.mean()), 4) if sims.size else None,
            confused_with=min(wrong, key=lambda p: (-wrong[p], p)) if wrong else None,
        ))
    return sorted(results, key=lambda r: (r.rank1_accuracy, -r.probes, r.person_id))


def _sweep_point(threshold: float, best: np.ndarray, correct: np.ndarray, impostor: np.ndarray) -> SweepPoint:
    accepted = best >= threshold
    hits = int(np.sum(accepted & correct))
    suggestions = int(np.sum(accepted))
    precision = hits / suggestions if suggestions else 1.0
    recall = hits / len(best)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = float(np.mean(impostor >= threshold))
    return SweepPoint(float(threshold), round(far, 6), round(precision, 4), round(recall, 4), round(f1, 4))
