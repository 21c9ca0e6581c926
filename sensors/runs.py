"""What the sensors ask the run storage: the last run of a request, and whether a retrain is under way."""

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from jobs.run_guard import retrain_under_way


def last_run(instance: DagsterInstance, job_name: str, tags: dict[str, str]) -> DagsterRun | None:
    runs = instance.get_runs(RunsFilter(job_name=job_name, tags=tags), limit=1)
    return runs[0] if runs else None


def last_run_failed(instance: DagsterInstance, job_name: str, tags: dict[str, str]) -> bool:
    """True when the last run with ``tags`` failed (a run someone canceled is not retried)."""
    run = last_run(instance, job_name, tags)
    return run is not None and run.status == DagsterRunStatus.FAILURE


__all__ = ["last_run", "last_run_failed", "retrain_under_way"]
