"""What a home keeps as it grows, and what ``facepipeline prune`` may remove.

A run adds to the home and never takes away: every retrain publishes an index version (the hnswlib
graph with every vector, and the dataset it was made from: 14 MB for 5,700 faces, about 2 GB for a
million), every clustering a clustering version, a retrain's embedding steps leave their outputs
under ``outputs/<run id>/`` (what re-executing that run from a failed step reloads), and each new
dataset a snapshot under ``datasets/``. So the home grows with the number of runs, not with the
work. Pruning bounds it, with one number, ``keep``:

- **index versions**: the newest ``keep``, the promoted one, the ``keep`` versions before it on the
  promotion stack (what ``facepipeline rollback`` goes back to), and the newest one built from
  every verified face (the ``auto_retrain`` sensor counts new faces against it);
- **clustering versions**: the newest ``keep`` (rejections name clusters of the latest);
- **run outputs**: those of the ``keep`` most recent runs, of runs still under way and of every run
  these re-execute, up their chain of parents (a re-execution from a failed step reloads the
  outputs it does not make again from its nearest ancestor that made them);
- **dataset snapshots**: those of the kept index versions and the ``keep`` most recent (each index
  version holds its own copy of its dataset as well);
- **cached photos**: those of the faces in the current dataset (``tables/``), in the kept snapshots
  and in the kept index versions' datasets, and every photo fetched in the last
  ``photo_grace_s`` (:data:`PHOTO_GRACE_S`, a week: the photos of new events that recognition
  fetched, which are verified soon after). They go only while no photo cache is open
  (:func:`facepipeline.photos.exclusive_use`; a run that is using the cache keeps them all for this
  time), and what is in use is read again then. A photo removed is fetched again by the next run
  that needs it.

A retired version is recorded in its store's ledger (:meth:`VersionedStore.retire`); the rest is
derived data that a later run makes again when it needs it. The plan is made first and shown
(``--dry-run`` stops there); removal is item by item, each one atomic, and a failure to remove one
is reported without stopping the others. Each item is looked at again just before it goes: an
index version promoted since the plan (checked under the store's promotion lock, which ``promote``
takes too), or a snapshot or run folder written since the plan (a retrain that started meanwhile),
is kept. Leftovers of a removal that was interrupted (``.removing-*``) are removed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from facepipeline.auto_retrain import latest_complete
from facepipeline.clustering import ClusterStore
from facepipeline.index import IndexStore, IndexVersion
from facepipeline.photos import UnusedPhotos, exclusive_use, forget_photos, unused_photos
from facepipeline.tables import TableStore
from facepipeline.versions import REMOVING_PREFIX, Version, listing, remove_tree, tree_bytes

DEFAULT_KEEP = 10
INDEX_VERSION = "index version"
CLUSTERING_VERSION = "clustering version"
RUN_OUTPUTS = "run outputs"
DATASET_SNAPSHOT = "dataset snapshot"
LEFTOVER = "unfinished removal"
CACHED_PHOTOS = "cached photos"
KINDS = (INDEX_VERSION, CLUSTERING_VERSION, RUN_OUTPUTS, DATASET_SNAPSHOT, LEFTOVER, CACHED_PHOTOS)
_PLURAL = {INDEX_VERSION: "index versions", CLUSTERING_VERSION: "clustering versions", RUN_OUTPUTS: "runs' outputs",
           DATASET_SNAPSHOT: "dataset snapshots", LEFTOVER: "unfinished removals", CACHED_PHOTOS: "cached photos"}
PHOTO_GRACE_S = 7 * 24 * 3600.0
"""A cached photo fetched this recently stays, used or not."""
CURRENT_TABLES = ("verified_faces", "cached_photos")
"""The tables (``tables/``) whose photos are the current dataset's."""

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
    mtime_ns: int | None = None
    """When a snapshot or a run's folder was last written, at the plan: written since, it is kept."""
    photos: UnusedPhotos | None = None
    """For the cached photos: which photos and manifest rows."""
    fetched_before: float | None = None
    """For the cached photos: the fetch time (``time.time()``) before which a photo counts as old."""


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
        """Items by kind; for the cached photos, photos."""
        return {kind: sum(len(r.photos.sha256s) if r.photos else 1 for r in self.removals if r.kind == kind) for kind in KINDS}

    def line(self) -> str:
        removed = ", ".join(f"{_PLURAL[kind]} {n}" for kind, n in self.counts().items() if n) or "nothing"
        kept = ", ".join(f"{_PLURAL[kind]} {len(names)}" for kind, names in self.kept.items() if kind != CACHED_PHOTOS)
        return f"{removed} ({_mib(self.bytes)}); keeping {kept}"


@dataclass
class PruneReport:
    removed: list[Removal] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    """Path -> why it stayed after all (it changed since the plan)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Path -> why it could not be removed."""

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    @property
    def items(self) -> int:
        """Items removed other than cached photos."""
        return sum(r.photos is None for r in self.removed)

    @property
    def photos(self) -> int:
        """Cached photos removed."""
        return sum(len(r.photos.sha256s) for r in self.removed if r.photos)

    def as_dict(self) -> dict:
        """What came of a prune, as the CLI's JSON and the job's metadata give it."""
        return {"removed": self.items, "photos_removed": self.photos, "bytes_freed": self.bytes,
                "kept_after_all": self.kept, "failed": self.failed}

    def line(self) -> str:
        text = f"removed {self.items} item(s)"
        text += f" and {self.photos} cached photos, {_mib(self.bytes)} freed" if self.photos else f", {_mib(self.bytes)} freed"
        text += f"; {len(self.kept)} kept after all (changed since the plan)" if self.kept else ""
        return text + (f"; {len(self.failed)} could not be removed" if self.failed else "")


def plan_prune(
    *, index: IndexStore, clusters: ClusterStore, snapshots: TableStore, outputs: Path, keep: int,
    runs_kept: Iterable[str], photos: Path | None = None, tables: TableStore | None = None,
    photo_grace_s: float = PHOTO_GRACE_S,
) -> PrunePlan:
    """What pruning to ``keep`` would remove (module docstring); nothing is touched.

    ``runs_kept``: runs whose outputs stay whatever their age: those not finished yet (queued,
    starting, started, canceling) and the runs they re-execute. ``photos``: the photo cache's
    root, with ``tables`` (the current dataset's); without them no photo is looked at.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version is always kept), got {keep}")
    removals: list[Removal] = []
    kept: dict[str, list[str]] = {}

    index_versions = index.versions()
    kept_index = _versions(index_versions, protected_index_versions(index, keep, index_versions), INDEX_VERSION, removals)
    kept[INDEX_VERSION] = [v.name for v in kept_index]

    clusterings = clusters.versions()
    kept[CLUSTERING_VERSION] = [
        v.name for v in _versions(clusterings, {v.version for v in clusterings[-keep:]}, CLUSTERING_VERSION, removals)
    ]

    runs = {p.name: p for p in listing(outputs) if p.is_dir() and _RUN_ID.match(p.name)}
    kept[RUN_OUTPUTS] = _files(runs, keep, set(runs_kept), RUN_OUTPUTS, removals)

    snapshot_files = {m.group(1): p for p in listing(snapshots.root) if (m := _SNAPSHOT.match(p.name))}
    needed = {v.manifest.get("dataset_fingerprint") for v in kept_index}
    kept[DATASET_SNAPSHOT] = _files(snapshot_files, keep, needed, DATASET_SNAPSHOT, removals)

    for folder in (index.root, clusters.root, outputs, snapshots.root):
        for path in listing(folder):
            if path.name.startswith(REMOVING_PREFIX):
                removals.append(Removal(LEFTOVER, path.name, path, tree_bytes(path)))

    if photos is not None and tables is not None:  # last: applied once the rest is gone
        fetched_before = time.time() - photo_grace_s
        try:
            refs, shas = _photos_in_use([snapshot_files[name] for name in kept[DATASET_SNAPSHOT]]
                                        + [v.path / "dataset.parquet" for v in kept_index] + _current_tables(tables))
            unused = unused_photos(photos, refs, fetched_before=fetched_before, used_sha256s=shas)
        except (OSError, sqlite3.Error) as exc:
            kept[CACHED_PHOTOS] = [f"every photo: {type(exc).__name__}: {exc}"]
        else:
            if unused.sha256s:  # the manifest rows of old failures and twins go along with photos
                removals.append(Removal(CACHED_PHOTOS, f"{len(unused.sha256s)} photos", photos, unused.bytes,
                                        photos=unused, fetched_before=fetched_before))
            kept[CACHED_PHOTOS] = [f"the photos of {len(refs)} references in use, and those fetched in the last "
                                   f"{photo_grace_s / 86400:g} days"]
    return PrunePlan(keep, tuple(removals), kept)


def protected_index_versions(index: IndexStore, keep: int, versions: list[IndexVersion] | None = None) -> set[int]:
    """The numbers of the index versions that pruning to ``keep`` leaves alone (module docstring)."""
    versions = index.versions() if versions is None else versions
    protected = {v.version for v in versions[-keep:]} | set(index.promotion_stack()[-(keep + 1):])
    for version in (index.promoted(), latest_complete(index)):
        if version is not None:
            protected.add(version.version)
    return protected


def apply_prune(
    plan: PrunePlan, *, index: IndexStore, clusters: ClusterStore, reason: str, by: str, runs_kept: Iterable[str] = (),
    snapshots: TableStore | None = None, tables: TableStore | None = None,
) -> PruneReport:
    """Remove what ``plan`` lists, each item on its own: one that changed since the plan stays
    (:attr:`PruneReport.kept`), one that cannot be removed is reported (:attr:`PruneReport.failed`),
    and the others still go. ``runs_kept``: as for :func:`plan_prune`, looked at again now.
    ``snapshots`` and ``tables``: where the photos in use are read again before photos go."""
    report = PruneReport()
    protected_runs = set(runs_kept)
    for removal in plan.removals:
        if removal.kind == RUN_OUTPUTS and removal.name in protected_runs:
            report.kept[str(removal.path)] = "a run under way since the plan needs it"
            continue
        if removal.kind == CACHED_PHOTOS:
            try:
                _forget_photos(removal, index=index, snapshots=snapshots, tables=tables, report=report)
            except (OSError, sqlite3.Error) as exc:
                report.failed[str(removal.path)] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            why_kept = _remove(removal, plan.keep, index=index, clusters=clusters, reason=reason, by=by)
        except OSError as exc:
            report.failed[str(removal.path)] = f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        if why_kept:
            report.kept[str(removal.path)] = why_kept
        else:
            report.removed.append(removal)
    return report


def _remove(removal: Removal, keep: int, *, index: IndexStore, clusters: ClusterStore, reason: str, by: str) -> str | None:
    """Remove one planned item, unless it changed since the plan: then why it stays."""
    if removal.kind == INDEX_VERSION:
        with index.promotion_lock():  # no promotion or rollback between this look and the removal
            if removal.version.version in protected_index_versions(index, keep):
                return "promoted, or made what a rollback goes back to, since the plan"
            index.retire(removal.version, reason=reason, by=by)
        return None
    if removal.kind == CLUSTERING_VERSION:
        clusters.retire(removal.version, reason=reason, by=by)
        return None
    if removal.mtime_ns is not None:
        try:
            if os.stat(removal.path).st_mtime_ns != removal.mtime_ns:
                return "written since the plan"
        except FileNotFoundError:
            return None
    remove_tree(removal.path)
    return None


def _forget_photos(removal: Removal, *, index: IndexStore, snapshots: TableStore | None, tables: TableStore | None,
                   report: PruneReport) -> None:
    """Remove the planned photos that are still unused now, with no photo cache open meanwhile."""
    root, planned = removal.path, removal.photos
    if snapshots is None or tables is None:
        raise ValueError("removing cached photos needs the snapshots and tables to read what is in use")
    with exclusive_use(root) as alone:
        if not alone:
            report.kept[str(root)] = "a run is using the photo cache: every photo stays this time"
            return
        # What is in use now: every snapshot and index version still there (the plan's others are
        # gone by now), and the current tables, which a retrain may have rewritten since the plan.
        refs, shas = _photos_in_use([p for p in listing(snapshots.root) if _SNAPSHOT.match(p.name)]
                                    + [v.path / "dataset.parquet" for v in index.versions()] + _current_tables(tables))
        now = unused_photos(root, refs, fetched_before=removal.fetched_before, used_sha256s=shas)
        going = UnusedPhotos(planned.sha256s & now.sha256s, planned.references & now.references, 0)
        freed = forget_photos(root, going)
    left = len(planned.sha256s) - len(going.sha256s)
    if left:
        report.kept[str(root)] = f"{left} of the planned photos are in use again since the plan"
    if going.sha256s:
        report.removed.append(replace(removal, name=f"{len(going.sha256s)} photos", bytes=freed, photos=going))


def _current_tables(tables: TableStore) -> list[Path]:
    return [tables.path(name) for name in CURRENT_TABLES]


def _photos_in_use(paths: Iterable[Path]) -> tuple[set[str], frozenset[str]]:
    """The ``photo_ref`` of every row of these Parquet files (those that exist), and their
    ``sha256`` where they have one (the cached_photos table: the bytes its run reads). A file that
    cannot be read raises: its photos would otherwise look unused."""
    refs: set[str] = set()
    shas: set[str] = set()
    for path in paths:
        if not path.is_file():
            continue
        try:
            parquet = pq.ParquetFile(path)
            table = parquet.read(columns=[c for c in ("photo_ref", "sha256") if c in parquet.schema_arrow.names])
            column = table.column("photo_ref")
        except (pa.ArrowException, KeyError) as exc:
            raise OSError(f"cannot read the photos in use from {path}: {exc}") from exc
        refs.update(ref for ref in column.to_pylist() if ref)
        if "sha256" in table.column_names:
            shas.update(sha for sha in table.column("sha256").to_pylist() if sha)
    return refs, frozenset(shas)


def _versions(versions: list[Version], protected: set[int], kind: str, removals: list[Removal]) -> list[Version]:
    kept = []
    for version in versions:
        if version.version in protected:
            kept.append(version)
        else:
            removals.append(Removal(kind, version.name, version.path, tree_bytes(version.path), version))
    return kept


def _files(paths: dict[str, Path], keep: int, protected: set, kind: str, removals: list[Removal]) -> list[str]:
    """Of ``paths`` (by name), the names kept: the ``keep`` newest and the ``protected``; the others
    are added to ``removals`` with their modification time, to be looked at again before removal."""
    kept = []
    for rank, (name, path, mtime_ns) in enumerate(_newest_first(paths)):
        if rank < keep or name in protected:
            kept.append(name)
        else:
            removals.append(Removal(kind, name, path, tree_bytes(path), mtime_ns=mtime_ns))
    return kept


def _newest_first(paths: dict[str, Path]) -> list[tuple[str, Path, int]]:
    """Name, path and modification time, newest first; the file name breaks ties, so the order is stable."""
    stamped = []
    for name, path in paths.items():
        try:
            stamped.append((os.stat(path).st_mtime_ns, path.name, name, path))
        except FileNotFoundError:
            continue
    return [(name, path, mtime_ns) for mtime_ns, _, name, path in sorted(stamped, reverse=True)]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
