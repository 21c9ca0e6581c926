"""The quality gates a retrain passes before its index may be promoted.

Each gate looks at one product of the retrain and says whether it passed, in one line, with the
figures behind the verdict:

* the dataset: at least two people, each with at least ``min_faces_per_person`` faces, no face twice;
* the embeddings: the recognizer's dimension, finite, unit length, no face twice, at least one usable;
* the index: exactly the usable embeddings, each face once with its label and its vector (in any
  order: an index extended from an earlier version keeps that version's faces first), each vector
  its own nearest neighbour;
* no regression: the new index names held-out faces (rank-1, micro and macro) at most
  ``tolerance`` worse than the promoted index does, both evaluated the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facepipeline.dataset import faces_per_person, validate_dataset
from facepipeline.embedding_store import BATCH_ROWS, OK, embedding_matrix, usable_batches
from facepipeline.faces import VerifiedFace
from facepipeline.index import FaceIndex, IndexVersion
from facepipeline.metrics import EvaluationConfig, evaluate

NORM_TOLERANCE = 1e-3
"""How far from 1 an embedding's length may be (float32 ArcFace vectors are within 1e-6)."""
SELF_MATCH_SAMPLE = 512
"""Index rows queried for themselves: enough to see a broken index, cheap at any size."""
SELF_MATCH_FIRST_EF = 16
"""The sample is searched with this small beam first, and only the faces it misses with the index's
own: a sound graph finds nearly every face at once (at 5,700 faces: 4 missed with a beam of 16, 0
with the index's 128), in a quarter of the time."""
REGRESSION_METRICS = ("rank1_accuracy", "rank1_accuracy_macro")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    summary: str
    figures: dict = field(default_factory=dict)


def _duplicates(ids: Sequence[str]) -> list[str]:
    return sorted(face_id for face_id, n in Counter(ids).items() if n > 1)


def dataset_gate(faces: Sequence[VerifiedFace], min_faces_per_person: int) -> GateResult:
    counts = faces_per_person(faces)
    short = sorted(person for person, n in counts.items() if n < min_faces_per_person)
    problems = list(validate_dataset(faces).errors)  # two people at least, no face twice
    if short:
        problems.append(f"{len(short)} people with fewer than {min_faces_per_person} faces (e.g. {short[0]})")
    figures = {"people": len(counts), "faces": len(faces), "min_faces_per_person": min_faces_per_person,
               "people_below_minimum": len(short), "fewest_faces_per_person": min(counts.values(), default=0)}
    if problems:
        return GateResult(False, "; ".join(problems), figures)
    return GateResult(True, f"{len(faces)} faces of {len(counts)} people, each with at least {min_faces_per_person}", figures)


def embeddings_gate(table: pa.Table, expected_dim: int, norm_tolerance: float = NORM_TOLERANCE) -> GateResult:
    """Batch by batch: memory stays that of ``BATCH_ROWS`` vectors, whatever the table's size."""
    twice = _duplicates(table.column("face_id").to_pylist())
    dim = table.schema.field("embedding").type.list_size
    usable_rows = not_finite = off = 0
    norm_min, norm_max = np.inf, -np.inf
    for _, vectors in usable_batches(table):
        usable_rows += len(vectors)
        if dim != expected_dim:
            continue
        finite = np.isfinite(vectors).all(axis=1)
        norms = np.linalg.norm(vectors[finite], axis=1)
        not_finite += int((~finite).sum())
        off += int((np.abs(norms - 1) > norm_tolerance).sum())
        if norms.size:
            norm_min, norm_max = min(norm_min, float(norms.min())), max(norm_max, float(norms.max()))
    figures = {"faces": table.num_rows, "usable": usable_rows, "dimension": dim, "expected_dimension": expected_dim,
               "duplicate_face_ids": len(twice)}
    problems = []
    if dim != expected_dim:
        problems.append(f"vectors have {dim} dimensions, the recognizer gives {expected_dim}")
    if usable_rows == 0:
        problems.append("no usable embedding")
    elif dim == expected_dim:
        seen = np.isfinite(norm_min)
        figures |= {"not_finite": not_finite, "not_unit_length": off,
                    "norm_min": round(norm_min, 6) if seen else None, "norm_max": round(norm_max, 6) if seen else None}
        if not_finite:
            problems.append(f"{not_finite} vectors with NaN or infinite values")
        if off:
            problems.append(f"{off} vectors whose length is not 1 (within {norm_tolerance:g})")
    if twice:
        problems.append(f"{len(twice)} face ids more than once (e.g. {twice[0]})")
    if problems:
        return GateResult(False, "; ".join(problems), figures)
    return GateResult(True, f"{usable_rows} unit vectors of {dim} dimensions, all finite, one per face", figures)


def index_gate(index: FaceIndex, embeddings: pa.Table, sample: int = SELF_MATCH_SAMPLE) -> GateResult:
    """Chunk by chunk: memory beyond the index's own vectors stays that of ``BATCH_ROWS`` rows."""
    usable_rows = np.flatnonzero(pc.equal(embeddings.column("status"), OK).to_numpy(zero_copy_only=False))
    figures = {"indexed": len(index), "usable_embeddings": len(usable_rows)}
    if len(index) != len(usable_rows) or index.entries.num_rows != len(index):
        return GateResult(False, f"the index holds {len(index)} vectors and {index.entries.num_rows} entries "
                                 f"for {len(usable_rows)} usable embeddings", figures)
    if len(index) == 0:
        return GateResult(False, "the index is empty", figures)
    face_ids = embeddings.column("face_id").take(pa.array(usable_rows)).to_pylist()
    row_of = dict(zip(face_ids, usable_rows.tolist(), strict=True))
    order = [row_of.get(face_id) for face_id in index.entries.column("face_id").to_pylist()]
    if None in order or len(set(order)) != len(order):
        return GateResult(False, "the index entries' face_ids differ from the embeddings'", figures)
    order = np.asarray(order, dtype=np.int64)  # the embeddings' row of each index label
    if index.entries.column("person_id").to_pylist() != embeddings.column("person_id").take(pa.array(order)).to_pylist():
        return GateResult(False, "the index entries' person_ids differ from the embeddings'", figures)

    def expected(labels: np.ndarray) -> np.ndarray:
        return embedding_matrix(embeddings.select(["embedding"]).take(pa.array(order[labels])))

    stored = index.vectors()
    gap = 0.0
    for start in range(0, len(order), BATCH_ROWS):
        labels = np.arange(start, min(start + BATCH_ROWS, len(order)))
        gap = max(gap, float(np.abs(stored[labels] - expected(labels)).max()))
    del stored
    figures["max_vector_difference"] = round(gap, 8)
    if gap > 1e-4:
        return GateResult(False, f"indexed vectors differ from the embeddings by up to {gap:.2g}", figures)
    picked = np.random.default_rng(0).choice(len(index), size=min(sample, len(index)), replace=False)
    queries = expected(picked)
    found = _finds_itself(index, queries, picked, ef=min(SELF_MATCH_FIRST_EF, index.params.ef_for(len(index))))
    if not found.all():  # the index's own search decides for those
        found[~found] = _finds_itself(index, queries[~found], picked[~found])
    figures |= {"self_match_queries": len(picked), "self_match_rate": round(float(found.mean()), 4)}
    if not found.all():
        return GateResult(False, f"{int((~found).sum())} of {len(picked)} sampled faces do not find themselves", figures)
    return GateResult(True, f"{len(index)} vectors = the usable embeddings, each with its label, "
                            f"{len(picked)} sampled faces find themselves", figures)


def _finds_itself(index: FaceIndex, queries: np.ndarray, labels: np.ndarray, ef: int | None = None) -> np.ndarray:
    """Whether each query's nearest entry is its own label, or ties with it (the same photo twice)."""
    found, sims = index.search(queries, k=1, ef=ef)
    return (found[:, 0] == labels) | (sims[:, 0] >= 1 - 1e-5)


def regression_gate(candidate: Mapping, baseline: Mapping | None, *, baseline_name: str | None, tolerance: float) -> GateResult:
    """``candidate`` and ``baseline`` are evaluations (``Evaluation.as_dict()``) made with one config."""
    figures: dict = {"tolerance": tolerance, "baseline_version": baseline_name or "none"}
    if baseline is None:
        return GateResult(True, "no promoted index to compare with: the first version sets the bar", figures)
    if baseline.get("status") != "ok":
        return GateResult(True, f"the promoted {baseline_name} could not be evaluated ({baseline.get('message')})", figures)
    if candidate.get("status") != "ok":
        return GateResult(False, f"the new index could not be evaluated ({candidate.get('message')}), "
                                 f"the promoted {baseline_name} could", figures)
    worse = []
    for key in REGRESSION_METRICS:
        new, old = candidate[key], baseline[key]
        figures |= {f"{key}": new, f"{key}_promoted": old, f"{key}_change": round(new - old, 4)}
        if new < old - tolerance:
            worse.append(f"{key} {new:.4f} < {old:.4f} ({baseline_name}) - {tolerance:g}")
    if worse:
        return GateResult(False, "regression: " + "; ".join(worse), figures)
    changes = ", ".join(f"{key} {candidate[key]:.4f} vs {baseline[key]:.4f}" for key in REGRESSION_METRICS)
    return GateResult(True, f"no regression against {baseline_name}: {changes} (tolerance {tolerance:g})", figures)


def baseline_evaluation(baseline: IndexVersion, config: Mapping) -> dict:
    """``baseline``'s evaluation made with ``config`` (an evaluation's ``config``): its stored one
    when it was made so, else a fresh one. Both sides of the regression gate then hold out the same
    share of faces with the same seed, so a face held out of one is held out of the other."""
    stored = baseline.metrics()
    if stored is not None and stored.get("config") == dict(config):
        return stored
    index = baseline.load()
    return evaluate(
        index.vectors(),
        index.entries.column("person_id").to_pylist(),
        EvaluationConfig(**config),
        face_ids=index.entries.column("face_id").to_pylist(),
    ).as_dict()
