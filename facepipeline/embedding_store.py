"""The face-embeddings table and the incremental rule that keeps it up to date.

One row per verified face, embedded or failed (with a code and the reason): nothing is dropped
silently. A face is embedded again only when its key changes: the photo's bytes (sha256), the
verified box, or the stage's fingerprint (model weights, detection settings, stage version). A
changed *label* needs no new embedding: the earlier row is relabelled, also when the face got a
new id (a photo moved to another person's folder) but its photo and box are the same.

Rows are reused from the published table and from the embedding journal (rows a run killed before
it published had already made, see facepipeline.embedding_journal); new rows are journalled in
batches as they are made.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facepipeline.errors import FacePipelineError
from facepipeline.embedding import PERMANENT_FAILURES, PHOTO_UNAVAILABLE, FaceJob, Progress, embed_faces, stage_fingerprint
from facepipeline.embedding_journal import EmbeddingJournal
from facepipeline.faces import VerifiedFace
from facepipeline.model.face_model import FaceModel
from facepipeline.photos import PhotoRecord

Mode = Literal["full", "incremental"]
OK, FAILED = "ok", "failed"
# Columns that come from the verified face, not from embedding it: refreshed on every reuse.
LABEL_COLUMNS = ("face_id", "person_id", "person_name", "photo_ref", "event_id")
KEY_COLUMNS = ("face_id", "embed_key", "status", "error_code")
"""What deciding whether a face's earlier row is reused needs of an earlier table."""


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("person_id", pa.string(), nullable=False),
            pa.field("person_name", pa.string()),
            pa.field("photo_ref", pa.string(), nullable=False),
            pa.field("photo_sha256", pa.string()),
            pa.field("event_id", pa.string()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error_code", pa.string()),
            pa.field("error", pa.string()),
            pa.field("bbox_x", pa.float32()),
            pa.field("bbox_y", pa.float32()),
            pa.field("bbox_width", pa.float32()),
            pa.field("bbox_height", pa.float32()),
            pa.field("det_score", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("model_pack", pa.string(), nullable=False),
            pa.field("model_fingerprint", pa.string(), nullable=False),
            pa.field("model_sha256", pa.string(), nullable=False),
            pa.field("detector_sha256", pa.string(), nullable=False),
            pa.field("embed_key", pa.string(), nullable=False),
            pa.field("embedded_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


def embed_key(photo_sha256: str | None, face: VerifiedFace, fingerprint: str) -> str:
    box = face.bbox.to_json() if face.bbox else "centre"
    return hashlib.sha256(f"{photo_sha256}|{box}|{fingerprint}".encode()).hexdigest()


@dataclass
class EmbeddingReport:
    faces_total: int = 0
    embedded: int = 0
    reused: int = 0
    resumed: int = 0
    """Faces whose row (embedded, or failed for good) came from the journal of a run that did not finish."""
    failed: int = 0
    failed_before: int = 0
    """Faces whose earlier, permanent failure stands (same photo, box and stage): not retried."""
    seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    """Failed faces by error code."""

    @property
    def faces_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        usable_faces = self.faces_total - self.failed
        return (
            f"processed {usable_faces}/{self.faces_total} faces ({self.failed} failed); "
            f"embedded {self.embedded}, reused {self.reused}"
            + (f", resumed {self.resumed} from an unfinished run" if self.resumed else "")
        )


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The vectors of the usable rows as a contiguous (N, dim) float32 array."""
    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise ValueError("embedding_matrix() needs usable rows only; filter with usable() first")
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


BATCH_ROWS = 4096
"""Rows of an embeddings table read at a time where its vectors are used: memory stays that of a batch."""


def usable_batches(table: pa.Table, columns: Sequence[str] = (), batch_rows: int = BATCH_ROWS) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """The usable rows of ``table``, batch by batch, in order: each batch's ``columns`` (with
    ``status`` and ``embedding``) and its vectors as one (n, dim) float32 array. Never a copy of
    the whole table."""
    for batch in table.select(["status", "embedding", *columns]).to_batches(max_chunksize=batch_rows):
        rows = pa.Table.from_batches([batch]).filter(pc.equal(batch.column("status"), OK))
        if rows.num_rows:
            yield rows, embedding_matrix(rows)


def usable_matrix(table: pa.Table, batch_rows: int = BATCH_ROWS) -> np.ndarray:
    """``embedding_matrix(usable(table))`` without copying the table: one (N, dim) float32 array
    filled batch by batch, the only copy of the vectors made."""
    dim = table.schema.field("embedding").type.list_size
    matrix = np.empty((pc.sum(pc.equal(table.column("status"), OK)).as_py() or 0, dim), dtype=np.float32)
    filled = 0
    for _, vectors in usable_batches(table, batch_rows=batch_rows):
        matrix[filled : filled + len(vectors)] = vectors
        filled += len(vectors)
    return matrix


def usable(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("status"), OK))


MODEL_COLUMNS = ("model_pack", "model_fingerprint", "model_sha256", "detector_sha256")


def model_of(table: pa.Table) -> dict[str, str] | None:
    """The one model that made the usable rows (for lineage), None when there are none.

    Rows from two models cannot share an index: their vectors live in different spaces.
    """
    rows = usable(table).select(list(MODEL_COLUMNS))
    models = {tuple(row.values()) for row in rows.to_pylist()}
    if len(models) > 1:
        packs = ", ".join(sorted(f"{pack} ({fp[:12]})" for pack, fp, _, _ in models))
        raise FacePipelineError(f"the embeddings come from {len(models)} models ({packs}); re-embed with mode=full")
    return dict(zip(MODEL_COLUMNS, models.pop(), strict=True)) if models else None


@dataclass
class _Plan:
    """What to do with each verified face: reuse an earlier row, record a failure, or embed."""

    reuse: list[tuple[int, VerifiedFace]] = field(default_factory=list)
    new_rows: dict[str, dict] = field(default_factory=dict)
    jobs: list[FaceJob] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)


def update_embeddings(
    model: FaceModel,
    faces: Sequence[VerifiedFace],
    photos: Mapping[str, PhotoRecord],
    read_photo: Callable[[str], bytes],
    previous: pa.Table | None,
    *,
    mode: Mode = "incremental",
    progress: Callable[[Progress], None] | None = None,
    journal: EmbeddingJournal | None = None,
) -> tuple[pa.Table, EmbeddingReport]:
    """The new embeddings table for ``faces`` (same order): earlier rows reused where they still hold.

    With a ``journal``, its rows are reused like the published ones (also in mode ``full``: they
    were made by this very stage, by a run that did not finish), and each batch of new rows worth
    keeping is appended to it as soon as it is made.
    """
    if mode not in ("full", "incremental"):
        raise ValueError(f"mode must be 'full' or 'incremental', got {mode!r}")
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    schema = embeddings_schema(model.embedding_dim)
    previous, n_previous = _earlier_table(previous, journal, schema, mode)
    plan = _plan(model, faces, photos, previous, now)

    by_id = {face.face_id: face for face in faces}
    unjournalled: list[dict] = []
    for result in embed_faces(model, plan.jobs, read_photo, progress=progress):
        face = by_id[result.face_id]
        row = {**_base_row(face, photos[face.photo_ref].sha256, model, plan.keys[face.face_id]), "embedded_at": now}
        if result.ok:
            box = result.detection.bbox
            row.update(status=OK, bbox_x=box.x, bbox_y=box.y, bbox_width=box.width, bbox_height=box.height,
                       det_score=result.detection.score, embedding=result.embedding)
        else:
            row.update(status=FAILED, error_code=result.error_code, error=result.error)
        plan.new_rows[face.face_id] = row
        if journal is not None and (result.ok or result.error_code in PERMANENT_FAILURES):
            unjournalled.append(row)
            if len(unjournalled) >= journal.flush_rows:
                journal.append(_rows_to_table(unjournalled, schema))
                unjournalled = []
    if journal is not None and unjournalled:
        journal.append(_rows_to_table(unjournalled, schema))

    parts = [_rows_to_table(list(plan.new_rows.values()), schema)]
    if plan.reuse:
        rows, reused_faces = zip(*plan.reuse, strict=True)
        parts.append(_relabelled(previous.take(pa.array(rows, type=pa.int64())), reused_faces))
    combined = pa.concat_tables(parts)
    position = {face_id: i for i, face_id in enumerate(combined.column("face_id").to_pylist())}
    table = combined.take(pa.array([position[face.face_id] for face in faces], type=pa.int64()))

    earlier_status = previous.column("status").to_pylist() if plan.reuse else []
    reused_status = Counter(earlier_status[row] for row, _ in plan.reuse if row < n_previous)
    statuses, error_codes = table.column("status").to_pylist(), table.column("error_code").to_pylist()
    codes = Counter(code for status, code in zip(statuses, error_codes, strict=True) if status != OK)
    report = EmbeddingReport(
        faces_total=len(faces),
        embedded=sum(1 for row in plan.new_rows.values() if row["status"] == OK),
        reused=reused_status[OK],
        resumed=sum(1 for row, _ in plan.reuse if row >= n_previous),
        failed=sum(codes.values()),
        failed_before=reused_status[FAILED],
        failure_reasons=dict(codes),
    )
    report.seconds = time.perf_counter() - started
    return table, report


def faces_to_embed(
    model: FaceModel,
    faces: Sequence[VerifiedFace],
    photos: Mapping[str, PhotoRecord],
    previous_keys: pa.Table | None,
    *,
    mode: Mode = "incremental",
    journal: EmbeddingJournal | None = None,
) -> list[str]:
    """The ids of the faces ``update_embeddings`` would run the model on; the others it reuses or fails at once.

    ``previous_keys`` is what :func:`read_keys` reads of the published table (in today's layout):
    deciding needs its :data:`KEY_COLUMNS`, not its vectors.
    """
    if mode not in ("full", "incremental"):
        raise ValueError(f"mode must be 'full' or 'incremental', got {mode!r}")
    journalled = _conformed(journal.read(), embeddings_schema(model.embedding_dim)) if journal is not None else None
    parts = [table.select(list(KEY_COLUMNS)) for table in (None if mode == "full" else previous_keys, journalled)
             if table is not None and table.num_rows]
    earlier = pa.concat_tables(parts) if parts else None
    return [job.face_id for job in _plan(model, faces, photos, earlier, datetime.now(UTC)).jobs]


def read_keys(path: Path, schema: pa.Schema | None = None) -> pa.Table | None:
    """The :data:`KEY_COLUMNS` of the embeddings table at ``path``, without decoding its vectors (a
    few milliseconds instead of ~0.1 s for 5,000 faces). None when there is no such file, or, given
    ``schema``, when the table is not in that layout (``update_embeddings`` would not reuse it)."""
    if not path.is_file():
        return None
    if schema is not None and not _castable(pq.read_schema(path), schema):
        return None
    return pq.read_table(path, columns=list(KEY_COLUMNS))


def _plan(
    model: FaceModel, faces: Sequence[VerifiedFace], photos: Mapping[str, PhotoRecord], previous: pa.Table | None, now: datetime
) -> _Plan:
    fingerprint = stage_fingerprint(model)
    by_face, by_key = _earlier_rows(previous)  # only rows worth keeping: embedded, or failed for good
    plan = _Plan()
    for face in faces:
        record = photos.get(face.photo_ref)
        sha = record.sha256 if record and record.ok else None
        key = plan.keys[face.face_id] = embed_key(sha, face, fingerprint)
        if sha is None:
            reason = f"photo unavailable: {record.error if record else 'not fetched'}"
            plan.new_rows[face.face_id] = {
                **_base_row(face, None, model, key), "status": FAILED, "error_code": PHOTO_UNAVAILABLE, "error": reason, "embedded_at": now
            }
        elif face.face_id in by_face and by_face[face.face_id][1] == key:
            plan.reuse.append((by_face[face.face_id][0], face))
        elif key in by_key:  # the same photo and box under a new id: the label moved, not the face
            plan.reuse.append((by_key[key], face))
        else:
            plan.jobs.append(FaceJob(face.face_id, sha, face.bbox))
    return plan


def _earlier_table(
    previous: pa.Table | None, journal: EmbeddingJournal | None, schema: pa.Schema, mode: Mode
) -> tuple[pa.Table | None, int]:
    """The rows to reuse from: the published table's (not in mode ``full``), then the journal's;
    and how many of them come from the published table (the rest: from the journal)."""
    previous = None if mode == "full" else _conformed(previous, schema)
    journalled = _conformed(journal.read(), schema) if journal is not None else None
    n_previous = previous.num_rows if previous is not None else 0
    if journalled is None or journalled.num_rows == 0:
        return previous, n_previous
    return (journalled if previous is None else pa.concat_tables([previous, journalled])), n_previous


def reusable_keys(table: pa.Table | None) -> set[str]:
    """The keys of the rows of an embeddings table that a later run reuses: embedded, or failed for good."""
    if table is None or "embed_key" not in table.schema.names:
        return set()
    _, by_key = _earlier_rows(table.select(list(KEY_COLUMNS)))
    return set(by_key)


def _conformed(table: pa.Table | None, schema: pa.Schema) -> pa.Table | None:
    """The earlier table in today's schema, or None when it cannot be (another model or layout)."""
    if table is None or not _castable(table.schema, schema):
        return None
    try:
        return table.cast(schema)
    except (pa.ArrowException, TypeError, ValueError):
        return None


def _castable(layout: pa.Schema, schema: pa.Schema) -> bool:
    """Whether a table laid out as ``layout`` can be read as ``schema``: the same columns, vectors of
    the same dimension (not 256-d where 512-d are wanted), types that cast."""
    if layout.names != schema.names:
        return False
    for have, want in zip(layout, schema, strict=True):
        if pa.types.is_fixed_size_list(want.type) and not (
            pa.types.is_fixed_size_list(have.type) and have.type.list_size == want.type.list_size
        ):
            return False
    try:
        layout.empty_table().cast(schema)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def _earlier_rows(table: pa.Table | None) -> tuple[dict[str, tuple[int, str]], dict[str, int]]:
    """face id -> (row, key), and key -> row, of the reusable rows of an earlier embeddings table.

    Reusable: embedded, or failed in a way the same inputs would repeat (PERMANENT_FAILURES).
    """
    if table is None:
        return {}, {}
    columns = (table.column(name).to_pylist() for name in KEY_COLUMNS)
    by_face, by_key = {}, {}
    for row, (face_id, key, status, code) in enumerate(zip(*columns, strict=True)):
        if status == OK or code in PERMANENT_FAILURES:
            by_face[face_id] = (row, key)
            by_key[key] = row
    return by_face, by_key


def _relabelled(table: pa.Table, faces: Sequence[VerifiedFace]) -> pa.Table:
    """Reused rows carry today's labels: a person renamed or reassigned needs no new embedding."""
    for name in LABEL_COLUMNS:
        field_ = table.schema.field(name)
        values = pa.array([getattr(face, name) for face in faces], type=field_.type)
        table = table.set_column(table.schema.get_field_index(name), field_, values)
    return table


def _base_row(face: VerifiedFace, sha: str | None, model: FaceModel, key: str) -> dict:
    return {
        **{name: getattr(face, name) for name in LABEL_COLUMNS},
        "photo_sha256": sha,
        "model_pack": model.pack.name,
        "model_fingerprint": model.pack.fingerprint,
        "model_sha256": model.pack.recognizer.sha256,
        "detector_sha256": model.pack.detector.sha256,
        "embed_key": key,
    }


def _rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    dim = schema.field("embedding").type.list_size
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    valid = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        if row.get("embedding") is not None:
            flat[i] = row["embedding"]
            valid[i] = True
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim, mask=pa.array(~valid))
    arrays = [
        embedding if name == "embedding" else pa.array([row.get(name) for row in rows], type=schema.field(name).type)
        for name in schema.names
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
