"""Immutable numbered versions in a folder (``root/v1/``, ``root/v2/``, ...), and JSON-lines ledgers.

The index store and the clustering store both keep their outputs this way. A version is written to
a staging folder and renamed into place: a reader never sees half a version, an existing version is
never overwritten, and two writers never get the same number (a number once taken, even by a
folder left incomplete or a version retired since, is never reused).

A version is removed only by :meth:`VersionedStore.retire` (``facepipeline prune``): it is renamed
out of the store in one step (a reader lists it whole or not at all, and files already open stay
readable), deleted, and recorded in the store's ``retired.jsonl`` ledger with what it was, when,
by whom and why; asking for it afterwards says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

from facepipeline.errors import FacePipelineError

_VERSION_DIR = re.compile(r"^v(\d+)$")
RETIRED_LEDGER = "retired.jsonl"
REMOVING_PREFIX = ".removing-"
"""What :func:`remove_tree` renames an item to before deleting it (a leftover tells an interrupted removal)."""


@dataclass(frozen=True)
class Version:
    version: int
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return f"v{self.version}"


V = TypeVar("V", bound=Version)


class VersionedStore(Generic[V]):
    """``root/vN/`` folders, each holding a ``manifest.json`` and what :meth:`_publish` wrote."""

    version_type: type[V]
    kind: str
    """What a version is, for messages: "index version", "clustering version"."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[V]:
        """Every complete version, oldest first."""
        return list(reversed(list(self.newest_first())))

    def newest_first(self) -> Iterator[V]:
        """The complete versions, newest first, each manifest read only when it is reached: the
        newest one costs one read however many versions the store holds."""
        for number, path in sorted(self._numbered(), reverse=True):
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except (FileNotFoundError, NotADirectoryError):
                continue  # incomplete, or retired while this listing ran
            yield self.version_type(number, path, manifest)

    def get(self, version: int) -> V:
        path = self.root / f"v{version}"
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError as exc:
            retired = next((r for r in reversed(self.retired()) if r["version"] == version), None)
            if retired is not None:
                raise FacePipelineError(
                    f"{self.kind} v{version} was pruned on {retired['at']} by {retired['by']} ({retired['reason']})"
                ) from exc
            raise FacePipelineError(f"{self.kind} v{version} not found in {self.root}") from exc
        return self.version_type(version, path, manifest)

    def retired(self) -> list[dict]:
        """The versions removed by :meth:`retire`, oldest first."""
        return json_lines(self.root / RETIRED_LEDGER)

    def retire(self, version: V, *, reason: str, by: str) -> int:
        """Remove ``version`` for good and record it in the ledger; returns the bytes freed (0 when
        it was already gone)."""
        if not version.path.is_dir():
            return 0
        size = tree_bytes(version.path)
        record = {
            "version": version.version, "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": by,
            "reason": reason, "bytes": size, "created_at": version.manifest.get("created_at"),
            "run_id": version.manifest.get("run_id"),
        }
        append_json_line(self.root / RETIRED_LEDGER, record)  # first: the number stays taken whatever happens next
        remove_tree(version.path)
        return size

    def named(self, name: str) -> V:
        """The version called ``name`` ("v3")."""
        match = _VERSION_DIR.match(name)
        if match is None:
            raise FacePipelineError(f"not a {self.kind} name: {name!r} (expected v1, v2, ...)")
        return self.get(int(match.group(1)))

    def latest(self) -> V | None:
        return next(self.newest_first(), None)

    def _numbered(self) -> list[tuple[int, Path]]:
        """Every ``vN`` folder, complete or not, with its number."""
        return [(int(m.group(1)), child) for child in listing(self.root) if (m := _VERSION_DIR.match(child.name))]

    def _taken_numbers(self) -> list[int]:
        """Every ``vN`` folder, complete or not, and every retired version: a number once used is never reused."""
        return [number for number, _ in self._numbered()] + [record["version"] for record in self.retired()]

    def _publish(self, write: Callable[[Path], None], manifest: dict) -> V:
        """``write(folder)`` the version's files, then publish them as the next ``vN`` with ``manifest``
        (plus its number and creation time). Safe against concurrent writers."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            write(staging)
            while True:
                number = max(self._taken_numbers(), default=0) + 1
                full_manifest = {**manifest, "version": number, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
                (staging / "manifest.json").write_text(json.dumps(full_manifest, indent=2, sort_keys=True))
                try:
                    os.rename(staging, self.root / f"v{number}")  # fails if vN exists: never overwrite
                except OSError:
                    if (self.root / f"v{number}").exists():
                        continue  # another writer took vN first
                    raise
                return self.get(number)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def listing(folder: Path) -> list[Path]:
    """The entries of ``folder``; none when it does not exist (or is not a folder)."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def tree_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (or of ``path`` itself); 0 when it is gone."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def remove_tree(path: Path) -> None:
    """Delete a file or a folder so that nobody sees it half-deleted: it is renamed to a hidden name
    beside it in one step, then deleted (files a reader already opened stay readable until closed)."""
    doomed = path.with_name(f"{REMOVING_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    if doomed.is_dir():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()


def replace_file(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole under a temporary name beside it, then rename it into place: a reader
    sees the old content or the new, never half of it (text is written as UTF-8)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        staging.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def append_json_line(path: Path, record: dict) -> None:
    """Append one record to a JSON-lines ledger, in a single write (lines never interleave)."""
    with open(path, "a", encoding="utf-8") as ledger:
        ledger.write(json.dumps(record, sort_keys=True) + "\n")


def json_lines(path: Path) -> list[dict]:
    """Every record of a JSON-lines ledger, oldest first; none when it does not exist yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
