"""New verified faces: a retrain once enough of them arrived, with the thresholds the config table has now.

Each tick reads ``auto_retrain_threshold`` and ``auto_retrain_percentage`` from the config table,
asks the source for verified faces no retrain has used or read yet (facepipeline.auto_retrain), and
requests an incremental retrain when they are enough. Nothing is requested while a retrain is
queued or running, whoever started it. The request's ``run_key`` is the fingerprint of those faces
(and the attempt), so the same faces never start two retrains; a retrain that failed is requested
again on a later tick, up to ``MAX_ATTEMPTS`` times for the same faces. Every skipped tick says why
in the UI.
"""

import json

from dagster import DefaultSensorStatus, RunRequest, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from facepipeline.auto_retrain import backlog, decide
from facepipeline.errors import FacePipelineError
from facepipeline.options import RetrainOptions
from jobs import retrain_job
from resources import ArtifactStoreResource, FaceSourceResource, options_run_config
from sensors.runs import last_run_failed, retrain_under_way

MAX_ATTEMPTS = 3
FACES_TAG = "facepipeline/new_faces"
"""The fingerprint of the new faces a run was requested for."""


def build_auto_retrain_sensor(interval_s: int) -> SensorDefinition:
    @sensor(
        name="auto_retrain",
        job=retrain_job,
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests an incremental retrain when enough verified faces no retrain has used arrive "
        "(auto_retrain_threshold or auto_retrain_percentage of the faces trained on, read from the config table each tick).",
    )
    def auto_retrain(context: SensorEvaluationContext, face_source: FaceSourceResource, artifacts: ArtifactStoreResource):
        try:
            source = face_source.open()
            config, _ = artifacts.config_store(source.description, face_source.gallery()).load()
            pending = backlog(source, artifacts.index_store())
        except FacePipelineError as exc:
            return SkipReason(f"cannot ask the source for new verified faces: {exc}")
        under_way = retrain_under_way(context.instance)
        if under_way is not None:
            return SkipReason(
                f"retrain run {under_way.run_id[:8]} is {under_way.status.value.lower()}: waiting for it "
                f"({pending.count} new verified faces meanwhile)"
            )
        decision = decide(pending, config)
        if not decision.due:
            return SkipReason(decision.reason)

        last = json.loads(context.cursor) if context.cursor else {}
        attempt = 1
        if last.get("faces") == pending.fingerprint:
            tags = {FACES_TAG: pending.fingerprint}
            if not last_run_failed(context.instance, retrain_job.name, tags):
                return SkipReason(f"a retrain was already requested for these {pending.count} new faces")
            if last.get("attempt", MAX_ATTEMPTS) >= MAX_ATTEMPTS:
                return SkipReason(
                    f"the retrain for these {pending.count} new faces failed {MAX_ATTEMPTS} times: not requested "
                    "again until more faces arrive (see the failed runs)"
                )
            attempt = last["attempt"] + 1
        context.log.info(f"{decision.reason}: requesting a retrain (attempt {attempt})")
        context.update_cursor(json.dumps({"faces": pending.fingerprint, "attempt": attempt, "count": pending.count}))
        return RunRequest(
            run_key=f"new-faces-{pending.fingerprint}-{attempt}",
            run_config=options_run_config(RetrainOptions(mode="incremental")),
            tags={
                FACES_TAG: pending.fingerprint,
                "facepipeline/trigger": "auto_retrain",
                "facepipeline/new_faces_count": str(pending.count),
                "facepipeline/attempt": str(attempt),
            },
        )

    return auto_retrain
