"""Cluster the faces nobody has named, so a person can name a whole cluster at once.

Method
------
Every unknown face comes with its 512-d L2-normalised ArcFace descriptor. The faces are sorted by
face id (so the result cannot depend on the caller's order, even where distances tie, as they do
for a photo uploaded twice) and clustered with HDBSCAN (the ``hdbscan`` package) under the
euclidean metric. On unit vectors ``|a - b| = sqrt(2 - 2 cos)``:
euclidean distance is monotone in cosine similarity, so neighbours, the minimum spanning tree and
the cluster hierarchy are those of cosine, and unlike ``1 - cos`` it is a true metric, which is
what HDBSCAN's mutual reachability and its stability (built on ``1 / distance``) assume. Measured:
``metric="cosine"`` on the same faces gives a worse pairwise F1 (0.956 vs 0.976 on the mixed set
below, no epsilon), because the stability sums depend on the distance itself, not only its order.

Then, in this order:

1. HDBSCAN with ``min_samples=1`` and ``cluster_selection_epsilon=1.0`` (= cosine 0.5): a cluster
   whose parts join at cosine >= 0.5 is not split into them (one person photographed in two
   settings stays one cluster). HDBSCAN never returns the whole input as one cluster, so one
   unknown person alone would stay noise; hence:
2. when the whole input is joined below that epsilon (the last merge of the single-linkage tree,
   in mutual reachability distance, is under 1.0), all the faces are one cluster: epsilon's rule,
   applied to the root that HDBSCAN never selects (measured on 5 photos of one person: no cluster,
   or two, without this step).
3. A person is on a photo once: a cluster with two members on one photo keeps, per photo, the
   member closest to its centroid and sends the others to noise (they come back in a later
   clustering, or are named by hand); a cluster left with fewer than ``min_cluster_size`` members
   becomes noise. This never adds a wrong pair, and it removes the pairs that are surely wrong.
4. Each cluster gets a stable id (``c`` + 10 hex of sha256 of its sorted face ids), its centroid,
   its cohesion (mean cosine of members to the normalised centroid) and, when the centroid has
   cosine >= ``suggest_threshold`` with a known person's centroid, that best person as suggestion.

Faces rejected before (the ledger of :class:`ClusterStore`) are left out entirely (``excluded``):
a rejected cluster does not come back. Fewer faces than ``min_cluster_size``: all noise.

Choice of library and parameters (``bench/cluster.py``; buffalo_sc embeddings of real LFW photos;
pairwise precision / recall / F1 against the true identities, noise = a singleton; time as a
ratio to the baseline in the same run, 1.05 s, on a busy 2-core machine):

=========================================  =====  =====  =====  ========  ======
mixed set: 1,120 people, 4,258 faces        P      R      F1     clusters  time
=========================================  =====  =====  =====  ========  ======
baseline: sklearn HDBSCAN, dense, no eps    0.997  0.956  0.976  1145      1.00
sklearn HDBSCAN, epsilon 1.0                TypeError (scikit-learn #33219)
hdbscan, dense ("generic"), no epsilon      0.997  0.956  0.976  1145      0.54
hdbscan, epsilon 1.0 (chosen)               0.997  0.992  0.994  1120      0.53
hdbscan, epsilon 1.0, min_samples=2         0.884  0.948  0.915  642       0.54
hdbscan, epsilon 1.0, leaf selection        0.997  0.989  0.993  1122      0.67
hdbscan, metric="cosine", no epsilon        0.996  0.920  0.956  1169      0.93
hdbscan, epsilon 1.0, boruvka kd-tree       0.997  0.992  0.994  1120      50.8
cluster_unknown_faces (4 faces per photo)   0.997  0.992  0.994  1120      0.86
=========================================  =====  =====  =====  ========  ======

The mixed set is the 712 people of ``distractors/`` (2-3 photos each) and the 408 of ``faces/``
(at most 10 photos each), grouped 4 distinct people per synthetic photo. On the distractors alone
(1,616 faces) every min_samples=1 row gives F1 0.994; on dlib's collage of 4 bald actors (24
faces) every row finds the 4 people, F1 1.000. Without epsilon both libraries give the same
labels (sklearn's ``min_samples`` counts the point itself: its 2 is hdbscan's 1), at the same
speed within the machine's noise when both use the dense algorithm; the tree algorithms are
25-50x slower in 512-d. Epsilon decides: it lifts recall from 0.956 to 0.992 at the same
precision, and ``hdbscan`` does it while scikit-learn 1.9.1 raises ``TypeError`` on this data
with any epsilon > 0 under NumPy 2.x (issue #33219; a fix is not released; the crash depends on
the data: the distractors alone pass). Epsilon 1.0 was checked on two disjoint halves of the
people: F1 0.994 / 0.997 (0.9: 0.985 / 0.987; 1.1: 0.986 / 0.999, precision falls to 0.972;
1.2: 0.03). ``hdbscan`` 0.8.44 installs from a cp311 manylinux wheel (no compiler); it needs
scikit-learn anyway, so it costs one package more than scikit-learn alone (25 MB next to 30 MB).
It also offers ``approximate_predict``, to place new faces into a published clustering without
re-clustering, should that be wanted.

Scale: the dense algorithm holds an N x N float64 matrix (peak memory about twice that: 1.7 GB
and 7 s for 10,000 faces); up to :data:`MAX_FACES` unknown faces are clustered at once, more is
refused with a message (cluster per event or date range).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facepipeline.errors import FacePipelineError
from facepipeline.versions import Version, VersionedStore, append_json_line, json_lines

MIN_SAMPLES = 1  # hdbscan counts neighbours without the point itself; 2+ breaks up people seen twice
CLUSTER_SELECTION_EPSILON = 1.0  # euclidean on unit vectors, = cosine 0.5 (measured, see above)
MAX_FACES = 20_000  # the dense distance matrix: ~6 GB peak at this size

TABLE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("photo_id", pa.string()),
        ("event_id", pa.string()),
        ("cluster_id", pa.string()),
        ("status", pa.string()),
        ("suggested_person_id", pa.string()),
        ("suggested_person_name", pa.string()),
        ("suggestion_similarity", pa.float64()),
    ]
)
CLUSTERED, NOISE, REJECTED = "clustered", "noise", "rejected"


@dataclass(frozen=True)
class UnknownFace:
    face_id: str
    photo_id: str
    event_id: str | None
    descriptor: np.ndarray  # (512,) float32, L2-normalised


@dataclass(frozen=True)
class KnownPeople:
    """Centroids of the people the promoted index knows, for suggesting a name for a cluster."""

    person_ids: list[str]
    names: list[str | None]
    centroids: np.ndarray  # (P, 512) L2-normalised mean of each person's vectors

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, person_ids: Sequence[str], names: Sequence[str | None]) -> KnownPeople:
        """One centroid per person from the index's vectors (row ``i`` is ``person_ids[i]``)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(person_ids) or len(person_ids) != len(names):
            raise FacePipelineError(
                f"known people: {vectors.shape} vectors, {len(person_ids)} person ids and {len(names)} names do not line up"
            )
        order = sorted(set(person_ids))
        rows = {person: i for i, person in enumerate(order)}
        sums = np.zeros((len(order), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, [rows[p] for p in person_ids], vectors)
        first_name: dict[str, str | None] = {}
        for person, name in zip(person_ids, names, strict=True):
            if first_name.get(person) is None:
                first_name[person] = name
        return cls(order, [first_name[p] for p in order], _normalise(sums).astype(np.float32))


@dataclass
class Cluster:
    cluster_id: str  # "c" + first 10 hex of sha256 of the sorted member face ids
    face_ids: list[str]
    centroid: np.ndarray
    cohesion: float  # mean cosine similarity of members to the (normalised) centroid
    suggested_person_id: str | None = None
    suggested_person_name: str | None = None
    suggestion_similarity: float | None = None

    @property
    def size(self) -> int:
        return len(self.face_ids)


@dataclass
class Clustering:
    clusters: list[Cluster]  # largest first
    noise: list[str]  # face ids in no cluster
    excluded: list[str]  # face ids left out because they were rejected before
    params: dict = field(default_factory=dict)

    def to_table(self, faces: Sequence[UnknownFace]) -> pa.Table:
        """One row per face of ``faces`` (in that order): its cluster, status and suggestion."""
        row_of: dict[str, tuple] = {face_id: (None, NOISE, None, None, None) for face_id in self.noise}
        row_of.update({face_id: (None, REJECTED, None, None, None) for face_id in self.excluded})
        for cluster in self.clusters:
            suggestion = (cluster.suggested_person_id, cluster.suggested_person_name, cluster.suggestion_similarity)
            row_of.update({face_id: (cluster.cluster_id, CLUSTERED, *suggestion) for face_id in cluster.face_ids})
        unknown = [face.face_id for face in faces if face.face_id not in row_of]
        if unknown:
            raise FacePipelineError(f"{len(unknown)} faces are not part of this clustering, e.g. {unknown[0]!r}")
        rows = [(face.face_id, face.photo_id, face.event_id, *row_of[face.face_id]) for face in faces]
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in TABLE_SCHEMA]
        return pa.table([pa.array(list(values), type=f.type) for values, f in zip(columns, TABLE_SCHEMA, strict=True)], schema=TABLE_SCHEMA)

    def summary(self) -> dict:
        return {
            "clusters": len(self.clusters),
            "clustered_faces": sum(c.size for c in self.clusters),
            "noise": len(self.noise),
            "excluded": len(self.excluded),
            "largest": max((c.size for c in self.clusters), default=0),
            "params": self.params,
        }


def cluster_unknown_faces(
    faces: Sequence[UnknownFace],
    *,
    min_cluster_size: int = 2,
    rejected_face_ids: Collection[str] = frozenset(),
    known: KnownPeople | None = None,
    suggest_threshold: float = 0.45,
) -> Clustering:
    """Cluster ``faces`` (see the module docstring for the method and the measured defaults)."""
    if min_cluster_size < 2:
        raise FacePipelineError(f"min_cluster_size must be at least 2 (a cluster is two faces or more), got {min_cluster_size}")
    vectors = _validated_descriptors(faces)
    if known is not None and len(known.person_ids) and known.centroids.shape[1] != vectors.shape[1]:
        raise FacePipelineError(f"known people have {known.centroids.shape[1]}-d centroids but the faces {vectors.shape[1]}-d descriptors")
    params = {
        "algorithm": "hdbscan",
        "metric": "euclidean on L2-normalised descriptors (monotone in cosine)",
        "min_cluster_size": min_cluster_size,
        "min_samples": MIN_SAMPLES,
        "cluster_selection_method": "eom",
        "cluster_selection_epsilon": CLUSTER_SELECTION_EPSILON,
        "epsilon_as_cosine": round(1 - CLUSTER_SELECTION_EPSILON**2 / 2, 4),
        "same_photo_rule": "one face per photo: the member closest to the centroid stays",
        "suggest_threshold": suggest_threshold,
    }

    rejected = set(rejected_face_ids)
    order = sorted((i for i, face in enumerate(faces) if face.face_id not in rejected), key=lambda i: faces[i].face_id)
    excluded = sorted(face.face_id for face in faces if face.face_id in rejected)
    if len(order) > MAX_FACES:
        raise FacePipelineError(
            f"{len(order)} unknown faces are more than the {MAX_FACES} clustered at once "
            "(HDBSCAN holds an N x N distance matrix): cluster them per event or date range"
        )
    ids = [faces[i].face_id for i in order]
    photos = [faces[i].photo_id for i in order]
    X = vectors[order]

    labels = _hdbscan_labels(X, min_cluster_size)
    clusters: list[Cluster] = []
    noise = [ids[i] for i in np.flatnonzero(labels < 0)]
    for label in range(labels.max(initial=-1) + 1):
        found = np.flatnonzero(labels == label)
        members = _one_face_per_photo(found, X, photos)
        if len(members) < min_cluster_size:
            members = []  # too small once a person is on each photo once: all of it is noise
        noise.extend(ids[i] for i in found if i not in members)
        if members:
            clusters.append(_make_cluster([ids[i] for i in members], X[members], known, suggest_threshold))
    clusters.sort(key=lambda c: (-c.size, c.cluster_id))
    return Clustering(clusters, sorted(noise), excluded, params)


def _validated_descriptors(faces: Sequence[UnknownFace]) -> np.ndarray:
    """The descriptors as an (N, D) float64 matrix of unit rows; a clear error on any bad face."""
    seen: set[str] = set()
    dim = None
    for face in faces:
        if face.face_id in seen:
            raise FacePipelineError(f"face id {face.face_id!r} is given twice")
        seen.add(face.face_id)
        shape = np.shape(face.descriptor)
        if dim is None and len(shape) == 1:
            dim = shape[0]  # the first face sets the dimension (512 for the ArcFace packs)
        if len(shape) != 1 or shape[0] != dim or dim == 0:
            raise FacePipelineError(f"face {face.face_id!r}: descriptor has shape {shape}, expected ({dim or 512},)")
        if not np.all(np.isfinite(face.descriptor)) or not np.any(face.descriptor):
            raise FacePipelineError(f"face {face.face_id!r}: descriptor is not finite or is all zeros")
    if not faces:
        return np.empty((0, 512))
    # Re-normalised in float64: descriptors read back from float32 storage are unit only to ~1e-7.
    return _normalise(np.stack([np.asarray(face.descriptor, dtype=np.float64) for face in faces]))


def _hdbscan_labels(X: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (-1 = noise), with steps 1 and 2 of the module docstring."""
    if len(X) < max(min_cluster_size, 2):
        return np.full(len(X), -1)  # HDBSCAN raises on inputs this small
    import hdbscan  # here, not at the top: it loads scikit-learn (~4 s), which only clustering needs

    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=MIN_SAMPLES,
        metric="euclidean",
        algorithm="generic",  # dense: measured 10-40x faster than the tree algorithms in 512-d
        cluster_selection_method="eom",
        cluster_selection_epsilon=CLUSTER_SELECTION_EPSILON,
    )
    labels = clusterer.fit_predict(X)
    # The last merge of the single-linkage tree joins the whole input: below epsilon, it is one cluster.
    if clusterer.single_linkage_tree_.to_numpy()[-1, 2] < CLUSTER_SELECTION_EPSILON:
        labels[:] = 0  # step 2
    return labels


def _one_face_per_photo(members: np.ndarray, X: np.ndarray, photos: list[str]) -> list[int]:
    """Step 3: per photo, only the member closest to the cluster's centroid stays."""
    closeness = X[members] @ _normalise(X[members].mean(axis=0, keepdims=True))[0]
    best: dict[str, tuple[float, int]] = {}
    for index, score in zip(members.tolist(), closeness.tolist(), strict=True):
        photo = photos[index]
        if photo not in best or score > best[photo][0]:
            best[photo] = (score, index)
    return sorted(index for _, index in best.values())


def _make_cluster(face_ids: list[str], X: np.ndarray, known: KnownPeople | None, suggest_threshold: float) -> Cluster:
    centroid = _normalise(X.mean(axis=0, keepdims=True))[0]
    digest = hashlib.sha256("\n".join(sorted(face_ids)).encode()).hexdigest()
    cluster = Cluster("c" + digest[:10], sorted(face_ids), centroid.astype(np.float32), float(np.mean(X @ centroid)))
    if known is not None and len(known.person_ids):
        similarities = known.centroids.astype(np.float64) @ centroid
        best = int(np.argmax(similarities))
        if similarities[best] >= suggest_threshold:
            cluster.suggested_person_id = known.person_ids[best]
            cluster.suggested_person_name = known.names[best]
            cluster.suggestion_similarity = float(similarities[best])
    return cluster


def _normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def pairwise_scores(true_labels: Sequence, predicted: Sequence[str | None]) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 over all pairs of faces; a None prediction (noise) is its own singleton.

    Precision is 1 when no pair is predicted together, recall 1 when no two faces share a label.
    """
    if len(true_labels) != len(predicted):
        raise FacePipelineError(f"{len(true_labels)} true labels but {len(predicted)} predictions")
    # Noise gets a key no cluster id can take (a tuple), so two noise faces are never a pair.
    predicted_keys = [p if p is not None else ("noise", i) for i, p in enumerate(predicted)]

    def pairs(keys: Sequence) -> int:
        counts: dict = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        return sum(n * (n - 1) // 2 for n in counts.values())

    together = pairs(list(zip(true_labels, predicted_keys, strict=True)))
    predicted_pairs, true_pairs = pairs(predicted_keys), pairs(list(true_labels))
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class ClusteringVersion(Version):
    def table(self) -> pa.Table:
        return pq.read_table(self.path / "clusters.parquet")

    def clusters(self) -> list[dict]:
        """The clusters of this version, largest first (ties by id)."""
        found: dict[str, dict] = {}
        for row in self.table().to_pylist():
            if row["status"] != CLUSTERED:
                continue
            cluster = found.setdefault(
                row["cluster_id"],
                {
                    "cluster_id": row["cluster_id"],
                    "size": 0,
                    "face_ids": [],
                    "suggested_person_id": row["suggested_person_id"],
                    "suggested_person_name": row["suggested_person_name"],
                    "suggestion_similarity": row["suggestion_similarity"],
                },
            )
            cluster["face_ids"].append(row["face_id"])
            cluster["size"] += 1
        return sorted(found.values(), key=lambda c: (-c["size"], c["cluster_id"]))


class ClusterStore(VersionedStore[ClusteringVersion]):
    """Immutable clusterings under ``root/vN/`` and the ledger of rejected clusters.

        clusters/
          v1/ clusters.parquet  manifest.json
          v2/ ...
          rejected.jsonl

    Versions are published as :class:`~facepipeline.versions.VersionedStore` does for the index
    too. ``rejected.jsonl`` gets one JSON line per rejection, appended in a single write.
    """

    version_type = ClusteringVersion
    kind = "clustering version"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ledger = self.root / "rejected.jsonl"

    def publish(self, clustering: Clustering, faces: Sequence[UnknownFace], manifest: dict) -> ClusteringVersion:
        """Write ``clustering`` as the next version ``vN``; returns it. Safe against concurrent writers."""
        return self._publish(
            lambda folder: pq.write_table(clustering.to_table(faces), folder / "clusters.parquet"),
            {**manifest, "summary": clustering.summary(), "params": clustering.params},
        )

    def reject(self, cluster_id: str, *, by: str, reason: str | None = None) -> list[str]:
        """Reject a cluster of the latest version: its faces are left out of later clusterings."""
        latest = self.latest()
        if latest is None:
            raise FacePipelineError(f"no clustering has been published in {self.root}: nothing to reject")
        clusters = {c["cluster_id"]: c for c in latest.clusters()}
        if cluster_id not in clusters:
            raise FacePipelineError(
                f"cluster {cluster_id!r} is not in the latest clustering {latest.name} ({len(clusters)} clusters); "
                f"see its cluster ids with ClusterStore({str(self.root)!r}).latest().clusters() "
                f"or in {latest.path / 'clusters.parquet'}"
            )
        face_ids = clusters[cluster_id]["face_ids"]
        entry = {
            "cluster_id": cluster_id,
            "face_ids": face_ids,
            "by": by,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason,
            "version": latest.version,
        }
        append_json_line(self.ledger, entry)
        return face_ids

    def rejected_face_ids(self) -> set[str]:
        return {face_id for entry in json_lines(self.ledger) for face_id in entry["face_ids"]}
