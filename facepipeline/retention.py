"""What a home keeps as it grows, and what ``facepipeline prune`` may remove.

A run adds to the home and never takes away: every retrain publishes an index version (the hnswlib
graph with every vector, and the dataset it was made from: 14 MB for 5,700 faces, about 2 GB for a
million), every clustering a clustering version, a retrain's embedding steps leave their outputs
under ``outputs/<run id>/`` (what re-executing that run from a failed step reloads), and each new
dataset a snapshot under ``datasets/``. So the home grows with the number of runs, not with the
work. Pruning bounds it, with one number, ``keep``:

- **index versions**: the newest ``keep``, the promoted one, and the last ``keep`` versions of the
  promotion stack (what ``facepipeline rollback`` goes back to);
- **clustering versions**: the newest ``keep`` (rejections name clusters of the latest);
- **run outputs**: those of runs still under way and of the ``keep`` most recent runs;
- **dataset snapshots**: those of the kept index versions and the ``keep`` most recent (each index
  version holds its own copy of its dataset as well).

A retired version is recorded in its store's ledger (:meth:`VersionedStore.retire`); the rest is
derived data that a later run makes again when it needs it. The plan is made first and shown
(``--dry-run`` stops there); removal is file by file, each one atomic, and a failure to remove one
is reported without stopping the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from facepipeline.clustering import ClusterStore
from facepipeline.index import IndexStore
from facepipeline.tables import TableStore
from facepipeline.versions import Version, VersionedStore, remove_tree, tree_bytes

DEFAULT_KEEP = 10
INDEX_VERSION = "index version"
CLUSTERING_VERSION = "clustering version"
RUN_OUTPUTS = "run outputs"
DATASET_SNAPSHOT = "dataset snapshot"
KINDS = (INDEX_VERSION, CLUSTERING_VERSION, RUN_OUTPUTS, DATASET_SNAPSHOT)
_PLURAL = {INDEX_VERSION: "index versions", CLUSTERING_VERSION: "clustering versions", RUN_OUTPUTS: "runs' outputs",
           DATASET_SNAPSHOT: "dataset snapshots"}

_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SNAPSHOT = re.compile(r"^([0-9a-f]{16,64})\.parquet$")


@dataclass(frozen=True)
class Removal:
    kind: str
    name: str
    """``v3``, a run id, a dataset fingerprint."""
    path: Path
    bytes: int
    version: Version | None = None
    """The version itself, for an index or clustering version."""


@dataclass(frozen=True)
class PrunePlan:
    keep: int
    removals: tuple[Removal, ...]
    kept: dict[str, list[str]]
    """The names kept, by kind."""

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def counts(self) -> dict[str, int]:
        return {kind: sum(r.kind == kind for r in self.removals) for kind in KINDS}

    def line(self) -> str:
        removed = ", ".join(f"{_PLURAL[kind]} {n}" for kind, n in self.counts().items() if n) or "nothing"
        kept = ", ".join(f"{_PLURAL[kind]} {len(names)}" for kind, names in self.kept.items())
        return f"{removed} ({_mib(self.bytes)}); keeping {kept}"


@dataclass
class PruneReport:
    removed: list[Removal] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Path -> why it could not be removed."""

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def line(self) -> str:
        text = f"removed {len(self.removed)} item(s), {_mib(self.bytes)} freed"
        return text + (f"; {len(self.failed)} could not be removed" if self.failed else "")


def plan_prune(
    *, index: IndexStore, clusters: ClusterStore, snapshots: TableStore, outputs: Path, keep: int,
    runs_under_way: Iterable[str],
) -> PrunePlan:
    """What pruning to ``keep`` would remove (module docstring); nothing is touched.

    ``runs_under_way``: the ids of runs not finished yet (queued, starting, started, canceling);
    their outputs are kept whatever their age.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version is always kept), got {keep}")
    removals: list[Removal] = []
    kept: dict[str, list[str]] = {}

    index_versions = index.versions()
    promoted = index.promoted()
    protected = {v.version for v in index_versions[-keep:]} | set(index.promotion_stack()[-keep:])
    if promoted is not None:
        protected.add(promoted.version)
    kept_index = _versions(index_versions, protected, INDEX_VERSION, removals)
    kept[INDEX_VERSION] = [v.name for v in kept_index]

    clusterings = clusters.versions()
    kept[CLUSTERING_VERSION] = [
        v.name for v in _versions(clusterings, {v.version for v in clusterings[-keep:]}, CLUSTERING_VERSION, removals)
    ]

    under_way = set(runs_under_way)
    runs = _newest_first(p for p in _children(outputs) if p.is_dir() and _RUN_ID.match(p.name))
    kept[RUN_OUTPUTS] = []
    for rank, path in enumerate(runs):
        if rank < keep or path.name in under_way:
            kept[RUN_OUTPUTS].append(path.name)
        else:
            removals.append(Removal(RUN_OUTPUTS, path.name, path, tree_bytes(path)))

    needed = {v.manifest.get("dataset_fingerprint") for v in kept_index}
    files = _newest_first(p for p in _children(snapshots.root) if _SNAPSHOT.match(p.name))
    kept[DATASET_SNAPSHOT] = []
    for rank, path in enumerate(files):
        fingerprint = _SNAPSHOT.match(path.name).group(1)
        if rank < keep or fingerprint in needed:
            kept[DATASET_SNAPSHOT].append(fingerprint)
        else:
            removals.append(Removal(DATASET_SNAPSHOT, fingerprint, path, tree_bytes(path)))
    return PrunePlan(keep, tuple(removals), kept)


def apply_prune(plan: PrunePlan, *, index: IndexStore, clusters: ClusterStore, reason: str, by: str) -> PruneReport:
    """Remove what ``plan`` lists, each item on its own: one that cannot be removed is reported in
    :attr:`PruneReport.failed` and the others still go."""
    stores: dict[str, VersionedStore] = {INDEX_VERSION: index, CLUSTERING_VERSION: clusters}
    report = PruneReport()
    for removal in plan.removals:
        try:
            if removal.version is not None:
                stores[removal.kind].retire(removal.version, reason=reason, by=by)
            else:
                remove_tree(removal.path)
        except OSError as exc:
            report.failed[str(removal.path)] = f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        report.removed.append(removal)
    return report


def _versions(versions: list[Version], protected: set[int], kind: str, removals: list[Removal]) -> list[Version]:
    kept = []
    for version in versions:
        if version.version in protected:
            kept.append(version)
        else:
            removals.append(Removal(kind, version.name, version.path, tree_bytes(version.path), version))
    return kept


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    """By modification time, newest first; the name breaks ties, so the order is stable."""
    stamped = []
    for path in paths:
        try:
            stamped.append((os.stat(path).st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    return [path for *_, path in sorted(stamped, reverse=True)]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
