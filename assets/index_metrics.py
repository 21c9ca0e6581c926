"""The index metrics: how well the new index names held-out faces, and at which threshold."""

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from facepipeline.index import IndexParams, IndexVersion
from facepipeline.metrics import EvaluationConfig, evaluate
from resources import RetrainOptionsResource


@asset(group_name="retrain", code_version="2", kinds={"python"})
def index_metrics(context: AssetExecutionContext, face_index: IndexVersion, retrain_options: RetrainOptionsResource) -> Output[dict]:
    """Held-out evaluation of this index version (its own vectors and labels), kept beside it."""
    config = retrain_options.options()
    index = face_index.load()
    result = evaluate(
        index.vectors(),
        index.entries.column("person_id").to_pylist(),
        EvaluationConfig(test_fraction=config.test_fraction, seed=config.seed, target_far=config.target_far),
        IndexParams(**face_index.manifest["params"]),
        face_ids=index.entries.column("face_id").to_pylist(),
    )
    metrics = {**result.as_dict(), "index_version": face_index.name, "run_id": context.run.run_id}
    path = face_index.record_evaluation(context.run.run_id, metrics)
    healthy = result.status == "ok" and result.target_met
    (context.log.info if healthy else context.log.warning)(f"{face_index.name}: {result.message}")
    numbers = {
        key: getattr(result, key)
        for key in ("rank1_accuracy", "rank1_accuracy_macro", "precision", "recall", "f1", "recommended_threshold", "far")
        if getattr(result, key) is not None
    }
    return Output(
        metrics,
        metadata={
            "status": result.status,
            "target_met": bool(result.target_met),
            "message": result.message,
            "index_version": face_index.name,
            **numbers,
            "probe_faces": result.probe_faces,
            "gallery_faces": result.gallery_faces,
            "threshold_sweep": MetadataValue.md(result.markdown()),
            "metrics_path": MetadataValue.path(str(path)),
        },
    )
