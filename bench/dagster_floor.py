"""What any Dagster run of N steps costs as a command here, whatever the steps do: the floor.

A chain of N assets that do nothing, executed like ``facepipeline retrain`` executes its job:
``execute_job`` on a reconstructable job, in process, on the instance of ``$DAGSTER_HOME`` (so with
the same storage and event log), in a fresh Python process timed from spawn to exit. What is left is
Python's start, importing Dagster and its storage, opening the instance, creating the run, and
Dagster's own work per step (events, plan, step transitions). The process sets the garbage
collector as the command does (cli/collector.py).

``bench/incremental.py`` runs it beside the retrains, with as many steps as the incremental run had.

    DAGSTER_HOME=... .venv/bin/python bench/dagster_floor.py [--steps 11] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from cli.collector import collect_as_usual, collect_less_often

# Dagster is imported where it is used: the timed process sets the collector first, as the
# facepipeline command does, and a bench that imports measure() is left as it is.
STEPS_VARIABLE = "FACEPIPELINE_BENCH_FLOOR_STEPS"


def _chain(steps: int) -> list:
    from dagster import asset

    assets = []
    for i in range(steps):

        @asset(name=f"floor_step_{i:02d}", deps=[assets[-1]] if assets else [])
        def step() -> None:
            return None

        assets.append(step)
    return assets


def floor_job():
    from dagster import Definitions, define_asset_job

    steps = int(os.environ[STEPS_VARIABLE])
    return Definitions(assets=_chain(steps), jobs=[define_asset_job("dagster_floor")]).resolve_job_def("dagster_floor")


def run_once() -> None:
    collect_less_often()  # before Dagster loads, as the command does
    from dagster import DagsterInstance, execute_job, reconstructable

    with DagsterInstance.get() as instance:
        collect_as_usual()  # as the command does once its instance is open
        config = {"execution": {"config": {"in_process": {}}}}
        with execute_job(reconstructable(floor_job), instance, run_config=config) as result:
            if not result.success:
                raise SystemExit("the floor run failed")


def measure(steps: int, repeat: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall seconds of ``repeat`` fresh processes, each running the N-step chain once."""
    env = {**(env or os.environ), STEPS_VARIABLE: str(steps)}
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--once"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"the floor run exited with {done.returncode}: {done.stderr.strip()[-1500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        run_once()
        return 0
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("set DAGSTER_HOME to the instance to measure on (an existing absolute path)")
    seconds = measure(args.steps, args.repeat)
    print(f"dagster_floor_s={statistics.median(seconds):.2f} steps={args.steps} runs={' '.join(f'{s:.2f}' for s in seconds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
