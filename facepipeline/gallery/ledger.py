"""The write-back's ledger: which gallery rows still hold what facepipeline wrote or found there.

A retrain writes each embedded face's descriptor, confidence, detected box and context back to its
``photo_faces`` row, only where a value changes. Knowing which rows change means reading them back
and comparing: in PostgreSQL every row's vector is fetched from its TOAST table and hashed, 0.2 s
for 6,000 faces, the write-back's whole cost when 25 faces are new.

The ledger keeps, per face, a digest of the update last written to its row or found there
(:func:`update_digest`) and the row version that held it: PostgreSQL's ``xmin``, the transaction
that last wrote the row. Any write to a row, by anyone, gives it a new ``xmin``. So a face whose
update has the digest the ledger holds, on a row still at the ledger's version, holds that update
(and is still verified, with the person and box it had): nothing to compare. Every other face is
compared as before. The ledger only saves work: a missing, unreadable or stale one, or one of
another gallery, means comparing more rows, never a wrong write. It is replaced after each
write-back that completes; one that fails leaves the previous one, still valid row by row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from facepipeline.gallery.base import SESSION_KEY, DescriptorUpdate, without_session
from facepipeline.tables import TableStore

_FORMAT = b"1"


def update_digest(update: DescriptorUpdate) -> str:
    """Everything the write-back compares of one update: the person and box the row must still
    have, the descriptor's exact bytes, the confidence, the detected box and the context; of the
    context's training session, only whether there is one (a rerun does not rewrite a row for its
    new session id, as the comparison does not). Numbers go in exactly (``repr``): a digest that
    differs where the stored values would not costs one comparison, never a missed write."""
    context = without_session(update.context)
    box, detected = update.bbox, update.detected_bbox
    head = (
        f"{update.person_id}|{box.x!r},{box.y!r},{box.width!r},{box.height!r}|{float(update.confidence)!r}|"
        f"{detected.x!r},{detected.y!r},{detected.width!r},{detected.height!r}|{update.context.get(SESSION_KEY) is not None}|"
    )
    digest = hashlib.blake2b(head.encode(), digest_size=16)
    digest.update(json.dumps(context, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(update.descriptor, dtype="<f4").tobytes())
    return digest.hexdigest()


class WriteBackLedger:
    """One gallery's ledger in FACEPIPELINE_HOME: face id -> (update digest, row version)."""

    NAME = "writeback_ledger"

    def __init__(self, root: Path, gallery: str) -> None:
        self.store = TableStore(root)
        self.gallery = gallery
        """The gallery's address (no password): another gallery's ledger is not used."""

    def load(self) -> dict[str, tuple[str, str]]:
        """What the last completed write-back left, or nothing (no ledger, another gallery's, unreadable)."""
        try:
            table = self.store.read(self.NAME)
        except (OSError, pa.ArrowException):
            return {}
        metadata = (table.schema.metadata or {}) if table is not None else {}
        if metadata.get(b"gallery") != self.gallery.encode() or metadata.get(b"format") != _FORMAT:
            return {}
        try:
            columns = [table.column(name).to_pylist() for name in ("face_id", "digest", "version")]
        except KeyError:
            return {}
        return {face_id: (digest, version) for face_id, digest, version in zip(*columns, strict=True)}

    def save(self, held: Mapping[str, tuple[str, str]]) -> None:
        """Replace the ledger (atomically) with ``held``: face id -> (digest, row version)."""
        face_ids = sorted(held)
        table = pa.table(
            {
                "face_id": pa.array(face_ids, pa.string()),
                "digest": pa.array([held[f][0] for f in face_ids], pa.string()),
                "version": pa.array([held[f][1] for f in face_ids], pa.string()),
            }
        ).replace_schema_metadata({b"gallery": self.gallery.encode(), b"format": _FORMAT})
        self.store.write(self.NAME, table)
