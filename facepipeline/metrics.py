"""How good an index is: a held-out evaluation with a fixed seed, stratified per person.

For every person with at least two usable faces, a share of their faces (at least one, never all)
is held out as probes; the rest form the gallery. Which faces are held out is decided per face, by
a seeded hash of its id: adding people or faces leaves the others where they were, so two versions
are compared on (nearly) the same probes. Every face is compared with every gallery face exactly
(a matrix product, no approximate search), which gives :class:`GalleryScores`: for each face and
each person, the similarity of the face to that person's nearest gallery face. Everything below is
read from that table:

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

The table costs one dot product per (face, gallery face) pair. A :class:`ScoreCache` keeps the
last one, keyed by content: a row by the exact bytes of its face's vector, a column by the exact
vectors of its person's gallery faces. An entry is reused only when both keys are equal, so it is
the same number a fresh computation gives (up to BLAS's rounding, ~1e-7); anything that changed (a
face added, re-embedded, relabelled, moved between gallery and probes) is computed again. Adding
25 faces to 5,000 then costs about 25 rows and the columns of the people they join.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from facepipeline.index import vector_digests

MIN_SAMPLES = 10
SWEEP = np.round(np.arange(0.0, 1.0001, 0.01), 2)
_BLOCK = 1 << 24
"""Similarities computed at once (64 MB of float32): rows are taken in chunks of this many / columns."""
MAX_CACHED_SCORES = 1 << 26
"""The largest table a :class:`ScoreCache` keeps (256 MB; e.g. 20,000 faces x 3,000 people): above
it, every evaluation computes its table afresh."""


# The figures of an evaluation that a summary shows (a training session, the CLI's JSON).
SUMMARY_KEYS = (
    "status", "message", "rank1_accuracy", "rank1_accuracy_macro", "precision", "recall", "f1",
    "recommended_threshold", "far", "target_far", "target_met", "probe_faces", "gallery_faces",
)


@dataclass(frozen=True)
class EvaluationConfig:
    test_fraction: float = 0.2
    seed: int = 42
    target_far: float = 0.001


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


def split_gallery_probes(
    person_ids: Sequence[str], config: EvaluationConfig, face_ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of gallery and probe faces: per person, a share held out by a seeded hash of the face id."""
    face_ids = face_ids if face_ids is not None else [str(row) for row in range(len(person_ids))]
    rows_by_person: dict[str, list[int]] = defaultdict(list)
    for row, person in enumerate(person_ids):
        rows_by_person[person].append(row)
    gallery, probes = [], []
    for rows in rows_by_person.values():
        if len(rows) < 2:
            gallery.extend(rows)
            continue
        rows = sorted(rows, key=lambda row: hashlib.sha256(f"{config.seed}:{face_ids[row]}".encode()).digest())
        n_probe = min(len(rows) - 1, max(1, round(len(rows) * config.test_fraction)))
        probes.extend(rows[:n_probe])
        gallery.extend(rows[n_probe:])
    return np.array(sorted(gallery), dtype=np.int64), np.array(sorted(probes), dtype=np.int64)


@dataclass(frozen=True)
class GalleryScores:
    """For every face (row, in the order given) and every person (column), the cosine similarity
    of the face to that person's nearest gallery face: the exact table an evaluation and a
    calibration are read from."""

    gallery: np.ndarray
    """Row numbers of the gallery faces."""
    probes: np.ndarray
    """Row numbers of the held-out faces."""
    people: np.ndarray
    """The person of each column (every person has at least one gallery face)."""
    own: np.ndarray
    """The column of each row's own person."""
    best: np.ndarray
    """(faces, people) float32."""
    reused: int = 0
    """Entries of ``best`` taken from the cache (the rest were computed)."""

    @property
    def computed(self) -> int:
        return self.best.size - self.reused

    @cached_property
    def others(self) -> np.ndarray:
        """``best`` with each row's own person at -inf: the faces as strangers (made once, read-only)."""
        others = self.best.copy()
        others[np.arange(len(others)), self.own] = -np.inf
        others.flags.writeable = False
        return others


class ScoreCache:
    """The last :class:`GalleryScores` table, in one file, with the content keys of its rows and
    columns (see the module's docstring). Replaced atomically; a file that cannot be read is a miss."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                rows, columns, best = data["rows"], data["columns"], data["best"]
        except (OSError, KeyError, ValueError):
            return None
        if best.shape != (len(rows), len(columns)) or best.dtype != np.float32:
            return None
        return rows, columns, best

    def save(self, rows: np.ndarray, columns: np.ndarray, best: np.ndarray) -> bool:
        if best.size > MAX_CACHED_SCORES:
            self.path.unlink(missing_ok=True)  # a stale table would only be read for nothing
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.stem}-{os.getpid()}.npz")
        with open(staging, "wb") as handle:
            np.savez(handle, rows=rows, columns=columns, best=best)
        os.replace(staging, self.path)
        return True


def gallery_scores(
    vectors: np.ndarray,
    person_ids: Sequence[str],
    config: EvaluationConfig = EvaluationConfig(),
    face_ids: Sequence[str] | None = None,
    *,
    cache: ScoreCache | None = None,
    reuse: bool = True,
) -> GalleryScores:
    """The exact table of :class:`GalleryScores` for these faces and the split of ``config``.

    With a ``cache``, entries whose face and whose person's gallery faces are unchanged are taken
    from it (unless ``reuse`` is false), and the new table is kept in it for the next time.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    gallery, probes = split_gallery_probes(person_ids, config, face_ids)
    persons = np.asarray(person_ids, dtype=object)
    people, own = np.unique(persons, return_inverse=True) if len(persons) else (np.array([], dtype=object), np.array([], dtype=np.int64))
    own = own.astype(np.int64)
    # Gallery rows grouped by person (column), for one segment maximum per column.
    order = gallery[np.argsort(own[gallery], kind="stable")]
    starts = np.searchsorted(own[order], np.arange(len(people)))
    groups = np.split(order, starts[1:]) if len(people) else []
    row_keys = vector_digests(vectors).astype("S32")
    column_keys = np.array(
        [hashlib.blake2b(b"".join(sorted(row_keys[rows].tolist())), digest_size=16).hexdigest() for rows in groups], dtype="S32"
    )
    best = np.empty((len(vectors), len(people)), dtype=np.float32)
    known_rows = np.zeros(len(vectors), dtype=bool)
    known_columns = np.zeros(len(people), dtype=bool)
    cached = cache.load() if cache is not None and reuse else None
    if cached is not None:
        old_rows, old_columns, old_best = cached
        row_at = {key: i for i, key in enumerate(old_rows.tolist())}
        column_at = {key: i for i, key in enumerate(old_columns.tolist())}
        was_row = np.array([row_at.get(key, -1) for key in row_keys.tolist()], dtype=np.int64)
        was_column = np.array([column_at.get(key, -1) for key in column_keys.tolist()], dtype=np.int64)
        known_rows, known_columns = was_row >= 0, was_column >= 0
        if known_rows.any() and known_columns.any():
            best[np.ix_(known_rows, known_columns)] = old_best[np.ix_(was_row[known_rows], was_column[known_columns])]
    reused = int(known_rows.sum()) * int(known_columns.sum())
    everything = np.ones(len(vectors), dtype=bool)
    _fill_best(best, vectors, groups, everything, ~known_columns)  # new columns, for every face
    _fill_best(best, vectors, groups, ~known_rows, known_columns)  # new faces, for the other columns
    unchanged = cached is not None and np.array_equal(cached[0], row_keys) and np.array_equal(cached[1], column_keys)
    if cache is not None and not unchanged:
        cache.save(row_keys, column_keys, best)
    return GalleryScores(gallery=gallery, probes=probes, people=people, own=own, best=best, reused=reused)


def _fill_best(best: np.ndarray, vectors: np.ndarray, groups: list[np.ndarray], rows: np.ndarray, columns: np.ndarray) -> None:
    """``best[rows, columns]``: per row, the maximum similarity to each column's gallery vectors."""
    row_numbers, column_numbers = np.flatnonzero(rows), np.flatnonzero(columns)
    if not len(row_numbers) or not len(column_numbers):
        return
    members = [groups[c] for c in column_numbers]
    gallery = vectors[np.concatenate(members)]
    offsets = np.cumsum([0] + [len(m) for m in members[:-1]])
    chunk = max(1, _BLOCK // max(1, len(gallery)))
    for start in range(0, len(row_numbers), chunk):
        chunk_rows = row_numbers[start : start + chunk]
        sims = vectors[chunk_rows] @ gallery.T
        best[np.ix_(chunk_rows, column_numbers)] = np.maximum.reduceat(sims, offsets, axis=1)


def evaluate(
    vectors: np.ndarray,
    person_ids: Sequence[str],
    config: EvaluationConfig = EvaluationConfig(),
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
    nearest = scores.best[probes].argmax(axis=1)
    predicted = scores.people[nearest]
    best = scores.best[probes, nearest]
    correct = nearest == scores.own[probes]
    # Every face as a stranger: its best match outside its own person.
    impostor = scores.others.max(axis=1)
    genuine = scores.best[probes, scores.own[probes]]

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
