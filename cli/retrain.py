"""Run the ``retrain`` job of the code location on the persistent instance and summarise it."""

from __future__ import annotations

from dagster import DagsterInstance

from definitions import build_definitions
from facepipeline.settings import Settings
from jobs import retrain_job


def retrain(settings: Settings, *, mode: str, min_faces_per_person: int, target_far: float) -> dict:
    job = build_definitions(settings).resolve_job_def(retrain_job.name)
    run_config = {
        "ops": {
            "verified_faces": {"config": {"min_faces_per_person": min_faces_per_person}},
            "face_embeddings": {"config": {"mode": mode}},
            "index_metrics": {"config": {"target_far": target_far}},
        },
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
    if not result.success:
        return {"status": "failure", "run_id": result.run_id, "error": _first_error(result)}

    def metadata(asset: str) -> dict:
        [materialization] = result.asset_materializations_for_node(asset)
        return {key: value.value for key, value in materialization.metadata.items()}

    embeddings, photos, index = metadata("face_embeddings"), metadata("cached_photos"), metadata("face_index")
    metrics = result.output_for_node("index_metrics")
    version = result.output_for_node("face_index")
    return {
        "status": "success",
        "run_id": result.run_id,
        "source": metadata("verified_faces")["source"],
        "mode": mode,
        "faces_total": embeddings["faces_total"],
        "faces_embedded": embeddings["faces_embedded"],
        "faces_reused": embeddings["faces_reused"],
        "faces_failed": embeddings["faces_failed"],
        "faces_per_second": embeddings["faces_per_second"],
        "photos_total": photos["photos"],
        "photos_fetched": photos["fetched"],
        "photos_failed": photos["photos_failed"],
        "people": index["people"],
        "index_version": version.name,
        "index_path": str(version.path),
        "metrics_path": str(version.path / "metrics.json"),
        "embeddings_path": embeddings["path"],
        "photo_cache": photos["cache_dir"],
        "model": version.manifest["model"],
        "metrics": {
            key: metrics.get(key)
            for key in (
                "status", "message", "rank1_accuracy", "rank1_accuracy_macro", "precision", "recall", "f1",
                "recommended_threshold", "far", "target_far", "target_met", "probe_faces", "gallery_faces",
            )
        },
    }


def _first_error(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            # A Failure raised on purpose carries its description; anything else, its message.
            user = event.step_failure_data.user_failure_data
            if user and user.description:
                return user.description
            while error is not None and error.cause is not None:
                error = error.cause  # the user's exception, not Dagster's wrapper
            return error.message.strip() if error else "step failed"
    return "run failed"
