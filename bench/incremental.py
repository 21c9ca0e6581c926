"""Incremental retrain cost against a full retrain, end to end, on a real gallery of > 5,000 faces.

Everything is what a user runs: a throw-away ``FACEPIPELINE_HOME`` / ``DAGSTER_HOME`` under /tmp,
the embedded gallery (a real PostgreSQL 18 + pgvector, ``facepipeline gallery up``) seeded from a
folder whose photos a real HTTP server on 127.0.0.1 serves, and the console script
``facepipeline retrain --json`` as a subprocess, timed from spawn to exit (Python start, imports,
the Dagster run on the persistent instance, its IO managers and its four blocking checks included).

The seed folder is ``faces/`` (408 people, 4,803 photos) and ``distractors/`` (712 people, 2-3
photos each) of ``../shared/data``, hard-linked (not copied) into a folder under /tmp: the photo
server refuses symlinks that lead out of its root. The seed leaves a tenth of the faces unverified,
as the demo does; with ``--min-faces-per-person 2`` over 5,000 verified faces are kept. ``--new``
(25) of the unverified faces, of people already in the index, are held back.

Python's bytecode cache: this environment sets ``PYTHONDONTWRITEBYTECODE=1`` and uv installs the
packages without ``.pyc`` files, so every command would compile ~2,400 modules from source
(~5 s of CPU) before doing anything. An installed program does not: the bench gives its commands a
bytecode cache of their own (``PYTHONPYCACHEPREFIX`` under the work folder; the checkout and
``.venv`` are not written) and fills it with an untimed retrain of 12 photos on a folder source.
``--no-bytecode-cache`` measures without it.

(a) full         ``facepipeline retrain --mode full``: fetch every photo over HTTP, embed every
                 face, build, check and evaluate the index, write every descriptor back.
(b) new labels   the held-back faces are verified in the gallery: real SQL on the real Postgres
                 (``update photo_faces set verified = true ...``), as the gallery app does.
(c) incremental  ``facepipeline retrain`` (mode incremental), timed the same way.
(d) nothing new  ``facepipeline retrain`` again (skipped with ``--no-empty``).

(b)-(d) are repeated ``--repeats`` times (3), each time with ``--new`` faces of their own (held back
together, before (a)): these 2-core machines are noisy (one incremental command took 4.0 s in one
bench and 5.3 s in the next), so the ratios are medians.

``--photo-latency-ms 30-80`` serves the photos from ``bench/photo_cache.py``'s server instead, with
that time to first byte per photo (uniform, fixed per path): what fetching from a storage bucket over
the internet costs, which the local server leaves out. Every photo's URL is pointed at it before (a).

Each run is checked, with a clear message when wrong: (c) fetched only the new photos, embedded
only the new faces, wrote back exactly those rows (the rows' ``xmin`` are compared before and
after: no other tuple changed), and its index holds every verified face the gallery has for the
kept people; (d) fetched, embedded and wrote nothing. Each run's steps are read back from the
instance's event log (step durations; "outside steps" is the rest of the command's wall time).

Beside them, ``bench/dagster_floor.py`` times a chain of as many assets as the incremental run had
steps, assets that do nothing, run the same way on the same instance in a fresh process: what any
run of that shape costs here, whatever it does (Python's start, Dagster's imports, the instance, the
run and its events). It is timed twice, right after (a) and after the last (d): these machines have slow
spells of minutes in which a short command (Python's start and imports) takes up to 1.7 times as
long while the full retrain's ONNX work hardly changes. ``floor_drift`` (after / before) says whether
one fell between the full retrain and the incremental ones: then their ratio is not the code's.

Progress goes to stderr, results to stdout; the last line is
``incremental_ratio=0.0XX run_ratio=0.0YY full_s=... incremental_s=... floor_ratio=0.0ZZ floor_drift=X.XX``:
the median incremental command's wall time over the full one's, the same for the Dagster runs alone
(start to end, as the UI shows them: without the command's Python start, imports and instance
opening), the floor's command over the full one's, and the floor after over the floor before.

    .venv/bin/python bench/incremental.py [--new 25] [--repeats 3] [--min-faces-per-person 2] [--photo-latency-ms 30-80]
        [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCRIPT = Path(sys.executable).with_name("facepipeline")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A run did not do what it should: the figures would mean nothing."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


# --- the gallery ----------------------------------------------------------------------------------
def build_seed_folder(target: Path, sources: list[Path]) -> tuple[int, int]:
    """One folder per person from ``sources`` (people, photos), hard-linked; a copy across devices."""
    people = photos = 0
    for source in sources:
        for person in sorted(p for p in source.iterdir() if p.is_dir()):
            folder = target / person.name
            if folder.exists():
                raise BenchError(f"{person.name} is in two source folders")
            folder.mkdir(parents=True)
            people += 1
            for photo in sorted(person.iterdir()):
                if photo.suffix.lower() in PHOTO_SUFFIXES and photo.is_file():
                    try:
                        os.link(photo, folder / photo.name)
                    except OSError:
                        shutil.copy2(photo, folder / photo.name)
                    photos += 1
    return people, photos


def environment(workdir: Path, seed: Path, model_root: Path, pack: str, bytecode_cache: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEPIPELINE_", "DAGSTER_", "SUPABASE_"))}
    home = workdir / "home"
    env.update(
        FACEPIPELINE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), FACEPIPELINE_SOURCE="embedded",
        FACEPIPELINE_SEED_FOLDER=str(seed), FACEPIPELINE_MODEL_ROOT=str(model_root), FACEPIPELINE_MODEL=pack,
        HNSWLIB_NO_NATIVE="1",
    )
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


def warm_up(env: dict[str, str], workdir: Path, source: Path) -> float:
    """An untimed retrain of 3 people x 4 photos on a folder source in a home of its own: every module
    a retrain imports is compiled into the bytecode cache once."""
    folder = workdir / "warm-up-faces"
    people = sorted(p for p in source.iterdir() if p.is_dir())[:3]
    for person in people:
        (folder / person.name).mkdir(parents=True)
        for photo in sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)[:4]:
            try:
                os.link(photo, folder / person.name / photo.name)
            except OSError:
                shutil.copy2(photo, folder / person.name / photo.name)
    home = workdir / "warm-up-home"
    warm = {**env, "FACEPIPELINE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    seconds, _ = facepipeline(["retrain", "--source", f"folder:{folder}", "--json"], warm, workdir, "warm-up")
    return seconds


def facepipeline(args: list[str], env: dict[str, str], workdir: Path, label: str) -> tuple[float, str]:
    """Run the console script; returns (wall seconds, stdout). Its stderr goes to ``label``.log."""
    log_path = workdir / f"{label}.log"
    started = time.perf_counter()
    with open(log_path, "w") as err:
        done = subprocess.run([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=workdir)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise BenchError(f"facepipeline {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{tail}")
    return seconds, done.stdout


def connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def hold_back(dsn: str, count: int, people_from: set[str], minimum: int) -> list[str]:
    """``count`` unverified faces, one per person, of people who already have enough verified faces."""
    with connect(dsn) as conn:
        rows = conn.execute(
            """
            select f.id::text, pe.real_name from photo_faces f join people pe on pe.id = f.person_id
            where not f.verified
              and (select count(*) from photo_faces v where v.person_id = f.person_id and v.verified) >= %s
            order by md5(f.id::text)
            """,
            [minimum],
        ).fetchall()
    chosen, seen = [], set()
    for face_id, name in rows:
        person = name.replace(" ", "_")
        if person in people_from and person not in seen:
            chosen.append(face_id)
            seen.add(person)
        if len(chosen) == count:
            return chosen
    raise BenchError(f"only {len(chosen)} unverified faces of known people to hold back, {count} wanted")


def verify(dsn: str, face_ids: list[str]) -> int:
    with connect(dsn) as conn:
        return conn.execute(
            "update photo_faces set verified = true where id = any(%s::uuid[]) and not verified", [face_ids]
        ).rowcount


def tuple_versions(dsn: str) -> dict[str, str]:
    """Every photo_faces row's xmin: it changes whenever the row is written, even to the same values."""
    with connect(dsn) as conn:
        return dict(conn.execute("select id::text, xmin::text from photo_faces").fetchall())


def kept_verified_faces(dsn: str, minimum: int) -> set[str]:
    """The verified faces a retrain should index: of people with at least ``minimum`` of them."""
    with connect(dsn) as conn:
        return {
            face_id for (face_id,) in conn.execute(
                """
                select f.id::text from photo_faces f
                where f.verified and f.person_id in (
                    select person_id from photo_faces where verified and person_id is not null
                    group by person_id having count(*) >= %s)
                """,
                [minimum],
            )
        }


def rows_of_session(dsn: str, session_id: str) -> int:
    with connect(dsn) as conn:
        return conn.execute(
            "select count(*) from photo_faces where training_context ->> 'training_session_id' = %s", [session_id]
        ).fetchone()[0]


# --- the runs -------------------------------------------------------------------------------------
def step_times(dagster_home: Path, run_id: str) -> tuple[dict[str, float], float]:
    """Each step of the run and its duration, from the instance's event log, in execution order; and
    the run's own duration (start to end, as the Dagster UI shows it)."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        stats = instance.get_run_step_stats(run_id)
        record = instance.get_run_record_by_id(run_id)
    stats = sorted(stats, key=lambda s: s.start_time or 0)
    return {s.step_key: round((s.end_time or 0) - (s.start_time or 0), 3) for s in stats}, round(record.end_time - record.start_time, 3)


def index_face_ids(index_path: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(index_path) / "entries.parquet", columns=["face_id"]).column("face_id").to_pylist()


def retrain(label: str, mode: str, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict:
    log(f"{label}: facepipeline retrain --mode {mode} --min-faces-per-person {args.min_faces_per_person} --json ...")
    seconds, stdout = facepipeline(
        ["retrain", "--mode", mode, "--min-faces-per-person", str(args.min_faces_per_person), "--json"], env, workdir, label
    )
    summary = json.loads(stdout)
    steps, run_s = step_times(Path(env["DAGSTER_HOME"]), summary["run_id"])
    run = {
        "label": label, "mode": mode, "seconds": round(seconds, 3), "run_s": run_s, "steps": steps,
        "outside_steps_s": round(seconds - sum(steps.values()), 3), "summary": summary,
    }
    log(f"{label}: {seconds:.1f} s, {summary['faces_total']} faces, {summary['faces_embedded']} embedded, "
        f"{summary['photos_fetched']} photos fetched, {summary['write_back'].get('written')} rows written, "
        f"index {summary['index_version']}")
    return run


def figures_of(run: dict) -> dict:
    s = run["summary"]
    return {
        "wall_s": run["seconds"], "faces": s["faces_total"], "faces_embedded": s["faces_embedded"],
        "faces_reused": s["faces_reused"], "faces_failed": s["faces_failed"], "photos_fetched": s["photos_fetched"],
        "rows_written": s["write_back"].get("written"), "rows_unchanged": s["write_back"].get("unchanged"),
        "index_version": s["index_version"], "promoted": s["promoted_index"],
        "rank1": s["metrics"].get("rank1_accuracy"), "threshold": s["metrics"].get("recommended_threshold"),
    }


# --- driver ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "data" / "faces", SHARED / "data" / "distractors"],
                        help="person folders to seed the gallery from")
    parser.add_argument("--model-root", type=Path, default=SHARED / "models")
    parser.add_argument("--pack", default="buffalo_sc")
    parser.add_argument("--new", type=int, default=25, help="faces held back, then verified for each incremental run")
    parser.add_argument("--repeats", type=int, default=3, help="incremental runs (each with --new faces of its own), and runs with nothing new")
    parser.add_argument("--min-faces-per-person", type=int, default=2)
    parser.add_argument("--no-empty", action="store_true", help="skip (d), the incremental retrain with nothing new")
    parser.add_argument("--workdir", type=Path, help="default: a new folder under /tmp, removed afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and its gallery's data)")
    parser.add_argument("--no-bytecode-cache", dest="bytecode_cache", action="store_false",
                        help="leave PYTHONDONTWRITEBYTECODE as it is: every command compiles its modules again")
    parser.add_argument("--photo-latency-ms", type=latency_range, default=None, metavar="LOW-HIGH",
                        help="serve the photos from bench/photo_cache.py's server with this time to first byte "
                             "(e.g. 30-80, a storage bucket over the internet) instead of the gallery's local one")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    return parser.parse_args()


FLOOR_STEPS = 11
"""Steps of the floor timed right after the full retrain (on its instance): an incremental run's."""
DRIFT_TOLERANCE = 0.15


def cpu_model() -> str:
    """The processor's name and the cores this process may use: the same code gives another ratio on
    a faster CPU (the embedding, most of a full retrain, shrinks more than a command's fixed costs)."""
    try:
        names = {line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")}
    except OSError:
        names = set()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{', '.join(sorted(names)) or 'unknown CPU'}, {cores} cores"


def machine_floor(when: str, steps: int, env: dict[str, str]) -> list[float]:
    """Dagster's floor for ``steps`` steps, 3 times; none when it cannot run (the retrains' figures stand without it)."""
    from dagster_floor import measure

    log(f"Dagster's floor {when}: a chain of {steps} assets that do nothing, as a command on this instance (bench/dagster_floor.py), 3 times ...")
    try:
        return measure(steps, 3, env)
    except RuntimeError as exc:
        log(f"Dagster's floor not measured: {exc}")
        return []


def latency_range(text: str) -> tuple[float, float]:
    from photo_cache import parse_range

    return parse_range(text)


def serve_photos_slowly(dsn: str, root: Path, latency_ms: tuple[float, float]):
    """The seed folder served with ``latency_ms`` to first byte, and every photo's URL pointed at it."""
    from photo_cache import ServerProcess

    server = ServerProcess(root, latency_ms, 0.0)
    with connect(dsn) as conn:
        moved = conn.execute(
            "update photos set url = %s || '/' || storage_path where url not like %s || '/%%'", (server.base_url, server.base_url)
        ).rowcount
    log(f"photos served from {server.base_url} with {latency_ms[0]:g}-{latency_ms[1]:g} ms to first byte ({moved} URLs moved)")
    return server


def main() -> int:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facepipeline-bench-incremental-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    seed = workdir / "seed"
    env = environment(workdir, seed, args.model_root.resolve(), args.pack, args.bytecode_cache)
    gallery_started, slow_server = False, None
    try:
        missing = [str(path) for path in (*args.data, args.model_root / args.pack) if not path.is_dir()]
        expect(not missing, f"missing: {', '.join(missing)} (../shared beside the checkout, or --data / --model-root)")
        machine = cpu_model()
        log(f"machine: {machine}")
        people, photos = build_seed_folder(seed, [d.resolve() for d in args.data])
        log(f"seed folder {seed}: {people} people, {photos} photos (hard links)")
        if args.bytecode_cache:
            log(f"warm-up retrain on 12 photos (untimed), bytecode cached under {env['PYTHONPYCACHEPREFIX']}: "
                f"{warm_up(env, workdir, args.data[0].resolve()):.1f} s")
        else:
            log(f"no bytecode cache (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')})")
        _, stdout = facepipeline(["gallery", "up"], env, workdir, "gallery-up")
        gallery_started = True
        dsn = next(line.split(":", 1)[1].strip() for line in stdout.splitlines() if line.startswith("postgres:"))
        log(stdout.strip())
        first_folder = {p.name for p in args.data[0].resolve().iterdir() if p.is_dir()}
        if args.photo_latency_ms:
            slow_server = serve_photos_slowly(dsn, seed, args.photo_latency_ms)
        held = hold_back(dsn, args.new * args.repeats, first_folder, args.min_faces_per_person)
        batches = [held[k * args.new : (k + 1) * args.new] for k in range(args.repeats)]
        log(f"held back {len(held)} unverified faces of people of {args.data[0].name}/ already verified, {args.new} per incremental run")

        full = retrain("full", "full", args, env, workdir)
        floor_before = machine_floor("right after the full retrain", FLOOR_STEPS, env)
        f = full["summary"]
        expect(f["faces_embedded"] + f["faces_failed"] == f["faces_total"] and f["faces_total"] >= 5000,
               f"the full retrain should embed >= 5,000 faces: {figures_of(full)}")

        incrementals, empties, checks = [], [], {}
        for k, new_ids in enumerate(batches, start=1):
            label = f"incremental-{k}"
            incremental, checks[label] = incremental_run(label, dsn, new_ids, full, k, args, env, workdir)
            incrementals.append(incremental)
            if not args.no_empty:
                empties.append(nothing_new_run(f"nothing-new-{k}", dsn, args, env, workdir))
        runs = [full, *incrementals, *empties]
        report(runs)
        incremental = median_run(incrementals)
        ratio = incremental["seconds"] / full["seconds"]
        run_ratio = statistics.median(r["run_s"] for r in incrementals) / full["run_s"]
        print(f"machine: {machine}")
        print(f"incremental commands: {_times(incrementals, 'seconds')} s, median {incremental['seconds']:.2f} s "
              f"({ratio:.3f} of the full retrain); their Dagster runs: {_times(incrementals, 'run_s')} s (median {run_ratio:.3f})")
        if empties:
            floor = statistics.median(r["seconds"] for r in empties)
            print(f"a retrain with nothing new takes {floor:.1f} s here (median of {_times(empties, 'seconds')}): "
                  f"the fixed cost of a run; the {args.new} new faces added {incremental['seconds'] - floor:+.1f} s to it")
        steps = len(incremental["steps"])
        floor_runs, floor_ratio, drift = machine_floor("after the incremental retrains", steps, env), None, None
        if floor_runs:
            dagster_floor_s = statistics.median(floor_runs)
            floor_ratio = dagster_floor_s / full["seconds"]
            print(f"Dagster's floor: any run of {steps} steps costs {dagster_floor_s:.1f} s as a command here "
                  f"({' '.join(f'{s:.2f}' for s in floor_runs)}), {floor_ratio:.3f} of the full retrain; "
                  f"the incremental retrain's own work is the other {incremental['seconds'] - dagster_floor_s:.1f} s "
                  f"({(incremental['seconds'] - dagster_floor_s) / full['seconds']:.3f})")
        if floor_runs and floor_before and steps != FLOOR_STEPS:
            print(f"floor drift not computed: the incremental runs had {steps} steps, the floor right after the full "
                  f"retrain {FLOOR_STEPS}")
        elif floor_runs and floor_before:
            drift = statistics.median(floor_runs) / statistics.median(floor_before)
            verdict = ("the machine ran short commands at one speed throughout" if abs(drift - 1) <= DRIFT_TOLERANCE else
                       f"the machine's speed for short commands changed by more than {DRIFT_TOLERANCE:.0%} between the full "
                       "retrain and the incremental ones: their ratio is the machine's as much as the code's; run the bench again")
            print(f"floor right after the full retrain {statistics.median(floor_before):.2f} s, after the incremental ones "
                  f"{statistics.median(floor_runs):.2f} s (x{drift:.2f}): {verdict}")
        if args.json:
            args.json.write_text(json.dumps(
                {"machine": machine, "seed": {"people": people, "photos": photos}, "bytecode_cache": args.bytecode_cache,
                 "photo_latency_ms": args.photo_latency_ms, "new_faces": batches, "checks": {run: {k: list(v) for k, v in run_checks.items()} for run, run_checks in checks.items()},
                 "runs": [{**{k: v for k, v in r.items() if k != "summary"}, "figures": figures_of(r), "summary": r["summary"]} for r in runs],
                 "incremental_ratio": ratio, "run_ratio": run_ratio, "dagster_floor_s": floor_runs, "floor_ratio": floor_ratio,
                 "dagster_floor_before_s": floor_before, "floor_drift": drift},
                indent=2, default=str,
            ))
            log(f"wrote {args.json}")
        print(f"incremental_ratio={ratio:.3f} run_ratio={run_ratio:.3f} full_s={full['seconds']:.1f} "
              f"incremental_s={incremental['seconds']:.2f} floor_ratio={'none' if floor_ratio is None else f'{floor_ratio:.3f}'} "
              f"floor_drift={'none' if drift is None else f'{drift:.2f}'}")
        return 0
    except BenchError as exc:
        log(f"bench failed: {exc}")
        return 1
    finally:
        if slow_server is not None:
            slow_server.stop()
        if gallery_started:
            try:
                facepipeline(["gallery", "down"], env, workdir, "gallery-down")
            except BenchError as exc:
                log(f"could not stop the gallery: {exc}")
        if args.keep or args.workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def incremental_run(
    label: str, dsn: str, new_ids: list[str], full: dict, k: int, args: argparse.Namespace, env: dict[str, str], workdir: Path
) -> tuple[dict, dict]:
    """Verify ``new_ids`` in the gallery, retrain incrementally, and check it did only that new work
    (the ``k``-th such run: the faces of the ``k - 1`` before are reused)."""
    verified = verify(dsn, new_ids)
    expect(verified == len(new_ids), f"verified {verified} of the {len(new_ids)} held-back faces")
    log(f"verified {verified} held-back faces in the gallery (SQL)")
    before = tuple_versions(dsn)
    incremental = retrain(label, "incremental", args, env, workdir)
    i, f = incremental["summary"], full["summary"]
    after = tuple_versions(dsn)
    changed = sorted(face_id for face_id, xmin in after.items() if before.get(face_id) != xmin)
    kept = kept_verified_faces(dsn, args.min_faces_per_person)
    indexed = index_face_ids(i["index_path"])
    checks = {
        "photos_fetched": (i["photos_fetched"], len(new_ids)),
        "faces_embedded": (i["faces_embedded"], len(new_ids)),
        "faces_reused": (i["faces_reused"], f["faces_embedded"] + (k - 1) * len(new_ids)),
        "rows_written": (i["write_back"].get("written"), len(new_ids)),
        "rows_changed_in_gallery (xmin)": (len(changed), len(new_ids)),
        "rows_changed_are_the_new_faces": (sorted(changed) == sorted(new_ids), True),
        "rows_with_the_session_id": (rows_of_session(dsn, i["training_session"]["id"]), len(new_ids)),
        "index_faces": (len(indexed), f["faces_total"] - f["faces_failed"] + k * len(new_ids)),
        "index_is_every_kept_verified_face": (set(indexed) == kept and len(indexed) == len(kept), True),
        "index_holds_the_new_faces": (set(new_ids) <= set(indexed), True),
        "promoted": (i["promoted_index"], i["index_version"]),
    }
    for name, (got, wanted) in checks.items():
        log(f"  check {name}: {got} (expected {wanted})")
    wrong = {name: value for name, value in checks.items() if value[0] != value[1]}
    expect(not wrong, f"{label} did not do only the new work: {wrong}")
    return incremental, checks


def nothing_new_run(label: str, dsn: str, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict:
    """Retrain incrementally with nothing new, and check it fetched, embedded and wrote nothing."""
    before = tuple_versions(dsn)
    empty = retrain(label, "incremental", args, env, workdir)
    e = empty["summary"]
    unchanged_rows = tuple_versions(dsn) == before
    log(f"  check nothing new: fetched {e['photos_fetched']}, embedded {e['faces_embedded']}, "
        f"written {e['write_back'].get('written')}, no tuple changed: {unchanged_rows}")
    expect((e["photos_fetched"], e["faces_embedded"], e["write_back"].get("written"), unchanged_rows) == (0, 0, 0, True),
           f"a retrain with nothing new did work: {figures_of(empty)}")
    return empty


def _times(runs: list[dict], key: str) -> str:
    return " ".join(f"{run[key]:.2f}" for run in runs)


def median_run(runs: list[dict]) -> dict:
    """The run whose command took the median time (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def _short(step: str) -> str:
    """face_embeddings.embed_event[event_af592cbd_674b_...] -> face_embeddings.embed_event[af592cbd]"""
    return re.sub(r"\[event_([0-9a-f]{8})[0-9a-f_]*\]", r"[\1]", step)


def report(runs: list[dict]) -> None:
    full = runs[0]["seconds"]
    print(f"{'run':12s} {'wall s':>8s} {'/ full':>7s} {'faces':>6s} {'embedded':>9s} {'fetched':>8s} {'written':>8s}  index")
    for run in runs:
        f = figures_of(run)
        print(f"{run['label']:12s} {f['wall_s']:8.2f} {f['wall_s'] / full:7.3f} {f['faces']:6d} {f['faces_embedded']:9d} "
              f"{f['photos_fetched']:8d} {str(f['rows_written']):>8s}  {f['index_version']} (promoted {f['promoted']}, "
              f"rank-1 {f['rank1']}, threshold {f['threshold']})")
    print()
    steps = list(dict.fromkeys(step for run in runs for step in run["steps"]))
    print(f"{'step (seconds)':42s}" + "".join(f" {run['label']:>12s}" for run in runs))
    for step in steps:
        times = "".join(f" {run['steps'][step]:12.2f}" if step in run["steps"] else f" {'-':>12s}" for run in runs)
        print(f"{_short(step):42s}{times}")
    print(f"{'outside steps (start, imports, run setup)':42s}" + "".join(f" {run['outside_steps_s']:12.2f}" for run in runs))
    print(f"{'the Dagster run (start to end, as in the UI)':42s}" + "".join(f" {run['run_s']:12.2f}" for run in runs))
    print(f"{'whole command':42s}" + "".join(f" {run['seconds']:12.2f}" for run in runs))


if __name__ == "__main__":
    sys.exit(main())
