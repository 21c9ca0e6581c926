"""The quality gates and the auto-retrain rule on data made to break each of them, one way at a time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from facepipeline.auto_retrain import Backlog, decide, faces_needed
from facepipeline.embedding_store import embeddings_schema, usable
from facepipeline.errors import FacePipelineError
from facepipeline.faces import VerifiedFace
from facepipeline.gallery.config import GalleryConfig
from facepipeline.index import FaceIndex, IndexParams, IndexStore
from facepipeline.quality import (
    SELF_MATCH_FIRST_EF,
    SELF_MATCH_SAMPLE,
    _finds_itself,
    dataset_gate,
    embeddings_gate,
    index_gate,
    regression_gate,
)


def faces(counts: dict[str, int]) -> list[VerifiedFace]:
    return [VerifiedFace(f"{p}-{i}", p, p, f"file:///{p}/{i}.jpg", None) for p, n in counts.items() for i in range(n)]


def embeddings(n: int, dim: int = 8, *, seed: int = 0) -> pa.Table:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    schema = embeddings_schema(dim)
    rows = [
        {"face_id": f"f{i}", "person_id": f"p{i % 3}", "photo_ref": f"file:///{i}.jpg", "status": "ok",
         "embedding": vectors[i].tolist(), "model_pack": "pack", "model_fingerprint": "fp", "model_sha256": "m",
         "detector_sha256": "d", "embed_key": str(i)}
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def with_vector(table: pa.Table, row: int, vector) -> pa.Table:
    rows = table.to_pylist()
    rows[row]["embedding"] = list(vector)
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_the_dataset_gate_wants_two_people_each_with_the_minimum_and_no_face_twice():
    assert dataset_gate(faces({"a": 3, "b": 3}), 3).passed
    assert dataset_gate(faces({"a": 5}), 3).summary == "need at least 2 people with verified faces, found 1"
    short = dataset_gate(faces({"a": 3, "b": 2}), 3)
    assert not short.passed and "1 people with fewer than 3 faces (e.g. b)" in short.summary
    twice = faces({"a": 3, "b": 3})
    assert "face ids appear more than once" in dataset_gate([*twice, twice[0]], 3).summary


def test_the_embeddings_gate_finds_each_kind_of_bad_vector():
    good = embeddings(20)
    assert embeddings_gate(good, 8).passed
    assert "vectors have 8 dimensions, the recognizer gives 512" in embeddings_gate(good, 512).summary
    nan = np.zeros(8, np.float32)
    nan[0] = np.nan
    assert "1 vectors with NaN or infinite values" in embeddings_gate(with_vector(good, 3, nan), 8).summary
    long = np.full(8, 1.0, np.float32)
    result = embeddings_gate(with_vector(good, 4, long), 8)
    assert "1 vectors whose length is not 1" in result.summary and result.figures["norm_max"] == pytest.approx(np.sqrt(8), 1e-5)
    duplicated = pa.concat_tables([good, good.slice(0, 1)])
    assert "1 face ids more than once (e.g. f0)" in embeddings_gate(duplicated, 8).summary
    failed = pa.Table.from_pylist([{**r, "status": "failed", "embedding": None} for r in good.to_pylist()], schema=good.schema)
    assert embeddings_gate(failed, 8).summary == "no usable embedding"


def test_the_index_gate_catches_missing_mislabelled_and_altered_vectors():
    table = embeddings(30)
    rows = usable(table)
    vectors = np.asarray(rows.column("embedding").to_pylist(), np.float32)
    assert index_gate(FaceIndex.build(vectors, rows), table).passed
    assert "holds 29 vectors" in index_gate(FaceIndex.build(vectors[:29], rows.slice(0, 29)), table).summary
    order = np.r_[1, 0, 2:30]
    # Another order is fine when each face keeps its vector (an extended index keeps the old faces first) ...
    assert index_gate(FaceIndex.build(vectors[order], rows.take(order)), table).passed
    # ... but not labels that moved without their vectors, another face, or another person.
    assert "indexed vectors differ" in index_gate(FaceIndex.build(vectors, rows.take(order)), table).summary
    stranger = rows.set_column(0, "face_id", pa.array(["someone-else"] + rows.column("face_id").to_pylist()[1:]))
    assert "face_ids differ" in index_gate(FaceIndex.build(vectors, stranger), table).summary
    relabelled = rows.set_column(1, "person_id", pa.array(["p9"] + rows.column("person_id").to_pylist()[1:]))
    assert "person_ids differ" in index_gate(FaceIndex.build(vectors, relabelled), table).summary
    altered = vectors.copy()
    altered[5] = -altered[5]
    assert "indexed vectors differ" in index_gate(FaceIndex.build(altered, rows), table).summary


def test_the_index_gate_lets_the_index_s_own_search_decide_about_the_faces_a_small_beam_misses():
    table = embeddings(2000, 64)
    rows = usable(table)
    vectors = np.asarray(rows.column("embedding").to_pylist(), np.float32)
    picked = np.random.default_rng(0).choice(len(vectors), size=SELF_MATCH_SAMPLE, replace=False)  # the gate's sample
    # Graphs built on one thread are the same every time (hnswlib's parallel inserts are not).
    sparse = FaceIndex.build(vectors, rows, IndexParams(M=6, ef_construction=20), threads=1)  # a small beam misses faces here
    assert not _finds_itself(sparse, vectors[picked], picked, ef=SELF_MATCH_FIRST_EF).all()
    gate = index_gate(sparse, table)
    assert gate.passed and gate.figures["self_match_rate"] == 1.0  # the index's own beam (128) finds them all
    # An index searched with a beam narrower than the first one: its own search is what the gate judges.
    narrow = FaceIndex.build(vectors, rows, IndexParams(M=16, ef_construction=100, ef_search=2), threads=1)
    assert _finds_itself(narrow, vectors[picked], picked, ef=SELF_MATCH_FIRST_EF).all()
    failed = index_gate(narrow, table)
    assert not failed.passed and "sampled faces do not find themselves" in failed.summary


def test_the_regression_gate_compares_like_with_like_within_the_tolerance():
    promoted = {"status": "ok", "rank1_accuracy": 0.95, "rank1_accuracy_macro": 0.94}
    assert regression_gate(promoted, None, baseline_name=None, tolerance=0.02).passed
    assert regression_gate({**promoted, "rank1_accuracy": 0.931}, promoted, baseline_name="v3", tolerance=0.02).passed
    worse = regression_gate({**promoted, "rank1_accuracy_macro": 0.90}, promoted, baseline_name="v3", tolerance=0.02)
    assert not worse.passed and worse.summary == "regression: rank1_accuracy_macro 0.9000 < 0.9400 (v3) - 0.02"
    assert worse.figures["rank1_accuracy_macro_change"] == -0.04
    unevaluated = regression_gate({"status": "too_few_samples", "message": "too few"}, promoted, baseline_name="v3", tolerance=0.5)
    assert not unevaluated.passed
    assert regression_gate(promoted, {"status": "too_few_samples", "message": "m"}, baseline_name="v3", tolerance=0).passed


@pytest.mark.parametrize(
    ("threshold", "share", "trained", "needed"),
    [(25, 0.1, 4803, 25), (25, 0.1, 80, 8), (25, 0.1, 0, 1), (25, 0.0, 80, 25), (5, 1.0, 1000, 5), (25, 0.1, 9, 1)],
)
def test_a_retrain_is_due_at_the_threshold_or_the_share_of_the_trained_faces_whichever_comes_first(threshold, share, trained, needed):
    config = GalleryConfig(auto_retrain_threshold=threshold, auto_retrain_percentage=share)
    assert faces_needed(config, trained) == needed
    assert not decide(Backlog(tuple(f"f{i}" for i in range(needed - 1)), trained, None), config).due
    assert decide(Backlog(tuple(f"f{i}" for i in range(needed)), trained, None), config).due


def test_the_backlog_fingerprint_names_the_set_of_faces():
    assert Backlog(("a", "b"), 0, None).fingerprint == Backlog(("a", "b"), 10, "v2").fingerprint
    assert Backlog(("a", "b"), 0, None).fingerprint != Backlog(("a", "c"), 0, None).fingerprint


def test_rollback_walks_the_promotions_as_a_stack(tmp_path):
    store = IndexStore(tmp_path / "index")
    table = embeddings(12)
    rows = usable(table)
    vectors = np.asarray(rows.column("embedding").to_pylist(), np.float32)
    for _ in range(4):
        store.publish(FaceIndex.build(vectors, rows), {})
    with pytest.raises(FacePipelineError, match="nothing to roll back to"):
        store.rollback_target()
    for version in (1, 2, 3, 4):
        store.promote(version, reason="test", by="t")
    assert store.rollback_target().name == "v3"
    store.promote(3, reason="back", by="t", action="rollback")
    assert store.rollback_target().name == "v2"  # not v4: two rollbacks go two promotions back
    store.promote(2, reason="back", by="t", action="rollback")
    store.promote(4, reason="forward again", by="t")
    assert store.rollback_target().name == "v2"


def test_the_usable_matrix_is_the_usable_rows_vectors_in_order_across_chunks_and_failures():
    from facepipeline.embedding_store import FAILED, embedding_matrix, usable_matrix

    table = embeddings(50, seed=3)
    status = table.column("status").to_pylist()
    for row in (0, 7, 8, 49):
        status[row] = FAILED
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status))
    chunked = pa.concat_tables([table.slice(0, 13), table.slice(13, 30), table.slice(43)])
    expected = embedding_matrix(usable(table))
    for batch_rows in (1, 5, 4096):
        got = usable_matrix(chunked, batch_rows=batch_rows)
        assert got.shape == (46, 8) and np.array_equal(got, expected)
    assert usable_matrix(table.slice(0, 0)).shape == (0, 8)
