"""The face embeddings: one ArcFace vector per verified face, only new work redone."""

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.errors import failures_explained
from assets.metadata import counts_table
from facepipeline.embedding import Progress, stage_fingerprint
from facepipeline.embedding_store import update_embeddings
from facepipeline.faces import table_to_faces
from facepipeline.photos import records_by_ref
from resources import ArtifactStoreResource, FaceModelResource, RetrainOptionsResource, table_name


@asset(group_name="retrain", io_manager_key="table_io_manager", code_version="2", kinds={"python", "onnx", "parquet"})
def face_embeddings(
    context: AssetExecutionContext,
    verified_faces: pa.Table,
    cached_photos: pa.Table,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Output[pa.Table]:
    """Detect each verified face on its photo, align it, embed it; reuse what is unchanged."""
    with failures_explained():
        mode = retrain_options.options().mode
        model = face_model.load()
    photos = records_by_ref(cached_photos)
    previous = artifacts.tables().read(table_name(context.asset_key))

    def progress(state: Progress) -> None:
        context.log.info(state.line())

    with artifacts.photo_cache() as cache:
        table, report = update_embeddings(
            model, table_to_faces(verified_faces), photos, cache.read, previous, mode=mode, progress=progress
        )
    context.log.info(f"{report.line()} in {report.seconds:.1f}s ({report.faces_per_second:.1f} faces/s)")
    return Output(
        table,
        metadata={
            "summary": report.line(),
            "mode": mode,
            "faces_total": report.faces_total,
            "faces_embedded": report.embedded,
            "faces_reused": report.reused,
            "faces_failed": report.failed,
            "faces_failed_before": report.failed_before,
            "embed_seconds": round(report.seconds, 2),
            "faces_per_second": round(report.faces_per_second, 1),
            "failure_reasons": counts_table("reason", report.failure_reasons, "faces"),
            "model_pack": model.pack.name,
            "model_fingerprint": MetadataValue.text(model.pack.fingerprint),
            "stage_fingerprint": MetadataValue.text(stage_fingerprint(model)),
            "recognizer_sha256": MetadataValue.text(model.pack.recognizer.sha256),
            "detector_sha256": MetadataValue.text(model.pack.detector.sha256),
            "providers": ", ".join(model.providers),
            "embedding_dim": model.embedding_dim,
        },
    )
