"""Load test: the whole retrain, end to end, on 2,500 / 5,000 / 10,000 distinct photos; wall time and peak memory.

The photos are built at bench time in a throw-away folder under /tmp (never in the repository),
one sub-folder per person: every LFW photo of ``../shared/data/faces`` (408 people, 4,803) and
``../shared/data/distractors`` (712 people, 1,616), plus deterministic variants until there are
``--photos`` (10,000): each distractor photo once (so every distractor has at least 4 photos and
passes the default minimum of 3), then ``faces/`` photos chosen by a hash. A variant is a
horizontal flip (JPEG quality 92), a 4 % zoom shifted by a few pixels (quality 90), or a re-encode
at quality 75. Every file's sha256 is checked to be distinct, so the content-addressed cache and
the embedding stage reuse nothing. A smaller size is a subset of whole people (hard links),
people taken in a fixed hashed order, so 2,500 is inside 5,000 inside 10,000.

Each size then runs in a fresh ``FACEPIPELINE_HOME`` (and ``DAGSTER_HOME`` in it) under the same
folder, the way ``make demo`` does, through the real CLI in its own processes:

1. ``facepipeline gallery up``: the embedded PostgreSQL + pgvector, seeded from that folder, its
   photos served over HTTP on 127.0.0.1 by the project's photo server (timed, not counted in the
   retrain's wall time);
2. every named face of the seed is marked verified (the seed leaves 10 % awaiting confirmation),
   so the retrain reads, fetches, embeds, indexes and writes back every photo;
3. ``facepipeline retrain --source embedded --json``: what is timed. Wall time is the process's,
   start to exit (imports, model load, the eight assets and their checks, the write-back).
   Peak memory is the kernel's high-water mark of its resident set (``ru_maxrss`` from ``wait4``:
   the process and any child it waited for); RSS of the process tree is also sampled every
   ``--sample-s`` to attribute the peak to a step, using the step start/end times of the run's
   Dagster event log, which also gives the per-step durations;
4. ``facepipeline gallery down``, and the size's home is deleted (unless ``--keep``).

faces/s is the faces indexed over the retrain's wall time (end to end); the embedding stage's own
faces/s (its materialization metadata) is shown beside it. Beside the peak RSS growth over the
smallest size (per added face), each size says what its photos weigh as files and decoded, and
what its vectors weigh: what memory would grow by if photos were held, and the O(N) floor. Progress goes to stderr (each
retrain's own log goes to ``<work>/retrain-N.log``), results to stdout; the last line is
``photos=10000 wall_s=... faces_per_s=... peak_rss_mb=... rss_ratio_10k_vs_2500=...``: the
largest size's figures, and its peak RSS over the smallest size's (flat memory = 1.0).

    uv run --frozen python bench/load.py [--photos 10000] [--sizes 2500,5000,10000] [--sample-s 0.1]
        [--work /tmp/DIR] [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MB = 1024 * 1024  # RSS in MiB, as ru_maxrss is in KiB


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


# --- the photos -----------------------------------------------------------------------------------
def variant(source: Path, kind: int, salt: int) -> bytes:
    """A deterministic variant of ``source``: flip, small shifted zoom, or re-encode, as JPEG bytes."""
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    if kind == 0:
        image, quality = ImageOps.mirror(image), 92
    elif kind == 1:
        crop_w, crop_h = round(width * 0.96), round(height * 0.96)
        dx, dy = salt % 7 - 3, (salt // 7) % 7 - 3
        left, top = (width - crop_w) // 2 + dx, (height - crop_h) // 2 + dy
        image, quality = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC), 90
    else:
        quality = 75
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def build_photos(target: Path, count: int) -> dict[str, list[str]]:
    """``count`` distinct photos under ``target/<person>/``; returns the file names by person."""
    originals = sorted((SHARED / "data" / "faces").glob("*/*.jpg")) + sorted((SHARED / "data" / "distractors").glob("*/*.jpg"))
    distractors = [p for p in originals if p.parent.parent.name == "distractors"]
    faces = sorted((p for p in originals if p.parent.parent.name == "faces"), key=lambda p: _hash("variant", p.name))
    needed = count - len(originals)
    if needed < 0 or needed > len(originals):
        raise SystemExit(f"--photos {count}: between {len(originals)} and {2 * len(originals)} (one variant per photo)")
    to_vary = (distractors + faces)[:needed]
    people: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()

    def write(person: str, name: str, data: bytes) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            return False
        seen.add(digest)
        (target / person).mkdir(parents=True, exist_ok=True)
        (target / person / name).write_bytes(data)
        people[person].append(name)
        return True

    for path in originals:
        if not write(path.parent.name, path.name, path.read_bytes()):
            raise SystemExit(f"two source photos have the same bytes: {path}")
    for done, path in enumerate(to_vary, 1):
        salt = _hash("salt", path.name)
        for attempt in range(3):  # another kind if a variant happened to equal a file already there
            kind = (salt + attempt) % 3
            if write(path.parent.name, f"{path.stem}_v{kind}.jpg", variant(path, kind, salt)):
                break
        else:
            raise SystemExit(f"no distinct variant of {path}")
        if done % 1000 == 0:
            log(f"  variants {done}/{len(to_vary)}")
    return dict(people)


def subset(full: Path, people: dict[str, list[str]], target: Path, count: int) -> dict[str, list[str]]:
    """``count`` photos of ``full`` as hard links: whole people in a hashed order (the last one maybe cut at >= 3)."""
    chosen: dict[str, list[str]] = {}
    taken = 0
    for person in sorted(people, key=lambda name: _hash("subset", name)):
        names = sorted(people[person])
        room = count - taken
        if len(names) > room:  # the last person, cut to what is left
            if room < 3:
                continue
            names = names[:room]
        elif 0 < room - len(names) < 3:  # would leave room for fewer than 3: leave exactly 3
            if len(names) - (3 - (room - len(names))) < 3:
                continue
            names = names[: len(names) - (3 - (room - len(names)))]
        chosen[person] = names
        taken += len(names)
        if taken == count:
            break
    if taken != count:
        raise SystemExit(f"could not pick exactly {count} photos")
    for person, names in chosen.items():
        (target / person).mkdir(parents=True)
        for name in names:
            os.link(full / person / name, target / person / name)
    return chosen


def photo_bytes(folder: Path, people: dict[str, list[str]]) -> tuple[int, int]:
    """What the photos weigh as files, and decoded (width x height x 3, from the headers)."""
    from PIL import Image

    files = decoded = 0
    for person, names in people.items():
        for name in names:
            path = folder / person / name
            files += path.stat().st_size
            with Image.open(path) as image:
                decoded += image.width * image.height * 3
    return files, decoded


# --- one size -------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """RSS of a process and its children, every ``interval`` seconds, as (time.time(), bytes)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples = pid, interval, []
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stopped.is_set():
            try:
                rss = process.memory_info().rss
                for child in process.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.samples.append((time.time(), rss))
            self.stopped.wait(self.interval)


def run_cli(args: list[str], env: dict, log_path: Path, sample_s: float | None = None) -> dict:
    """Run ``facepipeline ARGS``; its wall time, exit status, stdout, ru_maxrss and RSS samples."""
    cli = Path(sys.executable).with_name("facepipeline")
    with log_path.open("ab") as errors:
        started, wall_start = time.perf_counter(), time.time()
        child = subprocess.Popen([str(cli), *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=errors)
        sampler = RssSampler(child.pid, sample_s) if sample_s else None
        if sampler:
            sampler.start()
        reader = threading.Thread(target=lambda: setattr(child, "captured", child.stdout.read()), daemon=True)
        reader.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        if sampler:
            sampler.stopped.set()
            sampler.join()
    return {"seconds": seconds, "started": wall_start, "rc": child.returncode, "stdout": child.captured.decode(),
            "maxrss": usage.ru_maxrss * 1024, "samples": sampler.samples if sampler else []}


def step_times(dagster_home: Path, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's start and end (time.time()) from the run's event log."""
    from dagster import DagsterInstance

    starts, ends = {}, {}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            if event.event_type_value == "STEP_START":
                starts[entry.step_key] = entry.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
                ends[entry.step_key] = entry.timestamp
    return {key: (starts[key], ends.get(key, starts[key])) for key in sorted(starts, key=starts.get)}


def verify_all(dsn: str) -> tuple[int, int, int]:
    """Mark every named face verified; returns (photos, faces, faces newly verified)."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as conn:
        updated = conn.execute("update photo_faces set verified = true where person_id is not null and not verified").rowcount
        photos, faces = conn.execute("select (select count(*) from photos), (select count(*) from photo_faces where verified)").fetchone()
    return photos, faces, updated


def run_size(size: int, folder: Path, home: Path, args: argparse.Namespace) -> dict:
    env = {
        **os.environ,
        "FACEPIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "FACEPIPELINE_SEED_FOLDER": str(folder),
        "FACEPIPELINE_SOURCE": "embedded",
        "FACEPIPELINE_MODEL_ROOT": str(args.model_root),
        "FACEPIPELINE_MODEL": args.pack,
        "HNSWLIB_NO_NATIVE": "1",
    }
    log_path = args.work / f"retrain-{size}.log"
    result: dict = {"photos": size}
    try:
        up = run_cli(["gallery", "up"], env, log_path)
        if up["rc"] != 0:
            raise SystemExit(f"gallery up failed ({up['rc']}); see {log_path}")
        dsn = next(line.split(":", 1)[1].strip() for line in up["stdout"].splitlines() if line.startswith("postgres:"))
        result["gallery_up_s"] = up["seconds"]
        result["seed"] = next((line.split(":", 1)[1].strip() for line in up["stdout"].splitlines() if line.startswith("seeded:")), "")
        result["gallery_photos"], result["verified_faces"], result["verified_by_bench"] = verify_all(dsn)
        log(f"size {size}: gallery up in {up['seconds']:.1f} s ({result['seed']}); {result['verified_by_bench']} more faces "
            f"verified: {result['verified_faces']} verified faces on {result['gallery_photos']} photos; retrain ...")
        retrain = run_cli(["retrain", "--source", "embedded", "--json"], env, log_path, args.sample_s)
        if retrain["rc"] != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"retrain of size {size} failed ({retrain['rc']}):\n{retrain['stdout'][-2000:]}\n{tail}")
        summary = json.loads(retrain["stdout"])
    finally:
        down = run_cli(["gallery", "down"], env, log_path)
        if down["rc"] != 0:
            log(f"WARNING: gallery down of size {size} failed ({down['rc']}); see {log_path}")
    steps = step_times(home / "dagster", summary["run_id"])
    samples = retrain["samples"]
    result.update({
        "wall_s": retrain["seconds"],
        "peak_rss": retrain["maxrss"],
        "peak_rss_sampled": max((rss for _, rss in samples), default=0),
        "faces_total": summary["faces_total"], "faces_embedded": summary["faces_embedded"],
        "faces_failed": summary["faces_failed"], "photos_fetched": summary["photos_fetched"],
        "photos_failed": summary["photos_failed"], "people": summary["people"],
        "embed_faces_per_s": summary["faces_per_second"], "index_version": summary["index_version"],
        "rank1": summary["metrics"].get("rank1_accuracy"), "write_back": summary["write_back"].get("written"),
        "run_id": summary["run_id"],
        "steps": {key: {"seconds": end - start,
                        "peak_rss": max((rss for t, rss in samples if start <= t <= end), default=None)}
                  for key, (start, end) in steps.items()},
        "before_first_step": {
            "seconds": (min(s for s, _ in steps.values()) - retrain["started"]) if steps else None,
            "peak_rss": max((rss for t, rss in samples if not steps or t < min(s for s, _ in steps.values())), default=None),
        },
        "samples": [(round(t - retrain["started"], 2), rss) for t, rss in samples],
    })
    result["faces_per_s"] = result["faces_total"] / result["wall_s"]
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


# --- driver ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=10000, help="distinct photos built (the largest size)")
    parser.add_argument("--sizes", default="2500,5000,10000", help="photos per retrain, each in a fresh home")
    parser.add_argument("--model-root", type=Path, default=SHARED / "models")
    parser.add_argument("--pack", default="buffalo_sc")
    parser.add_argument("--sample-s", type=float, default=0.1, help="RSS sampling interval")
    parser.add_argument("--work", type=Path, help="folder for photos, homes and logs (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (photos, homes, logs)")
    parser.add_argument("--json", type=Path, help="also write all figures here (RSS samples included)")
    args = parser.parse_args()
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes or args.sizes[-1] > args.photos:
        parser.error("--sizes must not exceed --photos")
    args.model_root = args.model_root.expanduser().resolve()
    return args


def main() -> int:
    args = parse_args()
    created = args.work is None
    args.work = Path(args.work or tempfile.mkdtemp(prefix="facepipeline-load-")).expanduser().resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        full = args.work / f"photos-{args.photos}"
        log(f"building {args.photos} distinct photos under {full} ...")
        started = time.perf_counter()
        people = build_photos(full, args.photos)
        log(f"  {sum(map(len, people.values()))} photos of {len(people)} people in {time.perf_counter() - started:.1f} s")
        results = []
        for size in args.sizes:
            folder = full if size == args.photos else args.work / f"photos-{size}"
            chosen = people if size == args.photos else subset(full, people, folder, size)
            result = run_size(size, folder, args.work / f"home-{size}", args)
            result["max_photos_per_person"] = max(map(len, chosen.values()))
            result["jpeg_bytes"], result["decoded_bytes"] = photo_bytes(folder, chosen)
            results.append(result)
            log(f"size {size}: {result['wall_s']:.1f} s, {result['faces_per_s']:.1f} faces/s, peak RSS {result['peak_rss'] / MB:.0f} MiB")
        report(results)
        if args.json:
            args.json.write_text(json.dumps({"sizes": results}, indent=2))
            log(f"wrote {args.json}")
    finally:
        if created and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    return 0


def report(results: list[dict]) -> None:
    print(f"{'photos':>7s} {'people':>6s} {'max/person':>10s} {'faces':>6s} {'failed':>6s} {'wall s':>7s} {'faces/s':>8s} "
          f"{'embed faces/s':>13s} {'peak RSS MiB':>12s} {'x smallest':>10s} {'gallery up s':>12s}")
    smallest = results[0]["peak_rss"]
    for r in results:
        print(f"{r['photos']:>7d} {r['people']:>6d} {r['max_photos_per_person']:>10d} {r['faces_total']:>6d} {r['faces_failed']:>6d} "
              f"{r['wall_s']:7.1f} {r['faces_per_s']:8.1f} {r['embed_faces_per_s']:13.1f} {r['peak_rss'] / MB:12.0f} "
              f"{r['peak_rss'] / smallest:10.2f} {r['gallery_up_s']:12.1f}")
    print("\nwhat the photos would weigh in memory, against the peak RSS growth over the smallest size:")
    for r in results:
        added = r["faces_total"] - results[0]["faces_total"]
        growth = (f"+{(r['peak_rss'] - smallest) / MB:.0f} MiB, {(r['peak_rss'] - smallest) / added / 1024:.1f} KiB per added face"
                  if added > 0 else "the baseline")
        print(f"{r['photos']:>7d} photos: files {r['jpeg_bytes'] / MB:6.1f} MiB, decoded {r['decoded_bytes'] / MB:7.1f} MiB; "
              f"their vectors ({r['faces_total']} x 512 float32) {r['faces_total'] * 512 * 4 / MB:5.1f} MiB; "
              f"peak RSS {r['peak_rss'] / MB:4.0f} MiB ({growth})")
    steps = list(dict.fromkeys(["(start-up)", *(key for r in results for key in r["steps"])]))
    print("\nper step: seconds / peak RSS MiB while it ran (sampled)")
    print(f"{'step':40s}" + "".join(f" {r['photos']:>16d}" for r in results))
    for step in steps:
        cells = []
        for r in results:
            row = r["before_first_step"] if step == "(start-up)" else r["steps"].get(step)
            if not row or row["seconds"] is None:
                cells.append(f" {'-':>16s}")
                continue
            rss = f"{row['peak_rss'] / MB:.0f}" if row["peak_rss"] else "-"
            cells.append(f" {row['seconds']:8.1f} / {rss:>5s}")
        print(f"{_short(step):40s}" + "".join(cells))
    largest = results[-1]
    print(f"photos={largest['photos']} wall_s={largest['wall_s']:.1f} faces_per_s={largest['faces_per_s']:.1f} "
          f"peak_rss_mb={largest['peak_rss'] / MB:.0f} rss_ratio_{_k(largest['photos'])}_vs_{results[0]['photos']}="
          f"{largest['peak_rss'] / smallest:.2f}")


def _short(step: str) -> str:
    """A per-event step by its event's first 8 hex digits: embed_event[event_7fbfe833_b920_...] -> embed_event[7fbfe833]."""
    return re.sub(r"\[event_([0-9a-f]{8})[0-9a-f_]*\]", r"[\1]", step)


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


if __name__ == "__main__":
    sys.exit(main())
