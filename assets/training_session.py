"""The training session: the run's record in face_training_sessions, closed with counts and metrics."""

from collections import Counter

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.claims import claim_run
from assets.sessions import training_sessions
from facepipeline.index import IndexVersion
from facepipeline.metrics import SUMMARY_KEYS
from resources import ArtifactStoreResource, FaceSourceResource, RetrainOptionsResource


# verified_faces is upstream for lineage and order only: its table is not needed here (the counts come
# from the embeddings), so it is not loaded again.
@asset(group_name="retrain", code_version="2", kinds={"python", "postgres"}, deps=["verified_faces"])
def training_session(
    context: AssetExecutionContext,
    cached_photos: pa.Table,
    face_embeddings: pa.Table,
    face_index: IndexVersion,
    index_metrics: dict,
    promoted_index: dict,
    face_descriptors: dict,
    face_source: FaceSourceResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Output[dict]:
    """Ends the run's session ``completed``: what was processed, what failed and why, how good it is."""
    claim_run(context)
    statuses = face_embeddings.column("status").to_pylist()
    failed_reasons = Counter(c for c, s in zip(face_embeddings.column("error_code").to_pylist(), statuses, strict=True) if s != "ok")
    # "HTTP 404", "not an image (html)", "request failed: timeout" -> "HTTP 404", "not an image", "request failed"
    photo_errors = Counter(e.split(":")[0].split(" (")[0] for e in cached_photos.column("error").to_pylist() if e)
    total, failed = face_embeddings.num_rows, sum(failed_reasons.values())
    model = face_index.manifest.get("model") or {}
    metrics = {
        "processed": f"processed {total - failed}/{total} faces ({failed} failed)",
        "faces_total": total,
        "faces_embedded": total - failed,
        "faces_failed": failed,
        "failure_reasons": dict(failed_reasons),
        "photos_total": cached_photos.num_rows,
        "photos_failed": sum(photo_errors.values()),
        "photo_failure_reasons": dict(photo_errors),
        "index_version": face_index.name,
        "promoted_version": promoted_index["promoted"],
        "promoted_now": promoted_index["switched"],
        "model_pack": model.get("model_pack"),
        "model_fingerprint": model.get("model_fingerprint"),
        "dataset_fingerprint": face_index.manifest.get("dataset_fingerprint"),
        "write_back": face_descriptors,
        "run_id": context.run.run_id,
        **{f"eval_{k}" if k in ("status", "message") else k: index_metrics.get(k) for k in SUMMARY_KEYS},
    }
    sessions = training_sessions(face_source, artifacts)
    existing = artifacts.history().for_run(context.run.run_id)
    model_version = (existing.fields.get("model_version") if existing else None) or f"{model.get('model_pack')}/{face_index.name}"
    if existing is None:  # not a run of the retrain job: the session is recorded now, whole
        config, _ = artifacts.config_store(sessions.source, face_source.gallery()).load()
        options = retrain_options.options().resolved(config)
        sessions.start(
            context.run.run_id,
            {"training_mode": options.mode, "context_weight": options.context_weight,
             "min_faces_per_person": options.min_faces_per_person, "model_version": options.model_version},
        )
    record, warning = sessions.finish(
        context.run.run_id,
        "completed",
        {"model_version": model_version, "metrics": metrics, "faces_count": total - failed,
         "people_count": face_index.manifest.get("people")},
    )
    if warning:
        context.log.warning(warning)
    context.log.info(f"training session {record.id} completed: {metrics['processed']}")
    return Output(
        {"session_id": record.id, "status": record.status, "synced": record.synced, **metrics},
        metadata={
            "training_session_id": MetadataValue.text(record.id),
            "model_version": model_version,
            "processed": metrics["processed"],
            "in_gallery": record.in_gallery,
            "synced_to_gallery": record.synced,
            "metrics": MetadataValue.json(metrics),
        },
    )
