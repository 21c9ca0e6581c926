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


def _published(store: IndexStore, vectors, entries, base=None):
    from facepipeline.index import build_index

    index, how = build_index(vectors, entries, base=base)
    return store.publish(index, {}), how


def _contents(version) -> dict:
    """Face -> (person, vector digest, stored vector): what a version holds, whatever its order."""
    index = version.load()
    vectors = index.vectors()
    rows = index.entries.to_pylist()
    return {r["face_id"]: (r["person_id"], r["vector_digest"], vectors[i]) for i, r in enumerate(rows)}


def test_an_index_extended_with_new_faces_holds_what_a_full_rebuild_holds(tmp_path):
    from facepipeline.index import build_index

    vectors, entries = clustered(40, 6)
    store = IndexStore(tmp_path / "index")
    first = list(range(0, 240, 2)) + list(range(1, 200, 2))  # 220 faces first, 20 new ones (of known people) later
    v1, how = _published(store, vectors[first], entries.take(first))
    assert (how.method, how.added) == ("built", 220)
    before = files_of(v1)
    v2, how = _published(store, vectors, entries, base=v1)
    assert (how.method, how.base_version, how.added) == ("extended", 1, 20) and how.line() == "extended v1 with 20 faces"
    rebuilt = store.publish(build_index(vectors, entries)[0], {})

    extended, full = _contents(v2), _contents(rebuilt)
    assert extended.keys() == full.keys() == set(entries.column("face_id").to_pylist())
    for face_id, (person, digest, stored) in extended.items():
        assert (person, digest) == full[face_id][:2] and np.allclose(stored, full[face_id][2], atol=1e-6)
    # The old faces keep their labels (rows), the new ones come after them; every face finds itself.
    assert v2.load().entries.column("face_id").to_pylist()[:220] == v1.load().entries.column("face_id").to_pylist()
    index = v2.load()
    labels, sims = index.search(index.vectors(), k=1)
    assert np.array_equal(labels[:, 0], np.arange(len(index))) and np.all(sims[:, 0] > 0.999)
    assert files_of(v1) == before  # the version extended is a copy: the earlier one is untouched


def files_of(version) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version.path.iterdir() if p.is_file()}


def test_a_relabelled_face_keeps_its_place_and_a_gone_or_changed_face_rebuilds_the_index(tmp_path):
    from facepipeline.index import IndexParams, build_index

    vectors, entries = clustered(10, 5)
    store = IndexStore(tmp_path / "index")
    v1, _ = _published(store, vectors, entries)

    people = entries.column("person_id").to_pylist()
    people[3] = "p9"  # the gallery moved face f3 to another person: the same vector, a new label
    relabelled = entries.set_column(1, "person_id", pa.array(people))
    index, how = build_index(vectors, relabelled, base=v1)
    assert how.method == "extended" and how.added == 0
    assert index.entries.column("person_id").to_pylist() == people

    _, how = build_index(vectors[1:], entries.slice(1), base=v1)
    assert how.method == "built" and "gone or has another vector (f0)" in how.reason
    changed = vectors.copy()
    changed[7] = -changed[7]  # f7 re-embedded (a new photo, another box, another model)
    index, how = build_index(changed, entries, base=v1)
    assert how.method == "built" and "(f7)" in how.reason
    assert np.allclose(index.vectors()[7], changed[7], atol=1e-6)
    _, how = build_index(vectors, entries, IndexParams(M=8), base=v1)
    assert how.method == "built" and "other index parameters" in how.reason
    index, how = build_index(vectors, entries, IndexParams(ef_search=300), base=v1)  # a search setting: same graph
    assert how.method == "extended" and index._index.ef == 300
    no_digests = store.publish(FaceIndex(v1.load()._index, v1.load().entries.drop_columns(["vector_digest"]), IndexParams()), {})
    _, how = build_index(vectors, entries, base=no_digests)
    assert how.method == "built" and "no vector digests" in how.reason


def test_vectors_read_from_the_index_state_are_exactly_what_hnswlib_returns_item_by_item(tmp_path):
    from facepipeline.index import build_index

    vectors, entries = clustered(20, 5)
    store = IndexStore(tmp_path / "index")
    v1, _ = _published(store, vectors[:60], entries.slice(0, 60))
    extended, how = build_index(vectors, entries, base=v1)
    assert how.method == "extended"
    for index in (v1.load(), extended):
        by_item = np.asarray(index._index.get_items(np.arange(len(index)), return_type="numpy"), dtype=np.float32)
        assert index._stored_vectors() is not None and np.array_equal(index.vectors(), by_item)
    extended._index.mark_deleted(3)  # a state this reading does not handle: hnswlib answers item by item
    assert extended._stored_vectors() is None


def test_ef_search_follows_the_index_size_unless_set_and_is_what_the_index_searches_with():
    from facepipeline.index import EF_SEARCH_BY_SIZE, IndexParams

    auto = IndexParams()
    sizes = [1, 20_000, 20_001, 200_000, 200_001, 5_000_000]
    efs = [auto.ef_for(n) for n in sizes]
    assert efs == sorted(efs) and efs[0] == EF_SEARCH_BY_SIZE[0][1] and efs[-1] == EF_SEARCH_BY_SIZE[-1][1]
    assert efs[1] < efs[2] and efs[3] < efs[4]  # each step up at its limit
    assert IndexParams(ef_search=50).ef_for(10**7) == 50
    vectors, entries = clustered(10, 5)
    index = FaceIndex.build(vectors, entries)
    assert index._index.ef == auto.ef_for(len(index))
    index.search(vectors[:2], k=3)
    assert index._index.ef == auto.ef_for(len(index))


def test_the_graph_grows_with_the_index_and_a_version_records_the_m_it_was_built_with(tmp_path):
    """M follows the number of faces (facepipeline.index.M_BY_SIZE); a built index and its manifest
    say which M it has, and an index that would cross the limit is built anew, not extended."""
    from facepipeline.index import M_BY_SIZE, IndexParams, build_index

    auto = IndexParams()
    assert [auto.m_for(n) for n in (1, 200_000, 200_001, 10**7)] == [16, 16, 32, 32] == [M_BY_SIZE[0][1]] * 2 + [M_BY_SIZE[-1][1]] * 2
    assert IndexParams(M=8).m_for(10**7) == 8
    vectors, entries = clustered(12, 5)
    store = IndexStore(tmp_path / "index")
    v1, _ = _published(store, vectors[:40], entries.slice(0, 40))
    assert v1.manifest["params"]["M"] == 16 and v1.load().params.M == 16  # settled, not "by size"
    assert v1.load()._index.M == 16
    extended, how = build_index(vectors, entries, base=v1)
    assert how.method == "extended" and extended.params.M == 16
    assert auto.same_graph(v1.manifest["params"], 200_000) and not auto.same_graph(v1.manifest["params"], 200_001)



def test_replace_file_replaces_whole_and_a_failed_rename_leaves_the_old_content_and_no_staging_file(tmp_path, monkeypatch):
    import os

    from facepipeline.versions import replace_file

    target = tmp_path / "metrics.json"
    replace_file(target, '{"v": 1}')
    replace_file(target, b'{"v": 2}')
    assert target.read_text() == '{"v": 2}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    def refused(src, dst):  # the rename fails (another file system, a full disk's metadata)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError, match="No space left"):
        replace_file(target, '{"v": 3}')
    assert target.read_text() == '{"v": 2}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
