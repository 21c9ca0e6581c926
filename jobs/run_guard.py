"""One retrain at a time, whoever starts it.

Runs launched through the instance (the sensors, the schedule, the UI) wait in Dagster's run queue:
``dagster.yaml`` admits one run tagged ``facepipeline/retrain`` at a time. The CLI executes its run
in its own process, past the queue, so it takes a file lock (one CLI retrain per home) and refuses
to start while another retrain is in progress; its own run, once started, holds the queue's slot.

A CLI process that was killed leaves its run ``STARTED`` for ever, which would hold that slot for
ever. Its runs carry the process that executes them (host, pid, start time): a run whose process
is gone is reported failed, and the run-failure sensor closes its training session.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from filelock import FileLock, Timeout

from assets.sessions import RETRAIN_JOB
from facepipeline.errors import FacePipelineError

PROCESS_TAG = "facepipeline/process"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
UNDER_WAY = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, *IN_PROGRESS]


class RetrainBusy(FacePipelineError):
    """Another retrain is in progress."""


def this_process() -> str:
    """``host:pid:start`` of this process; the start time tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        # /proc/PID/stat: field 22 is the start time in clock ticks; the name (field 2) may hold spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _process_gone(process: str) -> bool:
    host, _, rest = process.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's process: not ours to judge
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return started not in ("?", _start_time(pid))


def release_stale_runs(instance: DagsterInstance) -> list[DagsterRun]:
    """Report failed every in-progress retrain whose CLI process is gone; returns those runs."""
    stale = [
        run for run in instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, statuses=IN_PROGRESS))
        if PROCESS_TAG in run.tags and _process_gone(run.tags[PROCESS_TAG])
    ]
    for run in stale:
        instance.report_run_failed(run, f"its process ({run.tags[PROCESS_TAG]}) is gone: it was killed or crashed")
    return stale


def retrain_under_way(instance: DagsterInstance, statuses: list[DagsterRunStatus] = UNDER_WAY) -> DagsterRun | None:
    """A retrain run queued or in progress (after releasing those whose process died), or None."""
    release_stale_runs(instance)
    runs = instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, statuses=statuses), limit=1)
    return runs[0] if runs else None


@contextmanager
def one_retrain_at_a_time(home: Path, instance: DagsterInstance) -> Iterator[dict[str, str]]:
    """For a retrain executed in this process: raises :class:`RetrainBusy` while another one is in
    progress; yields the tags the run must carry."""
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(home / "retrain.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RetrainBusy(f"another facepipeline retrain is running with this home ({home}): wait for it") from None
    try:
        running = retrain_under_way(instance, IN_PROGRESS)
        if running is not None:
            trigger = running.tags.get("facepipeline/trigger") or running.tags.get("dagster/sensor_name") or "the UI or a CLI"
            raise RetrainBusy(
                f"retrain run {running.run_id} ({trigger}) is {running.status.value.lower()}: "
                "wait for it, or cancel it in the Dagster UI"
            )
        yield {PROCESS_TAG: this_process(), "facepipeline/trigger": "cli"}
    finally:
        lock.release()
