"""The embedding stage split by event, so that independent workers can embed events side by side.

Only faces with work to do (``faces_to_embed``) are sharded: an event whose faces are all reused
needs no worker. Each event with work is a shard of its own, until there are more such events than
``max_shards``: then events are packed into that many shards, largest first, each into the shard
with the least work so far (the LPT rule), so one slow shard does not hold up the rest.

A shard is embedded with ``update_embeddings`` like the whole stage; ``combine`` then lays the
shards' rows and the reused rows out in the order of the verified faces, exactly the table that a
single ``update_embeddings`` over all faces gives.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import pyarrow as pa

from facepipeline.embedding_store import EmbeddingReport
from facepipeline.faces import VerifiedFace

NO_EVENT = "no_event"


@dataclass(frozen=True)
class Shard:
    key: str
    """A name made of letters, digits and underscores (an orchestrator's step key can hold it)."""
    event_ids: tuple[str | None, ...]
    face_ids: tuple[str, ...]


def shard_key(event_ids: Sequence[str | None]) -> str:
    """``event_<id>`` for one event (``-`` becomes ``_``), ``events_<first id>_and_<n more>`` for several."""
    names = [re.sub(r"[^A-Za-z0-9_]", "_", event_id or NO_EVENT) for event_id in event_ids]
    return f"event_{names[0]}" if len(names) == 1 else f"events_{names[0]}_and_{len(names) - 1}_more"


def plan_shards(faces: Iterable[VerifiedFace], pending: Iterable[str], max_shards: int, min_faces: int = 1) -> list[Shard]:
    """The pending faces grouped by event into at most ``max_shards`` shards, largest first, and no
    more shards than give each ``min_faces`` on average: a step has a fixed cost (its process start
    and model load in a multiprocess run), which a handful of faces is not worth."""
    if max_shards < 1 or min_faces < 1:
        raise ValueError(f"max_shards and min_faces must be at least 1, got {max_shards} and {min_faces}")
    pending = set(pending)
    by_event: dict[str | None, list[str]] = defaultdict(list)
    for face in faces:
        if face.face_id in pending:
            by_event[face.event_id].append(face.face_id)
    events = sorted(by_event, key=lambda event: (-len(by_event[event]), event or ""))
    n_shards = min(max_shards, len(events), max(1, sum(map(len, by_event.values())) // min_faces))
    bins: list[tuple[int, int, list[str | None]]] = [(0, i, []) for i in range(n_shards)]
    for event in events:  # LPT: each event, largest first, into the bin with the least work so far
        load, index, members = heapq.heappop(bins)
        members.append(event)
        heapq.heappush(bins, (load + len(by_event[event]), index, members))
    shards = [
        Shard(shard_key(members), tuple(members), tuple(face_id for event in members for face_id in by_event[event]))
        for _, _, members in sorted(bins, key=lambda item: item[1])
    ]
    return sorted(shards, key=lambda shard: -len(shard.face_ids))


def combine(parts: Sequence[pa.Table], faces: Sequence[VerifiedFace]) -> pa.Table:
    """One row per face of ``faces``, in their order, from tables that together hold each face once."""
    table = pa.concat_tables(parts)
    ids = table.column("face_id").to_pylist()
    position = {face_id: i for i, face_id in enumerate(ids)}
    if len(position) != len(ids):
        raise ValueError("a face appears in two shards")
    missing = [face.face_id for face in faces if face.face_id not in position]
    if missing or len(ids) != len(faces):
        raise ValueError(f"the shards hold {len(ids)} rows for {len(faces)} faces ({len(missing)} missing)")
    return table.take(pa.array([position[face.face_id] for face in faces], type=pa.int64()))


def total_report(reports: Iterable[EmbeddingReport]) -> EmbeddingReport:
    """The reports of the shards added up (seconds: the sum of the shards' own times)."""
    total = EmbeddingReport()
    for report in reports:
        for field in fields(EmbeddingReport):
            if field.name == "failure_reasons":
                for code, count in report.failure_reasons.items():
                    total.failure_reasons[code] = total.failure_reasons.get(code, 0) + count
            else:
                setattr(total, field.name, getattr(total, field.name) + getattr(report, field.name))
    return total
