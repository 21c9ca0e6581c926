"""The face index: hnswlib (cosine) over embeddings, stored as immutable versions.

    index/
      v1/ index.bin  entries.parquet  dataset.parquet  manifest.json  metrics.json  evaluations/  checks/
      v2/ ...
      promoted.json      the version recognition uses
      promotions.jsonl   every promotion and rollback: which version, who, when, why

A version is written to a temporary folder and renamed into place, so a reader never sees half a
version and an existing version is never overwritten. Publishing a version does not promote it:
recognition keeps using the promoted one until a promotion (by the pipeline, once the version's
evaluation is in, or by a person) switches it.

Every version is complete: it holds every face it was made from. :func:`build_index` makes the
next one either from scratch or, when an earlier version holds only faces that are still there
with the very same vectors (each entry keeps the digest of its vector's exact bytes), from a copy
of that version with the new faces added (hnswlib inserts them into the graph as it does during a
build). Relabelled faces keep their place and get their new labels. A face gone or re-embedded,
other index parameters, or no digests in the earlier version: built from scratch.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from facepipeline.errors import FacePipelineError
from facepipeline.versions import Version, VersionedStore, append_json_line, json_lines, replace_file

ENTRY_COLUMNS = ("face_id", "person_id", "person_name")
VECTOR_DIGEST = "vector_digest"
"""Entries column: the blake2b-128 of the face's vector as given (float32 bytes), in hex."""
DATASET_FILE = "dataset.parquet"
"""Every row the retrain read, and what became of it (facepipeline.snapshots)."""
# Where each indexed face is, for search results; kept when the embeddings table has them.
LOCATION_COLUMNS = ("photo_ref", "event_id", "bbox_x", "bbox_y", "bbox_width", "bbox_height")


M_BY_SIZE = ((200_000, 16), (None, 32))
"""The graph's ``M`` by the number of faces it is built for: (at most this many, M). From
``bench/index.py`` (clustered 512-d vectors calibrated on real buffalo_sc embeddings,
ef_construction 200): M 16 reaches recall@1 0.9955 at 100,000 faces (ef 384) and builds ~30 %
faster than M 32 there, but at 1,000,000 faces it stops at 0.9315 (ef 1,024); M 32 reaches 0.9950
(ef 2,048). An index that grows past the limit is built anew once, with the larger graph."""

EF_SEARCH_BY_SIZE = ((20_000, 128), (200_000, 384), (None, 2048))
"""``ef_search`` by the number of indexed faces: (at most this many, ef). From ``bench/index.py``:
the smallest measured ef whose recall@1 against exact search is at least 0.995 at the next measured
size up, on the graph :data:`M_BY_SIZE` builds there (10,000 faces, M 16: 0.9985 at ef 128;
100,000, M 16: 0.9955 at 384; 1,000,000, M 32: 0.9950 at 2,048, 44 ms a query against exact
search's 186 ms). Measured up to 1,000,000 faces. A fixed ef loses recall as the index grows: ef 64
gives 0.9905 at 10,000 faces, 0.9175 at 100,000 and 0.5965 at 1,000,000 (M 16)."""


def _by_size(table: tuple[tuple[int | None, int], ...], size: int) -> int:
    return next(value for limit, value in table if limit is None or size <= limit)


@dataclass(frozen=True)
class IndexParams:
    M: int | None = None
    """Links per node of the graph; None: by the number of faces it is built for (:data:`M_BY_SIZE`).
    A built index records the M it has."""
    ef_construction: int = 200
    ef_search: int | None = None
    """Candidates kept while searching; None: by the index's size (:data:`EF_SEARCH_BY_SIZE`)."""

    def m_for(self, size: int) -> int:
        """The ``M`` of a graph built for ``size`` faces."""
        return self.M if self.M is not None else _by_size(M_BY_SIZE, size)

    def ef_for(self, size: int) -> int:
        """The ``ef_search`` an index of ``size`` faces is searched with."""
        return self.ef_search if self.ef_search is not None else _by_size(EF_SEARCH_BY_SIZE, size)

    def for_size(self, size: int) -> IndexParams:
        """These params with ``M`` settled for a graph of ``size`` faces (``ef_search`` stays as set)."""
        return replace(self, M=self.m_for(size))

    def same_graph(self, other: dict, size: int) -> bool:
        """Whether an index built with ``other`` (a manifest's params) has the graph these params
        build for ``size`` faces: ``ef_search`` is a search setting, not part of the graph."""
        return (other.get("M"), other.get("ef_construction")) == (self.m_for(size), self.ef_construction)


class FaceIndex:
    """Nearest neighbours by cosine similarity; label ``i`` is row ``i`` of :attr:`entries`."""

    def __init__(self, index: hnswlib.Index, entries: pa.Table, params: IndexParams) -> None:
        self._index = index
        self.entries = entries
        self.params = params if params.M is not None else replace(params, M=index.M)  # the graph's own

    @classmethod
    def build(cls, vectors: np.ndarray, entries: pa.Table, params: IndexParams = IndexParams(), threads: int = -1) -> FaceIndex:
        if len(vectors) != entries.num_rows:
            raise ValueError(f"{len(vectors)} vectors but {entries.num_rows} entries")
        dim = vectors.shape[1] if vectors.ndim == 2 else 0
        params = params.for_size(len(vectors))
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(max_elements=max(1, len(vectors)), ef_construction=params.ef_construction, M=params.M, random_seed=100)
        if len(vectors):
            index.add_items(vectors, np.arange(len(vectors)), num_threads=threads)
        index.set_ef(params.ef_for(len(vectors)))
        return cls(index, _entries(entries, vectors), params)

    @classmethod
    def extend(cls, base: FaceIndex, vectors: np.ndarray, entries: pa.Table, threads: int = -1) -> FaceIndex:
        """``base`` (loaded, and then owned by the result) with ``vectors`` added after its own rows.

        ``entries`` are the rows of the whole result: ``base``'s faces first, in its label order
        (their labels may have changed), then the added ones. Only the added vectors are given.
        """
        added = len(vectors)
        if entries.num_rows != len(base) + added:
            raise ValueError(f"{len(base)} indexed + {added} added vectors but {entries.num_rows} entries")
        index = base._index
        if added:
            if index.get_max_elements() < entries.num_rows:
                index.resize_index(entries.num_rows)
            index.add_items(vectors, np.arange(len(base), entries.num_rows), num_threads=threads)
        index.set_ef(base.params.ef_for(entries.num_rows))
        digests = base.entries.column(VECTOR_DIGEST).to_pylist() + vector_digests(vectors).tolist()
        return cls(index, _entries(entries, None, digests), base.params)

    def __len__(self) -> int:
        return self._index.get_current_count()

    @property
    def dim(self) -> int:
        return self._index.dim

    def vectors(self) -> np.ndarray:
        """Every indexed vector, in label order (row ``i`` of :attr:`entries`)."""
        if len(self) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        stored = self._stored_vectors()
        if stored is not None:
            return stored
        return np.asarray(self._index.get_items(np.arange(len(self)), return_type="numpy"), dtype=np.float32)

    def _stored_vectors(self) -> np.ndarray | None:
        """The vectors read from hnswlib's own serialised state (what pickling an index gives): one
        copy of its level-0 memory instead of one call per item (~30x faster). None when the state
        is not laid out as expected (another hnswlib, deleted items): then ``get_items`` answers."""
        try:
            state = self._index.__getstate__()[0]
            count, width = state["cur_element_count"], state["size_data_per_element"]
            data_at, label_at, raw = state["offset_data"], state["label_offset"], state["data_level0"]
            if state["has_deletions"] or count != len(self) or raw.size != count * width or data_at + 4 * self.dim > label_at:
                return None
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        rows = np.asarray(raw).view(np.uint8).reshape(count, width)  # hnswlib's copy, not another
        labels = np.ascontiguousarray(rows[:, label_at : label_at + 8]).view(np.uint64).ravel()
        if not np.array_equal(np.sort(labels), np.arange(count, dtype=np.uint64)):
            return None
        vectors = np.empty((count, self.dim), dtype=np.float32)
        vectors[labels.astype(np.int64)] = np.ascontiguousarray(rows[:, data_at : data_at + 4 * self.dim]).view(np.float32)
        return vectors

    def search(self, queries: np.ndarray, k: int = 1, *, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and cosine similarities of the ``k`` nearest entries, best first; ``ef``: another
        beam than the index's own (``params.ef_for``), for a search that does not need its recall."""
        k = min(k, len(self))
        if k == 0:
            return np.empty((len(queries), 0), dtype=np.int64), np.empty((len(queries), 0), dtype=np.float32)
        self._index.set_ef(max(ef if ef is not None else self.params.ef_for(len(self)), k))
        labels, distances = self._index.knn_query(queries, k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def save(self, directory: Path) -> None:
        self._index.save_index(str(directory / "index.bin"))
        pq.write_table(self.entries, directory / "entries.parquet")

    @classmethod
    def load(cls, directory: Path, dim: int, params: IndexParams, *, room: int = 0) -> FaceIndex:
        """The index saved in ``directory``; ``room``: faces that can be added without a resize."""
        entries = pq.read_table(directory / "entries.parquet")
        index = hnswlib.Index(space="cosine", dim=dim)
        index.load_index(str(directory / "index.bin"), max_elements=max(1, entries.num_rows + room))
        index.set_ef(params.ef_for(entries.num_rows))
        return cls(index, entries, params)


def vector_digests(vectors: np.ndarray) -> np.ndarray:
    """A digest of each vector's exact float32 bytes (hex): equal digests, the same vector."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in vectors], dtype=object)


def _entries(entries: pa.Table, vectors: np.ndarray | None, digests: list[str] | None = None) -> pa.Table:
    """The entries an index keeps: labels, where each face is, and its vector's digest."""
    kept = list(ENTRY_COLUMNS) + [name for name in LOCATION_COLUMNS if name in entries.column_names]
    digests = digests if digests is not None else vector_digests(vectors).tolist()
    return entries.select(kept).append_column(VECTOR_DIGEST, pa.array(digests, pa.string()))


@dataclass(frozen=True)
class BuildReport:
    """How a version's index was made."""

    method: str
    """``built`` (from scratch) or ``extended`` (a copy of ``base_version`` with faces added)."""
    base_version: int | None
    added: int
    """Faces inserted into the graph by this build."""
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.method == "extended":
            return f"extended v{self.base_version} with {self.added} faces"
        return f"built from scratch with {self.added} faces ({self.reason})"


def build_index(
    vectors: np.ndarray, entries: pa.Table, params: IndexParams = IndexParams(), base: IndexVersion | None = None, threads: int = -1
) -> tuple[FaceIndex, BuildReport]:
    """The index of ``vectors`` / ``entries``: ``base`` extended with the faces it lacks when it can
    be (see the module's docstring), else built from scratch. Either way it holds every face given.

    An extended index keeps ``base``'s faces in its label order and appends the others in the
    order given, so its rows are the given ones in another order.
    """
    if len(vectors) != entries.num_rows:
        raise ValueError(f"{len(vectors)} vectors but {entries.num_rows} entries")
    why_not, plan = _extension_plan(vectors, entries, params, base)
    if plan is None:
        return FaceIndex.build(vectors, entries, params, threads), BuildReport("built", None, len(vectors), why_not)
    kept, added = plan
    index = FaceIndex.extend(
        FaceIndex.load(base.path, base.manifest["dim"], params, room=len(added)),  # M: the loaded graph's own
        vectors[added], entries.take(pa.array(np.concatenate([kept, added]), pa.int64())), threads,
    )
    return index, BuildReport("extended", base.version, len(added), f"v{base.version} holds {len(kept)} of these faces unchanged")


def _extension_plan(
    vectors: np.ndarray, entries: pa.Table, params: IndexParams, base: IndexVersion | None
) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
    """Why ``base`` cannot be extended, or (rows of ``entries`` in ``base``'s label order, rows to add)."""
    if base is None:
        return "no earlier version", None
    manifest = base.manifest
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    if not params.same_graph(manifest.get("params") or {}, len(vectors)) or manifest.get("dim") != dim:
        return f"v{base.version} has other index parameters", None
    indexed = pq.read_table(base.path / "entries.parquet")
    if VECTOR_DIGEST not in indexed.column_names or indexed.num_rows != manifest.get("count"):
        return f"v{base.version} keeps no vector digests", None
    face_ids = entries.column("face_id").to_pylist()
    row_of = {face_id: row for row, face_id in enumerate(face_ids)}
    if len(row_of) != len(face_ids):
        return "a face id more than once", None
    digests = vector_digests(vectors)
    kept = []
    for face_id, digest in zip(indexed.column("face_id").to_pylist(), indexed.column(VECTOR_DIGEST).to_pylist(), strict=True):
        row = row_of.get(face_id)
        if row is None or digests[row] != digest:
            return f"a face of v{base.version} is gone or has another vector ({face_id})", None
        kept.append(row)
    kept = np.array(kept, dtype=np.int64)
    added = np.setdiff1d(np.arange(len(face_ids)), kept)
    return "", (kept, added)


@dataclass(frozen=True)
class IndexVersion(Version):
    def load(self) -> FaceIndex:
        params = IndexParams(**self.manifest["params"])
        return FaceIndex.load(self.path, self.manifest["dim"], params)

    @property
    def model(self) -> dict | None:
        """The model pack whose vectors this version holds (``model_pack``, ``model_sha256``, ...)."""
        return self.manifest.get("model")

    def record_evaluation(self, evaluation_id: str, metrics: dict) -> Path:
        """Keep an evaluation of this version: ``evaluations/<id>.json``, and ``metrics.json`` = the latest.

        The index itself never changes; it can be evaluated again (another target FAR, say), and
        every evaluation is kept.
        """
        history = self.path / "evaluations"
        history.mkdir(exist_ok=True)
        text = json.dumps(metrics, indent=2, sort_keys=True)
        with open(history / f"{evaluation_id}.json", "x") as handle:
            handle.write(text)
        latest = self.path / "metrics.json"
        replace_file(latest, text)
        return latest


    def record_check(self, name: str, result: dict) -> None:
        """Keep the latest outcome of a quality check of this version: ``checks/<name>.json``."""
        folder = self.path / "checks"
        folder.mkdir(exist_ok=True)
        replace_file(folder / f"{name}.json", json.dumps(result, indent=2, sort_keys=True, default=str))

    def checks(self) -> dict[str, dict]:
        """The latest outcome of each quality check of this version, by check name."""
        folder = self.path / "checks"
        if not folder.is_dir():
            return {}
        return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}

    def metrics(self) -> dict | None:
        """The latest evaluation of this version (``metrics.json``), None before the first."""
        try:
            return json.loads((self.path / "metrics.json").read_text())
        except FileNotFoundError:
            return None


class IndexStore(VersionedStore[IndexVersion]):
    version_type = IndexVersion
    kind = "index version"

    def publish(self, index: FaceIndex, manifest: dict, dataset: pa.Table | None = None) -> IndexVersion:
        """Write ``index`` (and the ``dataset`` snapshot it was made from, as ``dataset.parquet``) as
        the next version ``vN``; returns it. Safe against concurrent writers."""

        def write(folder: Path) -> None:
            index.save(folder)
            if dataset is not None:
                pq.write_table(dataset, folder / DATASET_FILE, compression="zstd")

        return self._publish(write, {**manifest, "count": len(index), "dim": index.dim, "params": index.params.__dict__,
                                        "ef_search_used": index.params.ef_for(len(index))})

    # -- promotion -------------------------------------------------------------------------------

    @property
    def _promoted_file(self) -> Path:
        return self.root / "promoted.json"

    def promoted(self) -> IndexVersion | None:
        """The version recognition uses, or None when none was promoted yet."""
        try:
            record = json.loads(self._promoted_file.read_text())
        except FileNotFoundError:
            return None
        return self.get(record["version"])

    def require_promoted(self) -> IndexVersion:
        promoted = self.promoted()
        if promoted is None:
            raise FacePipelineError(
                f"no promoted index version in {self.root}: run a retrain first (facepipeline retrain)"
            )
        return promoted

    def promote(self, version: int, *, reason: str, by: str | None = None, action: str = "promote") -> dict:
        """Make ``version`` the one recognition uses; the switch is appended to ``promotions.jsonl``.

        ``action`` is ``promote`` or ``rollback`` (see :meth:`rollback_target`).
        """
        try:
            lock = self.promotion_lock().acquire()  # pruning does not remove the version between this look and the switch
        except Timeout:
            raise FacePipelineError(f"{self.root}: the promotion lock is held (a prune removing a version?); try again") from None
        with lock:
            target = self.get(version)  # raises when it does not exist (or was pruned)
            previous = self.promoted()
            record = {
                "action": action,
                "version": target.version,
                "previous": previous.version if previous else None,
                "by": by or who(),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "reason": reason,
            }
            replace_file(self._promoted_file, json.dumps(record, indent=2, sort_keys=True))
            append_json_line(self.root / "promotions.jsonl", record)
        return record

    def promotion_lock(self) -> FileLock:
        """Held while the promoted version changes, and while pruning decides to remove a version."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / ".promotion.lock", timeout=60)

    def promotions(self) -> list[dict]:
        """Every promotion, oldest first."""
        return json_lines(self.root / "promotions.jsonl")

    def promotion_stack(self) -> list[int]:
        """The promoted versions as a stack, the current one last: promotions push, rollbacks pop."""
        stack: list[int] = []
        for record in self.promotions():
            if record.get("action") == "rollback" and stack:
                stack.pop()
            if not stack or stack[-1] != record["version"]:
                stack.append(record["version"])
        return stack

    def rollback_target(self) -> IndexVersion:
        """The version promoted before the current one (:meth:`promotion_stack`).

        So rolling back twice goes two promotions back (v4 -> v3 -> v2), never back and forth.
        """
        stack = self.promotion_stack()
        if len(stack) < 2:
            current = f"v{stack[-1]}" if stack else "none"
            raise FacePipelineError(f"nothing to roll back to: the promoted version ({current}) is the first one promoted")
        return self.get(stack[-2])


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid {os.getuid()}"
