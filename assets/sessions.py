"""The training session of a retrain run: opened by its first step, closed by its last, or failed.

A run "trains" when it materializes ``training_session``; previews of single assets open none.
"""

from dagster import AssetExecutionContext, AssetKey, DagsterEventType, DagsterInstance, HookContext, failure_hook
from dagster._core.errors import DagsterAssetCheckFailedError

from facepipeline.sessions import TrainingSessions
from resources import ArtifactStoreResource, FaceSourceResource

TRAINING_SESSION = AssetKey("training_session")


def training_sessions(face_source: FaceSourceResource, artifacts: ArtifactStoreResource) -> TrainingSessions:
    return TrainingSessions(artifacts.history(), face_source.gallery(), face_source.open().description)


RETRAIN_JOB = "retrain"


def run_trains_model(context: AssetExecutionContext) -> bool:
    """True in runs of the ``retrain`` job that include ``training_session``.

    Only that job carries the failure hook that closes a session its run opened; elsewhere (the
    asset graph's "Materialize") ``training_session`` records its session itself, at the end.
    """
    if context.job_def.name != RETRAIN_JOB:
        return False
    # A run of a whole job has an empty selection: everything the job holds.
    selection = context.run.asset_selection or context.job_def.asset_layer.executable_asset_keys
    return TRAINING_SESSION in selection


@failure_hook(required_resource_keys={"face_source", "artifacts"})
def mark_session_failed(context: HookContext) -> None:
    """A failed step ends its run's training session ``failed``, with the error in ``metrics``."""
    history = context.resources.artifacts.history()
    if history.for_run(context.run_id) is None:
        return  # this run opened no session (a preview, or the database was down at start)
    error = context.op_exception
    if isinstance(error, DagsterAssetCheckFailedError):
        message = failed_checks(context.instance, context.run_id) or str(error)
    else:
        message = getattr(error, "description", None) or (f"{type(error).__name__}: {error}" if error else "step failed")
    sessions = training_sessions(context.resources.face_source, context.resources.artifacts)
    record, warning = sessions.finish(
        context.run_id, "failed", {"metrics": {"error": message, "failed_step": _asset_step(context.step_key), "run_id": context.run_id}}
    )
    context.log.error(f"training session {record.id} failed: {message}")
    if warning:
        context.log.warning(warning)


def failed_checks(instance: DagsterInstance, run_id: str) -> str | None:
    """What the run's failed blocking checks said, one clause each: "check no_regression failed: ..."."""
    entries = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    return describe_failed_checks(entry.asset_check_evaluation for entry in entries)


def describe_failed_checks(evaluations) -> str | None:
    """The failed blocking ones among ``evaluations`` (AssetCheckEvaluation, None skipped), one clause each."""
    said = [
        f"check {evaluation.check_name} failed: {evaluation.description}"
        for evaluation in evaluations
        if evaluation is not None and not evaluation.passed and evaluation.blocking
    ]
    return "; ".join(said) or None


def _asset_step(step_key: str) -> str:
    """The asset a step belongs to: ``face_embeddings.embed_event[event_x]`` -> ``face_embeddings``."""
    return step_key.split(".", 1)[0].split("[", 1)[0]
