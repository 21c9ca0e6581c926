"""The face-embeddings table and the incremental rule that keeps it up to date.

One row per verified face, embedded or failed (with the reason): nothing is dropped silently.
A face is re-embedded only when its key changes: the photo's bytes (sha256), the verified box, or
the model weights. A changed *label* (person) needs no new embedding; the row is relabelled.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facepipeline.embedding import FaceJob, Progress, embed_faces
from facepipeline.faces import VerifiedFace
from facepipeline.model.face_model import FaceModel
from facepipeline.photos import PhotoRecord

Mode = Literal["full", "incremental"]
OK, FAILED = "ok", "failed"


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
            pa.field("error", pa.string()),
            pa.field("bbox_x", pa.float32()),
            pa.field("bbox_y", pa.float32()),
            pa.field("bbox_width", pa.float32()),
            pa.field("bbox_height", pa.float32()),
            pa.field("det_score", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("model_pack", pa.string(), nullable=False),
            pa.field("model_sha256", pa.string(), nullable=False),
            pa.field("embed_key", pa.string(), nullable=False),
            pa.field("embedded_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


def embed_key(photo_sha256: str | None, face: VerifiedFace, model_fingerprint: str) -> str:
    box = face.bbox.to_json() if face.bbox else "centre"
    return hashlib.sha256(f"{photo_sha256}|{box}|{model_fingerprint}".encode()).hexdigest()


@dataclass
class EmbeddingReport:
    faces_total: int = 0
    embedded: int = 0
    reused: int = 0
    failed: int = 0
    failed_before: int = 0
    """Faces whose earlier failure stands (same photo, box and model): not retried."""
    seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def faces_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        usable = self.faces_total - self.failed
        return (
            f"processed {usable}/{self.faces_total} faces ({self.failed} failed); "
            f"embedded {self.embedded}, reused {self.reused}"
        )


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The vectors of the usable rows as a contiguous (N, dim) float32 array."""
    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise ValueError("embedding_matrix() needs usable rows only; filter with usable() first")
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def usable(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("status"), OK))


def update_embeddings(
    model: FaceModel,
    faces: Sequence[VerifiedFace],
    photos: Mapping[str, PhotoRecord],
    read_photo: Callable[[str], bytes],
    previous: pa.Table | None,
    *,
    mode: Mode = "incremental",
    progress: Callable[[Progress], None] | None = None,
) -> tuple[pa.Table, EmbeddingReport]:
    """The new embeddings table for ``faces``: earlier rows reused where their key is unchanged."""
    if mode not in ("full", "incremental"):
        raise ValueError(f"mode must be 'full' or 'incremental', got {mode!r}")
    started = time.perf_counter()
    fingerprint = model.pack.fingerprint
    report = EmbeddingReport(faces_total=len(faces))
    previous = None if mode == "full" else _conformed(previous, embeddings_schema(model.embedding_dim))
    earlier = _keys_by_face(previous) if previous is not None else {}
    now = datetime.now(UTC).replace(microsecond=0)

    reused_rows: list[int] = []
    reused_faces: list[VerifiedFace] = []
    new_rows: dict[str, dict] = {}
    jobs: list[FaceJob] = []
    keys: dict[str, str] = {}
    for face in faces:
        record = photos.get(face.photo_ref)
        sha = record.sha256 if record and record.ok else None
        key = keys[face.face_id] = embed_key(sha, face, fingerprint)
        if sha is None:
            reason = f"photo unavailable: {record.error if record else 'not fetched'}"
            new_rows[face.face_id] = {**_base_row(face, sha, model, key), "status": FAILED, "error": reason, "embedded_at": now}
        elif face.face_id in earlier and earlier[face.face_id][1] == key:
            row, _, status = earlier[face.face_id]
            reused_rows.append(row)
            reused_faces.append(face)
            report.reused += status == OK
            report.failed_before += status != OK
        else:
            jobs.append(FaceJob(face.face_id, sha, face.bbox))

    by_id = {face.face_id: face for face in faces}
    for result in embed_faces(model, jobs, read_photo, progress=progress):
        face = by_id[result.face_id]
        row = _base_row(face, photos[face.photo_ref].sha256, model, keys[face.face_id])
        row["embedded_at"] = now
        if result.ok:
            box = result.detection.bbox
            row.update(
                status=OK,
                bbox_x=box.x,
                bbox_y=box.y,
                bbox_width=box.width,
                bbox_height=box.height,
                det_score=result.detection.score,
                embedding=result.embedding,
            )
            report.embedded += 1
        else:
            row.update(status=FAILED, error=result.error)
        new_rows[face.face_id] = row

    parts = [_to_table(list(new_rows.values()), model.embedding_dim)]
    if reused_rows:
        parts.append(_relabelled(previous.take(reused_rows), reused_faces))
    combined = pa.concat_tables(parts)
    position = {face_id: i for i, face_id in enumerate(combined.column("face_id").to_pylist())}
    table = combined.take([position[face.face_id] for face in faces])

    for status, error in zip(table.column("status").to_pylist(), table.column("error").to_pylist(), strict=True):
        if status != OK:
            report.failed += 1
            reason = (error or "unknown").split(":")[0]
            report.failure_reasons[reason] = report.failure_reasons.get(reason, 0) + 1
    report.seconds = time.perf_counter() - started
    return table, report


def _conformed(table: pa.Table | None, schema: pa.Schema) -> pa.Table | None:
    """The earlier table in today's schema, or None when it cannot be (another model or layout)."""
    if table is None or table.schema.names != schema.names:
        return None
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None


def _keys_by_face(table: pa.Table) -> dict[str, tuple[int, str, str]]:
    """face id -> (row number, embed key, status) of an earlier embeddings table."""
    ids, keys, statuses = (table.column(name).to_pylist() for name in ("face_id", "embed_key", "status"))
    return {face_id: (row, key, status) for row, (face_id, key, status) in enumerate(zip(ids, keys, statuses, strict=True))}


def _relabelled(table: pa.Table, faces: Sequence[VerifiedFace]) -> pa.Table:
    """Reused rows carry today's labels: a person renamed or reassigned needs no new embedding."""
    for name, values in (
        ("person_id", [f.person_id for f in faces]),
        ("person_name", [f.person_name for f in faces]),
        ("photo_ref", [f.photo_ref for f in faces]),
        ("event_id", [f.event_id for f in faces]),
    ):
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), pa.array(values, type=table.schema.field(name).type))
    return table


def _base_row(face: VerifiedFace, sha: str | None, model: FaceModel, key: str) -> dict:
    return {
        "face_id": face.face_id,
        "person_id": face.person_id,
        "person_name": face.person_name,
        "photo_ref": face.photo_ref,
        "photo_sha256": sha,
        "event_id": face.event_id,
        "model_pack": model.pack.name,
        "model_sha256": model.pack.recognizer.sha256,
        "embed_key": key,
    }


def _to_table(rows: list[dict], dim: int) -> pa.Table:
    schema = embeddings_schema(dim)
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    vectors = columns.pop("embedding")
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    valid = np.zeros(len(rows), dtype=bool)
    for i, vector in enumerate(vectors):
        if vector is not None:
            flat[i] = vector
            valid[i] = True
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim, mask=pa.array(~valid))
    arrays = [
        embedding if name == "embedding" else pa.array(columns[name], type=schema.field(name).type)
        for name in schema.names
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
