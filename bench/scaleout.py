"""Scale-out of the embedding stage: its per-event steps on Dagster's multiprocess executor, 1 vs 2 processes.

The embedded gallery (real PostgreSQL + pgvector, photos over HTTP on 127.0.0.1) is seeded from the
first ``--people`` people of ``../shared/data/faces`` (4 synthetic events), and a first retrain
through the CLI fills the photo cache. Then ``face_embeddings`` alone is re-materialized in
``mode=full`` (every face embedded again) by ``dagster.execute_job`` on a real instance, with:

``in_process``   the in-process executor: the steps one after another, each embedding with one
                 thread per core (what ``facepipeline retrain`` does): the baseline
``mp_1``         the multiprocess executor, ``max_concurrent=1``, 1 embedding thread per step
``mp_2``         the multiprocess executor, ``max_concurrent=2``, 1 embedding thread per step:
                 two events embedded side by side in two processes

Each row is timed from the first step's start to the last step's end of ``face_embeddings``
(split_by_event -> embed_event[...] -> combine_embeddings), from the run's event log; runs are
interleaved and repeated, medians reported. Process start and model loading are counted: they are
the price of the processes. Every run must embed every face (checked). The last stdout line is

    mp2_vs_mp1=X.XX mp2_vs_in_process=Y.YY

    .venv/bin/python bench/scaleout.py [--people 80] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance, execute_job, reconstructable

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ROWS = {
    "in_process": ({"in_process": {}}, 0),
    "mp_1": ({"multiprocess": {"max_concurrent": 1}}, 1),
    "mp_2": ({"multiprocess": {"max_concurrent": 2}}, 1),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def retrain_job():
    """The code location's retrain job, rebuilt from the environment in each step's process."""
    import definitions

    return definitions.defs.resolve_job_def("retrain")


def seed_folder(target: Path, people: int) -> int:
    """Copies (the photo server serves no symlink that leads out of its folder), in a throw-away folder."""
    photos = 0
    for person in sorted(p for p in (SHARED / "data" / "faces").iterdir() if p.is_dir())[:people]:
        shutil.copytree(person, target / person.name)
        photos += len(list(person.glob("*.jpg")))
    return photos


def run_once(instance: DagsterInstance, executor: dict) -> dict:
    run_config = {"execution": {"config": executor}, "resources": {"retrain_options": {"config": {"mode": "full"}}},
                  # one step per event, however small (the default packs events of under 200 faces together)
                  "ops": {"face_embeddings": {"ops": {"split_by_event": {"config": {"min_faces_per_shard": 1}}}}}}
    with execute_job(reconstructable(retrain_job), instance, run_config=run_config,
                     asset_selection=[AssetKey("face_embeddings")], raise_on_error=True) as result:
        run_id = result.run_id
    steps: dict[str, list[float]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not (entry.step_key or "").startswith("face_embeddings."):
            continue
        if event.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS):
            steps.setdefault(entry.step_key, []).append(entry.timestamp)
    [materialization] = [e for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]
    metadata = {k: v.value for k, v in materialization.asset_materialization.metadata.items()}
    start = min(times[0] for times in steps.values())
    end = max(times[-1] for times in steps.values())
    return {"seconds": end - start, "embedded": metadata["faces_embedded"], "failed": metadata["faces_failed"], "total": metadata["faces_total"],
            "steps": sorted(steps), "embedding_steps": metadata["embedding_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=80, help="the first this many people of faces/ (about 12 photos each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="facepipeline-scaleout-") as tmp:
        tmp = Path(tmp)
        (tmp / "seed").mkdir()
        photos = seed_folder(tmp / "seed", args.people)
        (tmp / "dagster").mkdir()
        os.environ.update({
            "FACEPIPELINE_HOME": str(tmp / "home"), "DAGSTER_HOME": str(tmp / "dagster"),
            "FACEPIPELINE_SOURCE": "embedded", "FACEPIPELINE_SEED_FOLDER": str(tmp / "seed"),
            "FACEPIPELINE_MODEL_ROOT": os.environ.get("FACEPIPELINE_MODEL_ROOT", str(SHARED / "models")),
            "FACEPIPELINE_MODEL": os.environ.get("FACEPIPELINE_MODEL", "buffalo_sc"),
            "FACEPIPELINE_SENSOR_INTERVAL_S": "3600",
        })
        cli = [sys.executable, "-m", "cli.main"] if (REPO / "cli" / "main.py").exists() else ["facepipeline"]
        try:
            log(f"seeding the embedded gallery from {args.people} people ({photos} photos) and a first retrain ...")
            started = time.perf_counter()
            subprocess.run([*cli, "retrain", "--json"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            log(f"  first retrain {time.perf_counter() - started:.0f} s")
            figures = measure(args.repeats)
        finally:
            subprocess.run([*cli, "gallery", "down"], cwd=REPO, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report(figures, photos)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def measure(repeats: int) -> dict:
    seconds: dict[str, list[float]] = {name: [] for name in ROWS}
    last: dict[str, dict] = {}
    with DagsterInstance.get() as instance:
        for rep in range(repeats):
            for name, (executor, workers) in ROWS.items():
                os.environ["FACEPIPELINE_EMBED_WORKERS"] = str(workers)
                outcome = run_once(instance, executor)
                if outcome["embedded"] == 0 or outcome["embedded"] + outcome["failed"] != outcome["total"]:
                    raise SystemExit(f"{name}: embedded {outcome['embedded']} and {outcome['failed']} failed of {outcome['total']} faces")
                seconds[name].append(outcome["seconds"])
                last[name] = outcome
                log(f"  repeat {rep + 1}/{repeats} {name:10s} {outcome['seconds']:6.1f} s  "
                    f"{outcome['embedded'] / outcome['seconds']:5.1f} faces/s  {outcome['embedding_steps']} embedding steps")
    rows = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        rows[name] = {"seconds": times, "median_s": median, "faces_per_s": last[name]["embedded"] / median, **last[name]}
    return {"rows": rows, "mp2_vs_mp1": rows["mp_1"]["median_s"] / rows["mp_2"]["median_s"],
            "mp2_vs_in_process": rows["in_process"]["median_s"] / rows["mp_2"]["median_s"]}


def report(figures: dict, photos: int) -> None:
    notes = {"in_process": "in-process executor, steps in turn, 1 thread per core each",
             "mp_1": "multiprocess, max_concurrent=1, 1 thread per step",
             "mp_2": "multiprocess, max_concurrent=2, 1 thread per step"}
    print(f"{photos} photos; face_embeddings in mode=full; medians; process start and model loading included")
    print(f"{'row':12s} {'seconds':>8s} {'faces/s':>8s} {'embedded':>9s} {'steps':>6s}  notes")
    for name, row in figures["rows"].items():
        print(f"{name:12s} {row['median_s']:8.1f} {row['faces_per_s']:8.1f} {row['embedded']:>9d} {row['embedding_steps']:>6d}  {notes[name]}")
    print(f"mp2_vs_mp1={figures['mp2_vs_mp1']:.2f} mp2_vs_in_process={figures['mp2_vs_in_process']:.2f}")


if __name__ == "__main__":
    main()
