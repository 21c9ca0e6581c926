"""The dataset snapshot: every verified row a retrain read from its source, and what became of it.

A retrain trains on the faces it *kept*; it also read faces of people with too few faces
(*dropped*) and rows it cannot train on (*rejected*, a malformed box). The snapshot holds all of
them, with the status and the reason, and once the faces are embedded, whether each one was
indexed or failed and why. Each index version keeps its snapshot as ``dataset.parquet``: the exact
data the version was made from, and the faces a later retrain need not count as new.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from facepipeline.embedding_store import OK
from facepipeline.faces import VERIFIED_FACES_SCHEMA, faces_to_table
from facepipeline.sources.base import FaceRead

KEPT, DROPPED, REJECTED = "kept", "dropped_min_faces", "rejected"
INDEXED, FAILED = "indexed", "failed"


def snapshot_of(read: FaceRead) -> pa.Table:
    """Every row of ``read``: its columns, ``status`` (kept, dropped_min_faces, rejected) and ``reason``."""
    parts = []
    for faces, status in ((read.faces, KEPT), (read.dropped, DROPPED)):
        table = faces_to_table(faces)
        parts.append(
            table.append_column("status", pa.array([status] * table.num_rows, pa.string()))
            .append_column("reason", pa.nulls(table.num_rows, pa.string()))
        )
    rejected = {name: pa.nulls(len(read.rejected), field.type) for name, field in zip(
        VERIFIED_FACES_SCHEMA.names, VERIFIED_FACES_SCHEMA, strict=True)}
    rejected["face_id"] = pa.array([r.face_id for r in read.rejected], pa.string())
    rejected["person_id"] = pa.array([""] * len(read.rejected), pa.string())  # not null in the schema
    rejected["photo_ref"] = pa.array([""] * len(read.rejected), pa.string())
    rejected["status"] = pa.array([REJECTED] * len(read.rejected), pa.string())
    rejected["reason"] = pa.array([r.reason for r in read.rejected], pa.string())
    parts.append(pa.table(rejected, schema=parts[0].schema))
    return pa.concat_tables(parts)


def with_embedding_outcome(snapshot: pa.Table, embeddings: pa.Table) -> pa.Table:
    """The snapshot plus ``embedding`` (indexed or failed, for kept faces) and ``embedding_error``."""
    outcome = {
        row["face_id"]: (INDEXED, None) if row["status"] == OK else (FAILED, row["error"] or row["error_code"])
        for row in embeddings.select(["face_id", "status", "error_code", "error"]).to_pylist()
    }
    found = [outcome.get(face_id, (None, None)) for face_id in snapshot.column("face_id").to_pylist()]
    return snapshot.append_column("embedding", pa.array([status for status, _ in found], pa.string())).append_column(
        "embedding_error", pa.array([error for _, error in found], pa.string())
    )


def snapshot_counts(snapshot: pa.Table) -> dict[str, int]:
    """Rows by status (and by embedding outcome when known): the lineage figures of a version."""
    counts = {f"faces_{status}": int(pc.sum(pc.equal(snapshot.column("status"), status)).as_py() or 0)
              for status in (KEPT, DROPPED, REJECTED)}
    if "embedding" in snapshot.column_names:
        for outcome in (INDEXED, FAILED):
            counts[f"faces_{outcome}"] = int(pc.sum(pc.equal(snapshot.column("embedding"), outcome)).as_py() or 0)
    kept = snapshot.filter(pc.equal(snapshot.column("status"), KEPT))
    counts["photos"] = len(set(kept.column("photo_ref").to_pylist()))
    return counts
