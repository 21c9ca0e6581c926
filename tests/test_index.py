import json
import threading

import numpy as np
import pyarrow as pa
import pytest

from facepipeline.index import FaceIndex, IndexStore


def clustered(n_people: int, per_person: int, dim: int = 64, spread: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    vectors = np.repeat(centres, per_person, axis=0) + spread * rng.normal(size=(n_people * per_person, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    people = [f"p{i}" for i in range(n_people) for _ in range(per_person)]
    entries = pa.table({"face_id": [f"f{i}" for i in range(len(people))], "person_id": people, "person_name": people})
    return vectors.astype(np.float32), entries


def test_search_finds_the_exact_nearest_neighbours_with_cosine_similarity():
    vectors, entries = clustered(50, 10)
    index = FaceIndex.build(vectors, entries)
    queries = vectors[::7] + 0.01
    labels, sims = index.search(queries, k=5)
    exact = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ vectors.T
    assert np.array_equal(labels[:, 0], exact.argmax(axis=1))
    assert np.allclose(sims[:, 0], exact.max(axis=1), atol=1e-4)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # best first


def test_k_larger_than_the_index_is_clamped():
    vectors, entries = clustered(2, 2)
    labels, sims = FaceIndex.build(vectors, entries).search(vectors[:1], k=50)
    assert labels.shape == (1, 4)


def test_versions_are_immutable_numbered_and_load_back(tmp_path):
    vectors, entries = clustered(5, 4)
    store = IndexStore(tmp_path / "index")
    assert store.latest() is None
    v1 = store.publish(FaceIndex.build(vectors, entries), {"dataset_fingerprint": "abc"})
    v2 = store.publish(FaceIndex.build(vectors[:10], entries.slice(0, 10)), {"dataset_fingerprint": "def"})
    assert [v.name for v in store.versions()] == ["v1", "v2"]
    assert json.loads((v1.path / "manifest.json").read_text())["dataset_fingerprint"] == "abc"
    assert v1.manifest["count"] == 20 and v2.manifest["count"] == 10 and v1.manifest["dim"] == 64
    loaded = store.get(1).load()
    assert len(loaded) == 20 and loaded.entries.column("face_id").to_pylist() == entries.column("face_id").to_pylist()
    labels, _ = loaded.search(vectors[3:4], k=1)
    assert labels[0, 0] == 3
    assert np.allclose(loaded.vectors(), vectors, atol=1e-6)  # a version carries its own vectors
    files_before = {p.name: p.read_bytes() for p in v1.path.iterdir() if p.is_file()}
    v1.record_evaluation("run-a", {"rank1": 1.0})
    v1.record_evaluation("run-b", {"rank1": 0.5})
    assert json.loads((v1.path / "metrics.json").read_text()) == {"rank1": 0.5}  # the latest evaluation
    assert sorted(p.name for p in (v1.path / "evaluations").iterdir()) == ["run-a.json", "run-b.json"]
    with pytest.raises(FileExistsError):
        v1.record_evaluation("run-a", {"rank1": 0.0})  # an evaluation, once kept, is never replaced
    assert all(v1.path.joinpath(name).read_bytes() == data for name, data in files_before.items())


def test_concurrent_publishers_never_share_or_overwrite_a_version(tmp_path):
    vectors, entries = clustered(5, 4)
    store = IndexStore(tmp_path / "index")
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "v1").mkdir()  # a leftover without a manifest: its number is skipped
    published = []
    threads = [threading.Thread(target=lambda: published.append(store.publish(FaceIndex.build(vectors, entries), {}))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v.version for v in published) == [2, 3, 4, 5, 6, 7]
    assert not [p for p in (tmp_path / "index").iterdir() if p.name.startswith(".staging")]
