"""Clustering unknown faces: real photos, the real model (quality, the rules), and the store.

The faces are real LFW photos embedded with the real buffalo_sc pack: 40 people of
``distractors/`` (2-3 photos each, never in any index) and 4 people of ``faces/`` (6 photos each as
unknown faces, 4 more as the index's own vectors for suggestions). Tests named ``synthetic`` use
tiny made-up arrays, for input validation and pure bookkeeping only.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facepipeline.clustering import (
    ClusterStore,
    KnownPeople,
    UnknownFace,
    cluster_unknown_faces,
    pairwise_scores,
)
from facepipeline.errors import FacePipelineError
from facepipeline.images import decode_image

from tests.conftest import FACES, SHARED

DISTRACTORS = SHARED / "data" / "distractors"
FACES_PER_PHOTO = 3


def _embed(model, photos: list[Path]) -> np.ndarray:
    crops = []
    for photo in photos:
        image = decode_image(photo.read_bytes())
        crops.append(model.align(image, model.detect_central(image)))  # every LFW photo has its central face
    return model.embed(np.stack(crops))


@pytest.fixture(scope="module")
def real(face_model):
    """Unknown faces (one per photo), their identities, and the known people's held-out vectors."""
    distractor_people = sorted(p for p in DISTRACTORS.iterdir() if p.is_dir())[::17][:40]
    gallery_people = [p for p in sorted(FACES.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 10][::25][:4]
    unknown = [photo for person in distractor_people for photo in sorted(person.glob("*.jpg"))]
    unknown += [photo for person in gallery_people for photo in sorted(person.glob("*.jpg"))[:6]]
    held_out = [photo for person in gallery_people for photo in sorted(person.glob("*.jpg"))[6:10]]
    vectors = _embed(face_model, unknown + held_out)
    faces = [UnknownFace(p.stem, p.stem, "event-1", v) for p, v in zip(unknown, vectors[: len(unknown)], strict=True)]
    return {
        "faces": faces,
        "identity": {p.stem: p.parent.name for p in unknown},
        "gallery_people": [p.name for p in gallery_people],
        "known": KnownPeople.from_vectors(
            vectors[len(unknown) :], [p.parent.name for p in held_out], [p.parent.name.replace("_", " ") for p in held_out]
        ),
    }


def _labels(clustering, faces) -> list[str | None]:
    of = {face_id: c.cluster_id for c in clustering.clusters for face_id in c.face_ids}
    return [of.get(face.face_id) for face in faces]


def _group_into_photos(faces, identity, per_photo: int, seed: int = 0) -> list[UnknownFace]:
    """Several faces per photo, as on event photos: ``per_photo`` distinct people share a photo id."""
    order = faces[:]
    random.Random(seed).shuffle(order)
    photos: list[list[UnknownFace]] = []
    for face in order:
        photo = next((p for p in photos if len(p) < per_photo and all(identity[f.face_id] != identity[face.face_id] for f in p)), None)
        if photo is None:
            photos.append(photo := [])
        photo.append(face)
    return [replace(face, photo_id=f"photo-{n}") for n, photo in enumerate(photos) for face in photo]


def test_real_unknown_faces_cluster_by_identity(real):
    faces = _group_into_photos(real["faces"], real["identity"], FACES_PER_PHOTO)
    clustering = cluster_unknown_faces(faces)
    precision, recall, f1 = pairwise_scores([real["identity"][f.face_id] for f in faces], _labels(clustering, faces))
    assert f1 >= 0.9, (precision, recall, f1)
    assert precision >= 0.95
    sizes = [c.size for c in clustering.clusters]
    assert sizes == sorted(sizes, reverse=True)
    assert all(c.cohesion > 0.5 for c in clustering.clusters)


def test_two_faces_on_one_photo_are_never_in_one_cluster(real):
    identity = real["identity"]
    baseline = cluster_unknown_faces(real["faces"])  # every face on its own photo

    def clustered_alone(person: str) -> tuple[list[UnknownFace], object] | None:
        faces = [f for f in real["faces"] if identity[f.face_id] == person]
        cluster = next((c for c in baseline.clusters if c.face_ids == sorted(f.face_id for f in faces)), None)
        return (faces, cluster) if cluster else None

    six, six_cluster = next(found for p in real["gallery_people"] if (found := clustered_alone(p)))
    distractor_people = sorted(set(identity.values()) - set(real["gallery_people"]))
    pair, _ = next(found for p in distractor_people if (found := clustered_alone(p)) and len(found[0]) == 2)

    # Two of the six on one photo, and the pair on one photo: a person is on a photo only once.
    same_photo = {six[0].face_id: "shared-1", six[1].face_id: "shared-1", pair[0].face_id: "shared-2", pair[1].face_id: "shared-2"}
    faces = [replace(f, photo_id=same_photo.get(f.face_id, f.photo_id)) for f in real["faces"]]
    clustering = cluster_unknown_faces(faces)
    photo_of = {f.face_id: f.photo_id for f in faces}
    for cluster in clustering.clusters:
        assert len({photo_of[f] for f in cluster.face_ids}) == cluster.size, cluster
    # Of the two on one photo, the one closer to the cluster's centroid stays; the other is noise.
    closer, farther = sorted(six[:2], key=lambda f: -float(f.descriptor @ six_cluster.centroid))
    assert sorted(f.face_id for f in [closer, *six[2:]]) in [c.face_ids for c in clustering.clusters]
    assert farther.face_id in clustering.noise
    # The pair keeps one face: under min_cluster_size, so both are noise.
    assert {f.face_id for f in pair} <= set(clustering.noise)


def test_clustering_is_deterministic_whatever_the_order(real):
    # Some photos uploaded twice: identical descriptors, so ties in the distances.
    faces = real["faces"] + [replace(f, face_id=f.face_id + "-again", photo_id=f.photo_id + "-again") for f in real["faces"][::9]]
    first = cluster_unknown_faces(faces)
    shuffled = faces[:]
    random.Random(7).shuffle(shuffled)
    second = cluster_unknown_faces(shuffled)
    assert [(c.cluster_id, c.face_ids) for c in first.clusters] == [(c.cluster_id, c.face_ids) for c in second.clusters]
    assert first.noise == second.noise
    for cluster in first.clusters:
        assert cluster.cluster_id == "c" + hashlib.sha256("\n".join(sorted(cluster.face_ids)).encode()).hexdigest()[:10]


def test_clusters_follow_cosine_not_vector_length(real):
    """Descriptors rescaled by any positive factor are the same directions: the same clusters."""
    rng = np.random.default_rng(3)
    scaled = [replace(f, descriptor=f.descriptor * rng.uniform(0.2, 5.0)) for f in real["faces"]]
    plain, rescaled = cluster_unknown_faces(real["faces"]), cluster_unknown_faces(scaled)
    assert [c.face_ids for c in plain.clusters] == [c.face_ids for c in rescaled.clusters]
    cluster = plain.clusters[0]
    members = np.stack([f.descriptor for f in real["faces"] if f.face_id in cluster.face_ids]).astype(np.float64)
    assert cluster.cohesion == pytest.approx(float(np.mean(members @ cluster.centroid)), abs=1e-5)


def test_a_cluster_of_a_known_person_gets_that_person_suggested(real):
    clustering = cluster_unknown_faces(real["faces"], known=real["known"])
    identity = real["identity"]
    for cluster in clustering.clusters:
        people = {identity[f] for f in cluster.face_ids}
        person = people.pop()
        if person in real["gallery_people"]:
            assert cluster.suggested_person_id == person
            assert cluster.suggested_person_name == person.replace("_", " ")
            similarity = float(real["known"].centroids[real["known"].person_ids.index(person)] @ cluster.centroid)
            assert cluster.suggestion_similarity == pytest.approx(similarity, abs=1e-5) and similarity >= 0.45
        else:
            assert cluster.suggested_person_id is None and cluster.suggestion_similarity is None
    assert sum(c.suggested_person_id is not None for c in clustering.clusters) == len(real["gallery_people"])
    nothing = cluster_unknown_faces(real["faces"], known=real["known"], suggest_threshold=1.01)
    assert all(c.suggested_person_id is None for c in nothing.clusters)


def test_one_unknown_person_alone_is_one_cluster(real):
    person = real["gallery_people"][1]
    faces = [f for f in real["faces"] if real["identity"][f.face_id] == person]
    clustering = cluster_unknown_faces(faces)
    assert [c.face_ids for c in clustering.clusters] == [sorted(f.face_id for f in faces)]


def test_fewer_faces_than_min_cluster_size_are_all_noise(real):
    person = real["gallery_people"][2]
    two = [f for f in real["faces"] if real["identity"][f.face_id] == person][:2]
    assert cluster_unknown_faces(two, min_cluster_size=3).noise == sorted(f.face_id for f in two)
    assert cluster_unknown_faces(two[:1]).noise == [two[0].face_id]
    empty = cluster_unknown_faces([])
    assert (empty.clusters, empty.noise, empty.excluded) == ([], [], [])
    assert empty.to_table([]).num_rows == 0 and empty.summary()["clusters"] == 0


def test_a_rejected_cluster_does_not_come_back(real, tmp_path):
    store = ClusterStore(tmp_path / "clusters")
    faces = real["faces"]
    first = cluster_unknown_faces(faces, rejected_face_ids=store.rejected_face_ids())
    v1 = store.publish(first, faces, {"run_id": "run-1"})
    target = v1.clusters()[0]
    assert store.reject(target["cluster_id"], by="alice", reason="not a person we know") == target["face_ids"]
    assert store.rejected_face_ids() == set(target["face_ids"])
    entry = json.loads((store.root / "rejected.jsonl").read_text().splitlines()[0])
    assert entry | {"at": None} == {
        "cluster_id": target["cluster_id"], "face_ids": target["face_ids"], "by": "alice", "at": None,
        "reason": "not a person we know", "version": 1,
    }

    second = cluster_unknown_faces(faces, rejected_face_ids=store.rejected_face_ids())
    assert second.excluded == sorted(target["face_ids"])
    assert not any(set(target["face_ids"]) & set(c.face_ids) for c in second.clusters)
    assert not set(target["face_ids"]) & set(second.noise)
    v2 = store.publish(second, faces, {"run_id": "run-2"})
    statuses = {row["face_id"]: row["status"] for row in v2.table().to_pylist()}
    assert {statuses[f] for f in target["face_ids"]} == {"rejected"}
    assert target["cluster_id"] not in {c["cluster_id"] for c in v2.clusters()}
    assert v2.manifest["summary"]["excluded"] == len(target["face_ids"])


def test_store_versions_are_numbered_and_never_overwritten(real, tmp_path):
    store = ClusterStore(tmp_path / "clusters")
    faces = real["faces"]
    clustering = cluster_unknown_faces(faces, known=real["known"])
    v1 = store.publish(clustering, faces, {"run_id": "run-1"})
    v1_bytes = (v1.path / "clusters.parquet").read_bytes(), (v1.path / "manifest.json").read_bytes()
    (store.root / "v2").mkdir()  # a concurrent writer has taken v2 and not finished it
    v3 = store.publish(clustering, faces, {"run_id": "run-2"})
    assert (v1.name, v3.name) == ("v1", "v3")
    assert [v.version for v in store.versions()] == [1, 3] and store.latest().version == 3
    assert ((v1.path / "clusters.parquet").read_bytes(), (v1.path / "manifest.json").read_bytes()) == v1_bytes
    assert not list(store.root.glob(".staging-*"))
    manifest = store.get(1).manifest
    assert manifest["run_id"] == "run-1" and manifest["version"] == 1 and manifest["created_at"]
    assert manifest["summary"] == json.loads(json.dumps(clustering.summary())) and manifest["params"] == clustering.params

    table = v3.table()
    assert table.column_names == [
        "face_id", "photo_id", "event_id", "cluster_id", "status",
        "suggested_person_id", "suggested_person_name", "suggestion_similarity",
    ]
    assert table.column("face_id").to_pylist() == [f.face_id for f in faces]
    published = v3.clusters()
    assert [(c["cluster_id"], c["size"], sorted(c["face_ids"]), c["suggested_person_id"]) for c in published] == [
        (c.cluster_id, c.size, c.face_ids, c.suggested_person_id) for c in clustering.clusters
    ]
    with pytest.raises(FacePipelineError, match="v9 not found"):
        store.get(9)


def test_rejecting_an_unknown_cluster_id_is_a_clear_error(real, tmp_path):
    store = ClusterStore(tmp_path / "clusters")
    with pytest.raises(FacePipelineError, match="no clustering has been published"):
        store.reject("c0123456789", by="alice")
    store.publish(cluster_unknown_faces(real["faces"]), real["faces"], {})
    with pytest.raises(FacePipelineError, match=r"'c0123456789' is not in the latest clustering v1.*latest\(\)\.clusters\(\)"):
        store.reject("c0123456789", by="alice")
    assert store.rejected_face_ids() == set()


def test_bad_input_is_refused_synthetic(monkeypatch):
    good = np.zeros(512, dtype=np.float32)
    good[0] = 1.0
    nan = good.copy()
    nan[3] = np.nan
    cases = {
        "shape": [UnknownFace("a", "p", None, good), UnknownFace("b", "p", None, good[:128])],
        r"shape \(1, 512\)": [UnknownFace("a", "p", None, good.reshape(1, 512))],
        "not finite": [UnknownFace("a", "p", None, nan)],
        "all zeros": [UnknownFace("a", "p", None, np.zeros(512, dtype=np.float32))],
        "given twice": [UnknownFace("a", "p", None, good), UnknownFace("a", "q", None, good)],
    }
    for message, faces in cases.items():
        with pytest.raises(FacePipelineError, match=message):
            cluster_unknown_faces(faces)
    with pytest.raises(FacePipelineError, match="min_cluster_size must be at least 2"):
        cluster_unknown_faces([], min_cluster_size=1)
    known = KnownPeople.from_vectors(np.ones((2, 128)), ["p1", "p1"], ["P", None])
    assert known.person_ids == ["p1"] and known.names == ["P"]
    with pytest.raises(FacePipelineError, match="128-d centroids"):
        cluster_unknown_faces([UnknownFace("a", "p", None, good)], known=known)
    with pytest.raises(FacePipelineError, match="do not line up"):
        KnownPeople.from_vectors(np.ones((2, 512)), ["p1"], ["P"])
    monkeypatch.setattr("facepipeline.clustering.MAX_FACES", 2)
    with pytest.raises(FacePipelineError, match="cluster them per event"):
        cluster_unknown_faces([UnknownFace(str(i), str(i), None, good) for i in range(3)])


def test_pairwise_scores_synthetic():
    assert pairwise_scores(["a", "a", "b", "b"], ["x", "x", "y", "y"]) == (1.0, 1.0, 1.0)
    assert pairwise_scores(["a", "a", "b"], [None, None, None]) == (1.0, 0.0, 0.0)  # noise is never a pair
    precision, recall, f1 = pairwise_scores(["a", "a", "b", "b"], ["x", "x", "x", "x"])
    assert (precision, recall) == (2 / 6, 1.0) and f1 == pytest.approx(0.5)
    assert pairwise_scores(["a", "b"], ["x", None]) == (1.0, 1.0, 1.0)
    with pytest.raises(FacePipelineError):
        pairwise_scores(["a"], [])
