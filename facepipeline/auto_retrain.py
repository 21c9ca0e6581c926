"""When to retrain by itself: enough verified faces that no retrain has used yet (SPEC: Automation).

A face is *new* when people confirmed it (verified, with a person), no retrain marked it
``training_used``, and the latest complete retrain did not read it either. That second rule keeps
faces a retrain read but could not use (a photo gone, no face in the box, a person with too few
faces) from counting again and again. A retrain is due when the new faces reach
``auto_retrain_threshold`` or ``auto_retrain_percentage`` of the faces the current model was
trained on, whichever comes first; the very first retrain is due as soon as there is a face.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pyarrow.parquet as pq

from facepipeline.gallery.base import Gallery
from facepipeline.gallery.config import GalleryConfig
from facepipeline.index import DATASET_FILE, IndexStore, IndexVersion
from facepipeline.sources.base import FaceFilters, FaceSource


@dataclass(frozen=True)
class Backlog:
    new_face_ids: tuple[str, ...]
    """Sorted."""
    trained: int
    """Faces in the promoted index: what the current model was trained on."""
    seen_in: str | None
    """The version whose dataset the new faces were compared with."""

    @property
    def count(self) -> int:
        return len(self.new_face_ids)

    @property
    def fingerprint(self) -> str:
        """The same new faces, the same fingerprint: what a run request is keyed on."""
        return hashlib.sha256(",".join(self.new_face_ids).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    due: bool
    needed: int
    """How many new faces make a retrain due."""
    reason: str


def faces_needed(config: GalleryConfig, trained: int) -> int:
    """New faces that make a retrain due: the threshold, or the percentage of ``trained``, if fewer."""
    if config.auto_retrain_percentage == 0:  # the share rule is off
        return config.auto_retrain_threshold
    by_share = math.ceil(config.auto_retrain_percentage * trained)
    return max(1, min(config.auto_retrain_threshold, by_share))


def decide(backlog: Backlog, config: GalleryConfig) -> Decision:
    needed = faces_needed(config, backlog.trained)
    rule = (
        f"auto_retrain_threshold {config.auto_retrain_threshold} or auto_retrain_percentage "
        f"{config.auto_retrain_percentage:g} of {backlog.trained} trained faces = {needed}"
    )
    if backlog.count >= needed:
        return Decision(True, needed, f"{backlog.count} new verified faces reach {rule}")
    if backlog.count == 0:
        return Decision(False, needed, f"no new verified faces ({backlog.trained} trained on); a retrain starts at {needed}")
    return Decision(False, needed, f"{backlog.count} new verified faces, fewer than {rule}")


def untrained_face_ids(source: FaceSource) -> list[str]:
    """Verified faces no retrain has used: ``training_used`` in a gallery; every face of a folder."""
    if isinstance(source, Gallery):
        return source.untrained_face_ids()
    read = source.read(FaceFilters())
    return [face.face_id for face in read.faces] + [r.face_id for r in read.rejected]


def seen_face_ids(version: IndexVersion) -> set[str]:
    """Every face the retrain that made ``version`` read: its dataset snapshot (or, for a version
    made before snapshots were kept, the faces it indexed)."""
    snapshot = version.path / DATASET_FILE
    table = pq.read_table(snapshot if snapshot.is_file() else version.path / "entries.parquet", columns=["face_id"])
    return set(table.column("face_id").to_pylist())


def latest_complete(store: IndexStore) -> IndexVersion | None:
    """The newest version built from every verified face (not a retrain filtered to some of them)."""
    for version in store.newest_first():
        if not version.manifest.get("partial", False):
            return version
    return None


def backlog(source: FaceSource, store: IndexStore) -> Backlog:
    latest = latest_complete(store)
    seen = seen_face_ids(latest) if latest is not None else set()
    promoted = store.promoted()
    new = sorted(set(untrained_face_ids(source)) - seen)
    return Backlog(tuple(new), trained=promoted.manifest.get("faces", 0) if promoted else 0,
                   seen_in=latest.name if latest else None)
