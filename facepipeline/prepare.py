"""The "prepare" view of a retrain: which faces it would train on, their statistics, what is wrong.

Read-only: it opens no training session and writes nothing but the local copy of the config. The
``verified_faces`` asset and ``facepipeline prepare`` both use it, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from facepipeline.dataset import DatasetStats, Validation, dataset_fingerprint, dataset_stats, validate_dataset
from facepipeline.faces import VerifiedFace
from facepipeline.gallery.config import ConfigStore, GalleryConfig
from facepipeline.options import RetrainOptions
from facepipeline.sources.base import FaceRead, FaceSource


@dataclass
class PreparedDataset:
    source: str
    options: RetrainOptions
    """The options with the config table's values filled in."""
    config: GalleryConfig
    read: FaceRead
    stats: DatasetStats
    validation: Validation
    notes: list[str] = field(default_factory=list)
    """How the config was obtained: defaults taken, a saved copy used."""

    @property
    def faces(self) -> list[VerifiedFace]:
        return self.read.faces

    @cached_property
    def fingerprint(self) -> str:
        """Hashed once: the faces read are not changed after preparing (a retrain asks ~4 times)."""
        return dataset_fingerprint(self.read.faces)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "valid": self.validation.ok,
            "errors": self.validation.errors,
            "warnings": self.validation.warnings,
            "stats": self.stats.as_dict(),
            "faces_dropped_by_min_faces": self.read.dropped_by_min_faces,
            "people_added_as_co_occurring": self.read.added_as_co_occurring,
            "rejected_rows": [{"face_id": r.face_id, "reason": r.reason} for r in self.read.rejected],
            "options": self.options.as_json(),
            "config_notes": self.notes,
            "dataset_fingerprint": self.fingerprint,
        }


def prepare_dataset(source: FaceSource, options: RetrainOptions, config_store: ConfigStore) -> PreparedDataset:
    config, notes = config_store.load()
    resolved = options.resolved(config)
    read = source.read(resolved.filters())
    return PreparedDataset(
        source=source.description,
        options=resolved,
        config=config,
        read=read,
        stats=dataset_stats(read.faces),
        validation=validate_dataset(read.faces),
        notes=notes,
    )
