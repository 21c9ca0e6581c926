"""Photo cache throughput: cold fetches at several concurrencies from a slow local server, then a warm rerun.

A real HTTP/1.1 server (stdlib ``ThreadingHTTPServer``, keep-alive) runs in its own process on
127.0.0.1 and serves real LFW photos from ``../shared/data/faces`` (read where they are, never
copied). Every answer waits a time-to-first-byte before its status line, drawn per photo from
``--latency-ms`` (uniform, fixed by a hash of the path, so every concurrency level waits exactly
as long in total); ``--bandwidth-mbit`` optionally caps each connection's sending rate. The server
counts requests, bytes sent, and the peak of open connections and of requests in flight.

What is timed: ``facepipeline.photos.PhotoCache.fetch_all`` over the same ``--photos`` URLs (the
project's own cache: bounded thread pool, urllib3 pool, retries, sha256, header check, atomic
store, SQLite manifest), once per concurrency level (``--levels``, plus the pipeline's default,
``ArtifactStoreResource.fetch_concurrency``), each into a fresh, empty cache: photos/s and MB/s
(10^6 bytes) as ratios to concurrency 1 of the same run, next to the rate the latency alone
allows (concurrency / mean latency). A level whose server-side peak of connections or requests in
flight exceeds its setting fails the run. Then the default level's cache is opened again, as a
new run would, and fetches the same URLs: the warm rerun must make no request and fetch no byte,
on the cache's count and on the server's; otherwise the run fails (exit status 1).

Progress goes to stderr, results to stdout; the last line is
``cold_speedup_vs_serial=X.X warm_bytes=0 warm_requests=0``: photos/s at the default concurrency
over photos/s at concurrency 1, and what the warm rerun fetched (bytes) and asked (requests, as
the server saw them).

    uv run --frozen python bench/photo_cache.py [--photos 1000] [--levels 1,4,8,16,32]
        [--latency-ms 30-80] [--bandwidth-mbit 0] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHUNK = 16 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the server (its own process) -----------------------------------------------------------------
def latency_s(path: str, latency_ms: tuple[float, float]) -> float:
    """Time to first byte of ``path``: uniform in the range, fixed per path."""
    low, high = latency_ms
    fraction = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") / 2**32
    return (low + fraction * (high - low)) / 1000


class Stats:
    """What the server saw; guarded by one lock, read and reset over the control pipe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = self.bytes = self.not_found = 0
        self.peak_open = self.open
        self.peak_in_flight = self.in_flight

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "bytes": self.bytes, "not_found": self.not_found, "open": self.open,
                    "in_flight": self.in_flight, "peak_open": self.peak_open, "peak_in_flight": self.peak_in_flight}


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs when 32 clients connect at once

    def __init__(self, root: Path, latency_ms: tuple[float, float], bandwidth_bps: float) -> None:
        self.root, self.latency_ms, self.bandwidth_bps = root, latency_ms, bandwidth_bps
        self.stats = Stats()
        super().__init__((HOST, 0), SlowHandler)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up is not worth a traceback


class SlowHandler(BaseHTTPRequestHandler):
    server: SlowServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a CDN or Supabase Storage answers
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed
    # ACK of the headers (40 ms on Linux) on a kept-alive connection. Real servers set TCP_NODELAY.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        stats = self.server.stats
        with stats.lock:
            stats.open += 1
            stats.peak_open = max(stats.peak_open, stats.open)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.stats.lock:
                self.server.stats.open -= 1

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        stats = self.server.stats
        with stats.lock:
            stats.requests += 1
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            self._answer()
        finally:
            with stats.lock:
                stats.in_flight -= 1

    def _answer(self) -> None:
        path = unquote(urlsplit(self.path).path)
        target = (self.server.root / path.lstrip("/")).resolve()
        if ".." in path or not target.is_relative_to(self.server.root) or not target.is_file():
            with self.server.stats.lock:
                self.server.stats.not_found += 1
            self.send_error(404)
            return
        data = target.read_bytes()
        time.sleep(latency_s(path, self.server.latency_ms))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        rate = self.server.bandwidth_bps
        started = time.perf_counter()
        for offset in range(0, len(data), CHUNK):
            chunk = data[offset:offset + CHUNK]
            self.wfile.write(chunk)
            with self.server.stats.lock:
                self.server.stats.bytes += len(chunk)
            if rate:
                ahead = (offset + len(chunk)) * 8 / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


def serve(root: Path, latency_ms: tuple[float, float], bandwidth_bps: float, control) -> None:
    """The server process: HTTP in a thread, commands ("stats", "reset", "stop") on ``control``."""
    server = SlowServer(root, latency_ms, bandwidth_bps)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    control.send(server.server_address[1])
    while True:
        command = control.recv()
        if command == "reset":
            with server.stats.lock:
                server.stats.reset()
        elif command == "stop":
            server.shutdown()
            server.server_close()
            control.send("stopped")
            return
        control.send(server.stats.snapshot())


class ServerProcess:
    def __init__(self, root: Path, latency_ms: tuple[float, float], bandwidth_bps: float) -> None:
        context = multiprocessing.get_context("fork")  # started before this process has any thread
        self._control, child_end = context.Pipe()
        self.process = context.Process(target=serve, args=(root, latency_ms, bandwidth_bps, child_end), daemon=True)
        self.process.start()
        if not self._control.poll(15):
            self.process.kill()
            raise SystemExit("photo server did not start")
        self.port = self._control.recv()
        self.base_url = f"http://{HOST}:{self.port}"

    def ask(self, command: str) -> dict:
        self._control.send(command)
        return self._control.recv()

    def quiet(self, timeout_s: float = 5.0) -> None:
        """Wait until the previous client's connections are closed, then zero the counters."""
        deadline = time.monotonic() + timeout_s
        while self.ask("stats")["open"] and time.monotonic() < deadline:
            time.sleep(0.02)
        self.ask("reset")

    def stop(self) -> None:
        if self.process.is_alive():
            self.ask("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# --- the client: the project's own cache ----------------------------------------------------------
def select_photos(data: Path, count: int) -> list[str]:
    """``count`` photos spread evenly over the sorted list of all (so over all people)."""
    every = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.jpg"))
    if count > len(every):
        raise SystemExit(f"--photos {count}: only {len(every)} photos under {data}")
    return [every[i * len(every) // count] for i in range(count)]


def fetch(urls: list[str], cache_dir: Path, concurrency: int, label: str) -> dict:
    from facepipeline.photos import PhotoCache, summarize

    def progress(done: int, total: int, failed: int) -> None:
        if done % 250 == 0 or done == total:
            log(f"  {label}: {done}/{total}, {failed} failed, {time.perf_counter() - started:.1f} s")

    with PhotoCache(cache_dir, concurrency=concurrency) as cache:
        started = time.perf_counter()
        records = cache.fetch_all(urls, progress=progress)
        seconds = time.perf_counter() - started
    summary = summarize(records)
    return {"seconds": seconds, "ok": summary.ok, "failed": summary.failed, "fetched": summary.fetched,
            "fetched_bytes": summary.fetched_bytes, "attempts": summary.attempts, "from_cache": summary.from_cache,
            "errors": sorted({r.error for r in records if not r.ok})[:5]}


def default_concurrency() -> int:
    from resources.artifacts import ArtifactStoreResource

    return ArtifactStoreResource.model_fields["fetch_concurrency"].default


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    low_ms, high_ms = float(low), float(high or low)
    if not 0 <= low_ms <= high_ms:
        raise argparse.ArgumentTypeError(f"not a latency range in ms: {text!r}")
    return low_ms, high_ms


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "faces")
    parser.add_argument("--photos", type=int, default=1000, help="distinct photos fetched per level")
    parser.add_argument("--levels", default="1,4,8,16,32", help="concurrencies (the default one is added)")
    parser.add_argument("--latency-ms", type=parse_range, default=(30.0, 80.0), help="time to first byte, LOW-HIGH")
    parser.add_argument("--bandwidth-mbit", type=float, default=0.0, help="per-connection cap, 0 = none")
    parser.add_argument("--repeats", type=int, default=1, help="cold fetches per level (interleaved, median)")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    data = args.data.expanduser().resolve()
    paths = select_photos(data, args.photos)
    server = ServerProcess(data, args.latency_ms, args.bandwidth_mbit * 1e6)
    work = Path(tempfile.mkdtemp(prefix="facepipeline-bench-photo-cache-"))
    try:
        return run(args, server, paths, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, server: ServerProcess, paths: list[str], work: Path) -> int:
    urls = [f"{server.base_url}/{quote(p)}" for p in paths]
    default = default_concurrency()
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()} | {1, default})
    mean_latency = statistics.fmean(latency_s("/" + p, args.latency_ms) for p in paths)
    log(f"{len(urls)} photos from {args.data} at {server.base_url}; time to first byte {args.latency_ms[0]:g}-"
        f"{args.latency_ms[1]:g} ms (mean {mean_latency * 1000:.1f} ms); bandwidth "
        f"{f'{args.bandwidth_mbit:g} Mbit/s per connection' if args.bandwidth_mbit else 'not capped'}; "
        f"levels {levels}, default {default}")

    runs: dict[int, list[dict]] = {level: [] for level in levels}
    failures: list[str] = []
    for repeat in range(args.repeats):
        for level in levels:
            cache_dir = work / f"c{level}-r{repeat}"
            server.quiet()
            result = fetch(urls, cache_dir, level, f"concurrency {level:>2} (repeat {repeat + 1}/{args.repeats})")
            result["server"] = server.ask("stats")
            runs[level].append(result)
            if result["ok"] != len(urls) or result["fetched"] != len(urls):
                failures.append(f"concurrency {level}: {result['ok']}/{len(urls)} ok, {result['fetched']} fetched; {result['errors']}")
            peak = max(result["server"]["peak_open"], result["server"]["peak_in_flight"])
            if peak > level:
                failures.append(f"concurrency {level}: the server saw {peak} connections/requests at once")
            if level != default or repeat != args.repeats - 1:
                shutil.rmtree(cache_dir)

    # The warm rerun: the default level's cache, opened again as the next run would.
    server.quiet()
    warm = fetch(urls, work / f"c{default}-r{args.repeats - 1}", default, "warm rerun")
    warm["server"] = server.ask("stats")
    warm_bytes = max(warm["fetched_bytes"], warm["server"]["bytes"])
    warm_requests = max(warm["attempts"], warm["server"]["requests"])
    if warm_bytes or warm_requests or warm["from_cache"] != len(urls):
        failures.append(f"warm rerun: {warm_requests} requests, {warm_bytes} bytes, {warm['from_cache']}/{len(urls)} from cache")

    figures = summarise(runs, warm, len(urls), default, mean_latency, args)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        log(f"wrote {args.json}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"cold_speedup_vs_serial={figures['cold_speedup_vs_serial']:.1f} warm_bytes={warm_bytes} warm_requests={warm_requests}")
    return 1 if failures else 0


def summarise(runs: dict[int, list[dict]], warm: dict, photos: int, default: int, mean_latency: float,
              args: argparse.Namespace) -> dict:
    rows = {}
    for level, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        nbytes = results[-1]["fetched_bytes"]
        rows[level] = {
            "concurrency": level, "seconds": [round(r["seconds"], 3) for r in results], "median_s": round(seconds, 3),
            "photos_per_s": photos / seconds, "mb_per_s": nbytes / 1e6 / seconds, "bytes": nbytes,
            "latency_bound_photos_per_s": min(level, photos) / mean_latency,
            "peak_connections": max(r["server"]["peak_open"] for r in results),
            "peak_requests_in_flight": max(r["server"]["peak_in_flight"] for r in results),
            "server_requests": results[-1]["server"]["requests"],
        }
    serial = rows[1]["photos_per_s"]
    for row in rows.values():
        row["ratio_vs_serial"] = row["photos_per_s"] / serial
        row["share_of_latency_bound"] = row["photos_per_s"] / row["latency_bound_photos_per_s"]
    return {
        "photos": photos, "data": str(args.data), "latency_ms": list(args.latency_ms), "mean_latency_ms": mean_latency * 1000,
        "bandwidth_mbit_per_connection": args.bandwidth_mbit, "repeats": args.repeats, "default_concurrency": default,
        "levels": list(rows.values()),
        "warm": {"seconds": round(warm["seconds"], 3), "from_cache": warm["from_cache"], "client_attempts": warm["attempts"],
                 "client_fetched_bytes": warm["fetched_bytes"], "server_requests": warm["server"]["requests"],
                 "server_bytes": warm["server"]["bytes"]},
        "cold_speedup_vs_serial": rows[default]["photos_per_s"] / serial,
    }


def report(figures: dict) -> None:
    print(f"{figures['photos']} photos, {figures['levels'][0]['bytes'] / 1e6:.1f} MB; time to first byte "
          f"{figures['latency_ms'][0]:g}-{figures['latency_ms'][1]:g} ms (mean {figures['mean_latency_ms']:.1f}); "
          f"bandwidth cap {figures['bandwidth_mbit_per_connection'] or 'none'}")
    print(f"{'concurrency':>11s} {'seconds':>8s} {'photos/s':>9s} {'MB/s':>6s} {'x serial':>8s} "
          f"{'latency-bound':>13s} {'share':>6s} {'peak conns':>10s} {'peak in flight':>14s}")
    for row in figures["levels"]:
        mark = " (default)" if row["concurrency"] == figures["default_concurrency"] else ""
        print(f"{row['concurrency']:>11d} {row['median_s']:8.2f} {row['photos_per_s']:9.1f} {row['mb_per_s']:6.2f} "
              f"{row['ratio_vs_serial']:8.1f} {row['latency_bound_photos_per_s']:13.1f} {row['share_of_latency_bound']:6.0%} "
              f"{row['peak_connections']:>10d} {row['peak_requests_in_flight']:>14d}{mark}")
    warm = figures["warm"]
    print(f"warm rerun (concurrency {figures['default_concurrency']}, the same cache reopened): {warm['seconds']:.2f} s, "
          f"{warm['from_cache']} from cache; client: {warm['client_attempts']} fetch attempts, "
          f"{warm['client_fetched_bytes']} bytes; server: {warm['server_requests']} requests, {warm['server_bytes']} bytes")


if __name__ == "__main__":
    sys.exit(main())
