"""Every face against every person's gallery faces, exactly, in bounded memory.

An evaluation (:mod:`facepipeline.metrics`) and a calibration (:mod:`facepipeline.calibration`)
read the same few numbers per face, after splitting each person's faces into gallery and held-out
probes (:func:`split_gallery_probes`):

* ``own``: the similarity of the face to its own person's nearest gallery face;
* ``stranger[g]``: its similarity to the nearest gallery face of any *other* person of column
  group ``g`` (the calibration's data levels; one group for an evaluation), and overall the person
  it would be mistaken for.

They are computed with matrix products over chunks of faces (``_BLOCK`` similarities at a time),
never holding the faces x people table, so memory stays flat as the gallery grows.

A :class:`ScoreCache` keeps, per face, its ``own`` score and, per group, its ``TOP_K`` best other
people with their scores and a *bound* (no other person of the group, unlisted, scores above it).
Everything is keyed by content: a face by the exact bytes of its vector and its person, a person
(column) by who they are, the exact vectors of their gallery faces and their group. On the next
evaluation, a face whose vector and person are unchanged keeps its listed people that are
unchanged, gains the scores of the people that changed (computed for every face: one column each;
its own person's among them when that person's gallery changed, which gives its own score anew),
and is answered from the list when its best entry is still above its bound: exactly the number a
fresh computation gives (up to BLAS's rounding, ~1e-7). Any other face is computed again in full. Adding 25 faces to 5,000 then
costs the 25 new rows and the columns of the people they join (a face joining a person with 500
faces does not make those 500 faces new: measured, 0.17 M face-person scores instead of 1.5 M).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipeline.index import vector_digests

TOP_K = 4
"""Best other people kept per face and group in the cache."""
_BLOCK = 1 << 22
"""Similarities computed at once (16 MB of float32): faces are taken in chunks of this many / gallery faces."""
_NONE = -1


@dataclass(frozen=True)
class EvaluationConfig:
    test_fraction: float = 0.2
    seed: int = 42
    target_far: float = 0.001


DEFAULT_CONFIG = EvaluationConfig()

def split_gallery_probes(
    person_ids: Sequence[str], config: EvaluationConfig, face_ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of gallery and probe faces: per person, a share held out by a seeded hash of the face id."""
    face_ids = face_ids if face_ids is not None else [str(row) for row in range(len(person_ids))]
    rows_by_person: dict[str, list[int]] = defaultdict(list)
    for row, person in enumerate(person_ids):
        rows_by_person[person].append(row)
    gallery, probes = [], []
    for rows in rows_by_person.values():
        if len(rows) < 2:
            gallery.extend(rows)
            continue
        rows = sorted(rows, key=lambda row: hashlib.sha256(f"{config.seed}:{face_ids[row]}".encode()).digest())
        n_probe = min(len(rows) - 1, max(1, round(len(rows) * config.test_fraction)))
        probes.extend(rows[:n_probe])
        gallery.extend(rows[n_probe:])
    return np.array(sorted(gallery), dtype=np.int64), np.array(sorted(probes), dtype=np.int64)


@dataclass(frozen=True)
class GalleryScores:
    """Per face (row, in the order given): its own person's score and its best other people's."""

    gallery: np.ndarray
    """Row numbers of the gallery faces."""
    probes: np.ndarray
    """Row numbers of the held-out faces."""
    people: np.ndarray
    """The person of each column (every person has at least one gallery face)."""
    own: np.ndarray
    """The column of each row's own person."""
    groups: np.ndarray
    """The group of each column (all 0 unless grouped, see :func:`gallery_scores`)."""
    own_score: np.ndarray
    """(faces,) float32: similarity to the own person's nearest gallery face (a gallery face finds itself)."""
    stranger: np.ndarray
    """(faces, groups) float32: best similarity to another person of each group (-inf: none)."""
    stranger_column: np.ndarray
    """(faces,) the column of the best other person of any group (-1: none)."""
    computed: int = 0
    """(face, person) scores computed for this table; the rest came from the cache."""

    @property
    def pairs(self) -> int:
        return len(self.own) * len(self.people)

    @property
    def reused(self) -> int:
        return self.pairs - self.computed

    @property
    def best_stranger(self) -> np.ndarray:
        """(faces,) best similarity to any other person: each face asked as a stranger."""
        if self.stranger.shape[1] == 0:
            return np.full(len(self.own), -np.inf, dtype=np.float32)
        return self.stranger.max(axis=1)

    def nearest(self, rows: np.ndarray) -> np.ndarray:
        """The column of each row's nearest person (on a tie, the lower column, as an argmax)."""
        own, other = self.own[rows], self.stranger_column[rows]
        own_score, other_score = self.own_score[rows], self.best_stranger[rows]
        mine = (other < 0) | (own_score > other_score) | ((own_score == other_score) & (own < other))
        return np.where(mine, own, other)


@dataclass
class _Lists:
    """Per face and group: the best other people (columns, scores; best first) and the bound."""

    columns: np.ndarray  # (faces, groups, TOP_K) int64, _NONE padded
    scores: np.ndarray  # (faces, groups, TOP_K) float32, -inf padded
    bound: np.ndarray  # (faces, groups) float32: unlisted people score at most this (-inf: all listed)

    @classmethod
    def empty(cls, faces: int, groups: int) -> _Lists:
        return cls(np.full((faces, groups, TOP_K), _NONE, dtype=np.int64),
                   np.full((faces, groups, TOP_K), -np.inf, dtype=np.float32),
                   np.full((faces, groups), -np.inf, dtype=np.float32))

    def answered(self) -> np.ndarray:
        """(faces,) whether every group's best listed person is the group's best of all."""
        top = self.scores[:, :, 0]
        return np.all((top >= self.bound) | (np.isneginf(self.bound)), axis=1)


class ScoreCache:
    """The last table's per-face lists, in one file, with the content keys of its faces and people
    (see the module's docstring). Replaced atomically; a file that cannot be read is a miss."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, np.ndarray] | None:
        names = ("rows", "own_people", "own_score", "columns", "column_people", "list_columns", "list_scores", "bound")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                cached = {name: data[name] for name in names}
        except (OSError, KeyError, ValueError, EOFError):
            return None
        faces = len(cached["rows"])
        if (cached["list_columns"].shape[0] != faces or cached["list_columns"].shape[2:] != (TOP_K,)
                or cached["list_scores"].shape != cached["list_columns"].shape or cached["bound"].shape != cached["list_columns"].shape[:2]
                or cached["own_people"].shape != (faces,) or cached["own_score"].shape != (faces,)
                or cached["column_people"].shape != cached["columns"].shape):
            return None
        return cached

    def save(self, **arrays: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.stem}-{os.getpid()}.npz")
        with open(staging, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(staging, self.path)


def gallery_scores(
    vectors: np.ndarray,
    person_ids: Sequence[str],
    config: EvaluationConfig = DEFAULT_CONFIG,
    face_ids: Sequence[str] | None = None,
    *,
    group_by: Callable[[np.ndarray], np.ndarray] | None = None,
    cache: ScoreCache | None = None,
    reuse: bool = True,
) -> GalleryScores:
    """The scores of :class:`GalleryScores` for these faces and the split of ``config``.

    ``group_by`` maps each person's number of faces (in these faces) to their group number
    (default: one group). With a ``cache``, faces whose vector and person's gallery are unchanged
    are answered from it (unless ``reuse`` is false), and the new lists are kept in it.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    gallery, probes = split_gallery_probes(person_ids, config, face_ids)
    persons = np.asarray(person_ids, dtype=object)
    people, own = np.unique(persons, return_inverse=True) if len(persons) else (np.array([], dtype=object), np.array([], dtype=np.int64))
    own = own.astype(np.int64)
    counts = np.bincount(own, minlength=len(people))
    groups = np.asarray(group_by(counts), dtype=np.int64) if group_by is not None else np.zeros(len(people), dtype=np.int64)
    n_groups = int(groups.max()) + 1 if len(groups) else 1
    # Gallery rows grouped by person (column), for one segment maximum per column.
    order = gallery[np.argsort(own[gallery], kind="stable")]
    starts = np.searchsorted(own[order], np.arange(len(people)))
    members = np.split(order, starts[1:]) if len(people) else []
    row_keys = vector_digests(vectors).astype("S32")
    column_keys = np.array(
        [hashlib.blake2b(b"%d:" % group + b"".join(sorted(row_keys[rows].tolist())), digest_size=16).hexdigest()
         for rows, group in zip(members, groups.tolist(), strict=True)], dtype="S32",
    )
    person_keys = np.array([hashlib.blake2b(str(person).encode(), digest_size=16).hexdigest() for person in people.tolist()], dtype="S32")
    scan = _Scan(vectors, members, own, groups, n_groups)

    own_score = np.full(len(vectors), np.nan, dtype=np.float32)
    lists = _Lists.empty(len(vectors), n_groups)
    fresh = np.ones(len(vectors), dtype=bool)
    computed = 0
    cached = cache.load() if cache is not None and reuse else None
    if cached is not None and cached["list_columns"].shape[1] == n_groups and len(people):
        kept, changed = _reuse(cached, row_keys, person_keys, column_keys, scan, own_score, lists)
        fresh, computed = ~kept, int(kept.sum()) * changed
    rows = np.flatnonzero(fresh)
    computed += len(rows) * len(people)
    scan.rows(rows, np.arange(len(people)), own_score, lists, merge=False)
    if cache is not None:
        cache.save(rows=row_keys, own_people=person_keys[own] if len(people) else np.array([], dtype="S32"),
                   own_score=own_score, columns=column_keys, column_people=person_keys, list_columns=lists.columns, list_scores=lists.scores,
                   bound=lists.bound)
    stranger = lists.scores[:, :, 0].copy()
    best_group = stranger.argmax(axis=1) if n_groups else np.zeros(len(vectors), dtype=np.int64)
    stranger_column = lists.columns[np.arange(len(vectors)), best_group, 0] if len(vectors) else np.array([], dtype=np.int64)
    return GalleryScores(gallery=gallery, probes=probes, people=people, own=own, groups=groups, own_score=own_score,
                         stranger=stranger, stranger_column=stranger_column, computed=computed)


def _reuse(
    cached: dict, row_keys: np.ndarray, person_keys: np.ndarray, column_keys: np.ndarray, scan: _Scan, own_score: np.ndarray, lists: _Lists
) -> tuple[np.ndarray, int]:
    """Fill ``own_score`` and ``lists`` for the faces the cache answers: which ones, and how many people were new to them."""
    # A column is the same when the same person has the same gallery faces: a person merged into
    # another can take over exactly the other's old gallery, which is then a new column.
    column_at = {column: i for i, column in enumerate(zip(column_keys.tolist(), person_keys.tolist(), strict=True))}
    old_columns = zip(cached["columns"].tolist(), cached["column_people"].tolist(), strict=True)
    now = np.array([column_at.get(column, _NONE) for column in old_columns] + [_NONE], dtype=np.int64)  # old column -> new
    row_at = {key: i for i, key in enumerate(cached["rows"].tolist())}
    was = np.array([row_at.get(key, _NONE) for key in row_keys.tolist()], dtype=np.int64)
    candidates = np.flatnonzero(was >= 0)
    candidates = candidates[cached["own_people"][was[candidates]] == person_keys[scan.own[candidates]]]  # same vector, same person
    if not len(candidates):
        return np.zeros(len(row_keys), dtype=bool), 0
    old = was[candidates]
    own_score[candidates] = cached["own_score"][old]  # anew below where the person's gallery changed
    # The listed people that are unchanged, renumbered; the others dropped (the bound still holds).
    listed = now[cached["list_columns"][old]]
    scores = np.where(listed >= 0, cached["list_scores"][old], -np.inf).astype(np.float32)
    by_score = np.argsort(-scores, axis=2, kind="stable")
    lists.columns[candidates] = np.take_along_axis(listed, by_score, axis=2)
    lists.scores[candidates] = np.take_along_axis(scores, by_score, axis=2)
    lists.bound[candidates] = cached["bound"][old]
    # People who are new or changed: their scores for these faces, merged into the lists (a face's
    # own person, when changed, gives its own score instead: it is never its own stranger).
    unchanged = np.zeros(len(column_keys), dtype=bool)
    unchanged[now[now >= 0]] = True
    changed = np.flatnonzero(~unchanged)
    scan.rows(candidates, changed, own_score, lists, merge=True)
    kept = np.zeros(len(row_keys), dtype=bool)
    kept[candidates] = lists.answered()[candidates]
    return kept, len(changed)


class _Scan:
    """Similarities of chosen faces to chosen people's gallery faces, chunk by chunk, reduced to lists."""

    def __init__(self, vectors: np.ndarray, members: list[np.ndarray], own: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
        self.vectors, self.members, self.own, self.groups, self.n_groups = vectors, members, own, groups, n_groups

    def rows(self, rows: np.ndarray, columns: np.ndarray, own_score: np.ndarray | None, lists: _Lists, *, merge: bool) -> None:
        """For ``rows``, over the people ``columns``: own scores (when ``own_score`` is given) and the
        lists (replaced, or with ``merge`` combined with what they hold)."""
        if not len(rows) or not len(columns):
            return
        gallery = self.vectors[np.concatenate([self.members[c] for c in columns])]
        offsets = np.cumsum([0] + [len(self.members[c]) for c in columns[:-1]])
        position = np.full(len(self.members), _NONE, dtype=np.int64)
        position[columns] = np.arange(len(columns))
        in_group = [np.flatnonzero(self.groups[columns] == g) for g in range(self.n_groups)]
        chunk = max(1, _BLOCK // max(1, len(gallery), len(columns)))
        for start in range(0, len(rows), chunk):
            these = rows[start : start + chunk]
            per_person = np.maximum.reduceat(self.vectors[these] @ gallery.T, offsets, axis=1)
            mine = position[self.own[these]]
            has = np.flatnonzero(mine >= 0)
            if own_score is not None:
                own_score[these[has]] = per_person[has, mine[has]]
            per_person[has, mine[has]] = -np.inf  # a face is never a stranger to itself
            for g, group_columns in enumerate(in_group):
                if len(group_columns):
                    self._list(these, g, per_person[:, group_columns], columns[group_columns], lists, merge)

    @staticmethod
    def _list(rows: np.ndarray, group: int, scores: np.ndarray, columns: np.ndarray, lists: _Lists, merge: bool) -> None:
        if merge:  # the new people beside the listed ones
            scores = np.concatenate([lists.scores[rows, group], scores], axis=1)
            columns = np.concatenate([lists.columns[rows, group], np.broadcast_to(columns, (len(rows), len(columns)))], axis=1)
        else:
            columns = np.broadcast_to(columns, scores.shape)
        keep = min(TOP_K + 1, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep] if scores.shape[1] > keep else np.broadcast_to(np.arange(keep), (len(rows), keep))
        top_scores = np.take_along_axis(scores, top, axis=1)
        ranked = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, ranked, axis=1), np.take_along_axis(top_scores, ranked, axis=1)
        top_columns = np.take_along_axis(columns, top, axis=1)
        listed = min(TOP_K, keep)
        dropped = top_scores[:, TOP_K] if keep > TOP_K else np.full(len(rows), -np.inf, dtype=np.float32)
        valid = np.isfinite(top_scores[:, :listed])
        lists.scores[rows, group, :listed] = np.where(valid, top_scores[:, :listed], -np.inf)
        lists.columns[rows, group, :listed] = np.where(valid, top_columns[:, :listed], _NONE)
        lists.scores[rows, group, listed:] = -np.inf
        lists.columns[rows, group, listed:] = _NONE
        bound = np.maximum(lists.bound[rows, group], dropped) if merge else dropped
        lists.bound[rows, group] = bound
