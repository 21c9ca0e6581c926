"""The embedding journal: rows of the embedding stage kept on disk as they are made.

The ``face_embeddings`` table is written once, when the stage ends. A retrain killed in the middle
of embedding (SIGKILL, OOM, a lost machine) would lose every face it embedded; the journal keeps
them. ``update_embeddings`` appends its new rows, a batch at a time, each batch one Parquet part
file written under a temporary name and renamed into place (``os.replace``): a reader sees whole
parts or none, and a kill leaves at most a stray temporary file, which is ignored and removed
later. Only rows worth keeping are journalled: embedded, or failed in a way the same inputs would
repeat (``PERMANENT_FAILURES``); a passing failure is retried anyway.

The next run reads the journal as one more source of reusable rows, matched like the published
table's rows by ``embed_key`` (the photo's sha256, the verified box and the stage fingerprint): a
face is embedded again only when none of them holds its key. So a rerun embeds exactly the faces
the killed run had not journalled, and its rows are those the killed run would have written.

A journal row is pruned once a published ``face_embeddings`` table holds its key (it is reusable
from there): after the retrain job's embedding step succeeds, and at the start of every embedding
stage (which also merges the parts into one and drops the parts of another stage fingerprint,
which no face could reuse). Plain files and Parquet, no database: the stage's steps may run in
several processes at once, each writing parts of its own.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

JOURNAL_FLUSH_ROWS = 64
"""Rows per part: a kill loses at most this many faces' work (about a second of it on a CPU)."""
_PART = re.compile(r"^part-(?P<stage>[0-9a-f]{16})-\d+-\d+-[0-9a-f]{8}\.parquet$")


class EmbeddingJournal:
    """The journal of one embedding stage (one stage fingerprint) under ``root``; with no
    fingerprint, the parts of every stage (to prune them, not to append)."""

    def __init__(self, root: Path, stage_fingerprint: str | None, flush_rows: int = JOURNAL_FLUSH_ROWS) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, got {flush_rows}")
        self.root = Path(root)
        self.stage = stage_fingerprint[:16] if stage_fingerprint else None
        self.flush_rows = flush_rows

    def parts(self) -> list[Path]:
        """This stage's complete parts, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if (m := _PART.match(p.name)) and self.stage in (None, m["stage"])]
        return sorted(found, key=lambda p: (int(p.name.split("-")[2]), p.name))

    def read(self) -> pa.Table | None:
        """Every journalled row of this stage (a key journalled twice: its latest row last), or None."""
        tables = []
        for part in self.parts():
            try:
                tables.append(pq.read_table(part))
            except (OSError, pa.ArrowException):  # a damaged part costs its faces' work, not the run
                continue
        if not tables:
            return None
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowException, TypeError, ValueError):
            return None  # parts of different layouts: start over rather than guess

    def rows(self) -> int:
        """How many rows the journal holds (from the parts' footers, without reading them)."""
        total = 0
        for part in self.parts():
            try:
                total += pq.ParquetFile(part).metadata.num_rows
            except (OSError, pa.ArrowException):
                continue
        return total

    def append(self, rows: pa.Table) -> Path | None:
        """One new part holding ``rows``, there whole or not at all."""
        if rows.num_rows == 0:
            return None
        if self.stage is None:
            raise ValueError("a journal opened for every stage cannot take new rows")
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"part-{self.stage}-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        staging = self.root / f".{name}.tmp"
        try:
            pq.write_table(rows, staging)
            os.replace(staging, self.root / name)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        return self.root / name

    def prune(self, published_keys: Iterable[str], *, compact: bool = False) -> int:
        """Drop the rows whose key a published table holds; returns how many were dropped.

        With ``compact`` (only where no step of this stage is writing: before its steps start) the
        rest is merged into one part, keys journalled twice keep their latest row, and the parts of
        other stages and stray temporary files are removed.
        """
        if compact and self.stage is None:
            raise ValueError("compacting needs the stage fingerprint")
        if compact:
            self._remove_strays()
        parts = self.parts()
        if not parts:
            return 0
        keys = pa.array(list(set(published_keys)), type=pa.string())
        dropped = 0
        if not compact:
            for part in parts:  # each part on its own: a part being written now is not among them
                table = pq.read_table(part)
                kept = table.filter(pc.invert(pc.is_in(table.column("embed_key"), value_set=keys)))
                dropped += table.num_rows - kept.num_rows
                if kept.num_rows == 0:
                    part.unlink(missing_ok=True)
                elif kept.num_rows < table.num_rows:
                    staging = part.with_name(f".{part.name}.tmp")
                    pq.write_table(kept, staging)
                    os.replace(staging, part)
            return dropped
        table = self.read()
        if table is None:
            for part in parts:
                part.unlink(missing_ok=True)
            return 0
        kept = table.filter(pc.invert(pc.is_in(table.column("embed_key"), value_set=keys)))
        dropped = table.num_rows - kept.num_rows
        kept = _latest_per_key(kept)
        if kept.num_rows:
            self.append(kept)  # the merged part first: a kill now leaves duplicates, never a loss
        for part in parts:
            part.unlink(missing_ok=True)
        return dropped

    def clear(self) -> None:
        for part in self.parts():
            part.unlink(missing_ok=True)

    def _remove_strays(self) -> None:
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            match = _PART.match(path.name)
            if path.name.startswith(".part-") or (match and match["stage"] != self.stage):
                path.unlink(missing_ok=True)


def _latest_per_key(table: pa.Table) -> pa.Table:
    keys = table.column("embed_key").to_pylist()
    last = {key: i for i, key in enumerate(keys)}
    if len(last) == len(keys):
        return table
    return table.take(pa.array(sorted(last.values()), type=pa.int64()))
