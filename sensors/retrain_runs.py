"""Retrain runs that end badly: their training session is closed ``failed``, whatever ended them.

The retrain job's failure hook closes the session when a step fails. These sensors cover the rest:
a run that failed outside any step (its worker died, it could not be launched, a resource could
not be built) and a run someone canceled. A session already closed is left as it is.
"""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    run_failure_sensor,
    run_status_sensor,
)

from assets.sessions import training_sessions
from jobs import retrain_job
from resources import ArtifactStoreResource, FaceSourceResource


def close_session(
    run_id: str, status: str, error: str, face_source: FaceSourceResource, artifacts: ArtifactStoreResource
) -> str:
    """Close the run's session ``failed`` if it is still ``running``; returns what was done, for the log."""
    record = artifacts.history().for_run(run_id)
    if record is None:
        return f"run {run_id[:8]} opened no training session"
    if record.status != "running":
        return f"training session {record.id} is already {record.status}"
    sessions = training_sessions(face_source, artifacts)
    closed, warning = sessions.finish(run_id, "failed", {"metrics": {"error": error, "run_id": run_id, "run_status": status}})
    return f"training session {closed.id} failed: {error}" + (f" ({warning})" if warning else "")


def _failure_message(context: RunFailureSensorContext) -> str:
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        if error is not None:
            return f"step {event.step_key} failed: {error.message.strip()}"
    return context.failure_event.message or "the run failed"


def build_retrain_run_sensors(interval_s: int) -> list[SensorDefinition]:
    @run_failure_sensor(
        name="retrain_run_failed",
        monitored_jobs=[retrain_job],
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks the training session of a failed retrain run failed, with the error, also when the "
        "failure happened outside the assets' own code.",
    )
    def retrain_run_failed(context: RunFailureSensorContext, face_source: FaceSourceResource, artifacts: ArtifactStoreResource):
        context.log.info(close_session(context.dagster_run.run_id, "FAILURE", _failure_message(context), face_source, artifacts))

    @run_status_sensor(
        name="retrain_run_canceled",
        run_status=DagsterRunStatus.CANCELED,
        monitored_jobs=[retrain_job],
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks the training session of a canceled retrain run failed.",
    )
    def retrain_run_canceled(context: RunStatusSensorContext, face_source: FaceSourceResource, artifacts: ArtifactStoreResource):
        message = "the run was canceled before it finished"
        context.log.info(close_session(context.dagster_run.run_id, "CANCELED", message, face_source, artifacts))

    return [retrain_run_failed, retrain_run_canceled]
