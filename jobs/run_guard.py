"""One retrain at a time, whoever starts it.

Runs launched through the instance (the sensors, the schedule, the UI) wait in Dagster's run queue:
``dagster.yaml`` admits one run tagged ``facepipeline/retrain`` at a time. The CLI executes its run
in its own process, past the queue, so it takes a file lock (one CLI retrain per home) and refuses
to start while another retrain is in progress; its own run, once started, holds the queue's slot.

Neither covers everything: the CLI checks before its run exists (two CLIs sharing an instance
from two homes can both pass), and a run that is not the ``retrain`` job (the UI's "Materialize
all", ``materialize()`` in a notebook) carries no tag for the queue to count. So the first step
of the retrain assets that a run executes *claims* the run (:func:`claim_retrain`): under a lock
in the instance's directory it looks for another in-progress run holding the claim tag; if there
is one, this run fails at once, before writing anything, with "another retrain is in progress";
if not, it tags itself. Check and tag happen under one lock, so of two runs that start together
exactly one proceeds: the one that reaches the lock first. (A lock file orders the runs of one
machine; the run storage alone cannot, as it has no compare-and-set on tags.)

A CLI process that was killed leaves its run ``STARTED`` for ever, which would hold that slot for
ever. Its runs carry the process that executes them (host, pid, start time): a run whose process
is gone is reported failed (:func:`release_stale_runs`), and its training session, which nobody
closed, is closed ``failed`` by the next retrain's claim (:func:`close_orphaned_sessions`; the
run-failure sensor does the same where the daemon runs).

A re-execution (the UI's "Re-execute", Dagster's run retries) copies its parent's tags, these two
included. So the claim tag holds the id of the run that claimed, and counts only on that run; the
process tag counts only on a run that is not a re-execution (the CLI never re-executes). A
re-execution of a claimed run claims again, and one of a killed CLI run is not taken for dead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from filelock import FileLock, Timeout

from assets.sessions import RETRAIN_JOB
from facepipeline.errors import FacePipelineError
from facepipeline.sessions import TrainingSessions

PROCESS_TAG = "facepipeline/process"
CLAIM_TAG = "facepipeline/writes_retrain_assets"
"""Set on a run by :func:`claim_retrain`, to the run's own id: this run writes the retrain assets; no
other may meanwhile. A re-execution inherits its parent's value, which is not its own id."""
CLAIM_LOCK = "facepipeline-retrain-claim.lock"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
UNDER_WAY = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, *IN_PROGRESS]


BUSY = "another retrain is in progress"


class RetrainBusy(FacePipelineError):
    """Another retrain is in progress: every message starts with :data:`BUSY`."""


@contextmanager
def open_instance() -> Iterator[DagsterInstance]:
    """``DagsterInstance.get()`` for a process started beside others on a fresh ``DAGSTER_HOME``.

    The SQLite storages create their tables when first opened, without a lock: two CLIs started
    at once on a new home both create them ("table jobs already exists", then an alembic table
    with two heads that breaks the instance for good). The first opening is serialised here.
    """
    root = Path(os.environ["DAGSTER_HOME"]).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / "facepipeline-instance.lock", timeout=300):
        instance = DagsterInstance.get()
        try:
            instance.get_runs(limit=1)  # every storage the CLI writes, opened and migrated under the lock
            instance.event_log_storage.get_asset_records()
        except BaseException:
            instance.dispose()
            raise
    with instance:
        yield instance


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


def holds_claim(run: DagsterRun) -> bool:
    """Whether ``run`` claimed the retrain assets itself (a re-execution's copied tag does not count).

    Runs claimed before the tag held the run's id carry ``"true"``: one that is not a re-execution
    claimed itself, so a run still in progress across an upgrade keeps its claim.
    """
    value = run.tags.get(CLAIM_TAG)
    return value == run.run_id or (value == "true" and run.parent_run_id is None)


def _claimants(instance: DagsterInstance) -> list[DagsterRun]:
    # In-progress runs are few; the claim tag's value differs per run, so the filter is here.
    return [run for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS)) if holds_claim(run)]


def _own_process(run: DagsterRun) -> str | None:
    """The process executing ``run``, where the run's tag names it (not one copied from a parent)."""
    return run.tags.get(PROCESS_TAG) if run.parent_run_id is None else None


def release_stale_runs(instance: DagsterInstance) -> list[DagsterRun]:
    """Report failed every in-progress retrain whose CLI process is gone; returns those runs."""
    candidates = [run for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS)) if run.job_name == RETRAIN_JOB or holds_claim(run)]
    stale = [run for run in candidates if (process := _own_process(run)) and _process_gone(process)]
    for run in stale:
        instance.report_run_failed(run, f"its process ({run.tags[PROCESS_TAG]}) is gone: it was killed or crashed")
    return stale


def retrain_under_way(instance: DagsterInstance, statuses: list[DagsterRunStatus] = UNDER_WAY) -> DagsterRun | None:
    """A retrain run queued or in progress, or any run writing the retrain assets (after releasing
    those whose process died), or None."""
    release_stale_runs(instance)
    runs = instance.get_runs(RunsFilter(job_name=RETRAIN_JOB, statuses=statuses), limit=1) or _claimants(instance)
    return runs[0] if runs else None


def _trigger(run: DagsterRun) -> str:
    if run.parent_run_id is not None:
        return f"a re-execution of run {run.parent_run_id}"  # its trigger tag, if any, is its parent's
    return run.tags.get("facepipeline/trigger") or run.tags.get("dagster/sensor_name") or "the UI or a CLI"


def _describe(run: DagsterRun) -> str:
    return f"run {run.run_id} ({run.job_name}, {_trigger(run)}) is {run.status.value.lower()}"


def claim_retrain(instance: DagsterInstance, run_id: str) -> None:
    """Claim the retrain assets for run ``run_id``, or raise :class:`RetrainBusy` before it writes.

    Called at the start of the first retrain step a run executes, and again by later ones (a run
    that holds the claim passes at once: one the process claimed or saw holding it, without reading
    the run storage again). See the module's docstring.
    """
    if run_id in _HELD:
        return
    if holds_claim(_fresh(instance, run_id)):
        _held(run_id)
        return
    root = Path(instance.root_directory)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / CLAIM_LOCK, timeout=120):
        release_stale_runs(instance)
        others = [run for run in _claimants(instance) if run.run_id != run_id]
        if others:
            raise RetrainBusy(
                f"{BUSY}: {_describe(others[0])}; this run stopped before writing anything "
                "(wait for that one, or cancel it in the Dagster UI)"
            )
        instance.add_run_tags(run_id, {CLAIM_TAG: run_id})
    _held(run_id)


_HELD: dict[str, None] = {}
"""Runs known in this process to hold the claim (a run keeps it until it ends): the latest 64."""


def _held(run_id: str) -> None:
    _HELD[run_id] = None
    if len(_HELD) > 64:
        del _HELD[next(iter(_HELD))]  # the one known longest


def _fresh(instance: DagsterInstance, run_id: str) -> DagsterRun:
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise FacePipelineError(f"run {run_id} is not in the instance's run storage")
    return run


def close_orphaned_sessions(instance: DagsterInstance, sessions: TrainingSessions, current_run_id: str) -> list[str]:
    """Close ``failed`` every training session still ``running`` whose run is over (killed, failed
    outside any step, canceled) or unknown to the instance; returns their ids.

    The run-failure sensor does this where the daemon runs; a CLI-only deployment has no daemon.
    """
    closed = []
    for record in sessions.history.open_records():
        if record.status != "running" or record.run_id == current_run_id or record.source != sessions.source:
            continue
        run = instance.get_run_by_id(record.run_id)
        if run is not None and not run.is_finished:
            continue
        status = run.status.value if run is not None else "UNKNOWN"
        error = f"run {record.run_id} ended ({status}) without closing its training session"
        if run is not None and run.status == DagsterRunStatus.FAILURE:
            error = f"run {record.run_id} failed: {_failure_reason(instance, run.run_id)}"
        sessions.finish(record.run_id, "failed", {"metrics": {"error": error, "run_id": record.run_id, "run_status": status}})
        closed.append(record.id)
    return closed


def _failure_reason(instance: DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return (events[-1].message if events else None) or "the run failed"


@contextmanager
def one_retrain_at_a_time(home: Path, instance: DagsterInstance) -> Iterator[dict[str, str]]:
    """For a retrain executed in this process: raises :class:`RetrainBusy` while another one is in
    progress; yields the tags the run must carry."""
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(home / "retrain.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RetrainBusy(f"{BUSY}: another facepipeline retrain is running with this home ({home}); wait for it") from None
    try:
        running = retrain_under_way(instance, IN_PROGRESS)
        if running is not None:
            what = "retrain run" if running.job_name == RETRAIN_JOB else f"run {running.job_name}"
            raise RetrainBusy(
                f"{BUSY}: {what} {running.run_id} ({_trigger(running)}) is {running.status.value.lower()}: "
                "wait for it, or cancel it in the Dagster UI"
            )
        yield {PROCESS_TAG: this_process(), "facepipeline/trigger": "cli"}
    finally:
        lock.release()
