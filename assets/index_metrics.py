"""The index metrics: how well the new index names held-out faces, and which thresholds fit it."""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.gates import check_result
from facepipeline.calibration import calibrate, level_groups
from facepipeline.index import IndexStore, IndexVersion
from facepipeline.metrics import EvaluationConfig, ScoreCache, evaluate, gallery_scores
from facepipeline.plots import PER_PERSON_COLUMNS, per_person_rows
from facepipeline.quality import GateResult, baseline_evaluation, regression_gate
from resources import ArtifactStoreResource, FaceSourceResource, RetrainOptionsResource

NO_REGRESSION = AssetCheckSpec(
    "no_regression",
    asset="index_metrics",
    blocking=True,
    description="Rank-1 accuracy (micro and macro) no more than regression_tolerance below the promoted index's, "
    "both evaluated on the same held-out split.",
)


PER_PERSON_SCHEMA = TableSchema(
    columns=[
        TableColumn(name, type)
        for name, type in zip(PER_PERSON_COLUMNS, ("string", "string", "int", "int", "float", "float", "string"), strict=True)
    ]
)


@asset(group_name="retrain", code_version="5", kinds={"python"}, check_specs=[NO_REGRESSION])
def index_metrics(
    context: AssetExecutionContext,
    face_index: IndexVersion,
    retrain_options: RetrainOptionsResource,
    face_source: FaceSourceResource,
    artifacts: ArtifactStoreResource,
) -> Iterator[Output[dict] | AssetCheckResult]:
    """Held-out evaluation of this index version (its own vectors and labels), kept beside it, and
    the confidence thresholds per data level that meet the target false-accept rate.

    Both are read from one exact table of similarities (facepipeline.metrics.GalleryScores); the
    entries whose faces did not change since the last evaluation come from its cache (not in full
    mode), keyed by the exact vectors, so they are the numbers a fresh computation gives.

    Its blocking check ``no_regression`` compares this evaluation with the promoted version's, made
    with the same split and seed (facepipeline.quality.regression_gate). The plot of the sweep is
    the asset ``evaluation_plot``, drawn after the retrain.
    """
    claim_run(context)
    options = retrain_options.options()
    with failures_explained():
        source = face_source.open()
        config, _ = artifacts.config_store(source.description, face_source.gallery()).load()
    index = face_index.load()
    vectors, people, faces = index.vectors(), index.entries.column("person_id").to_pylist(), index.entries.column("face_id").to_pylist()
    evaluation_config = EvaluationConfig(test_fraction=options.test_fraction, seed=options.seed, target_far=options.target_far)
    scores = gallery_scores(
        vectors, people, evaluation_config, faces, group_by=level_groups(config.data_levels),
        cache=ScoreCache(artifacts.root / "cache" / "gallery_scores.npz"), reuse=options.mode != "full",
    )
    result = evaluate(vectors, people, evaluation_config, faces, scores=scores)
    metrics = {**result.as_dict(), "index_version": face_index.name, "run_id": context.run.run_id}
    calibration = None
    if result.status == "ok":
        calibration = calibrate(
            vectors, people, faces, levels=config.data_levels, configured=config.confidence_thresholds, config=evaluation_config,
            scores=scores,
        )
        metrics["calibration"] = calibration.as_dict()
        if calibration.warning:
            context.log.warning(f"{face_index.name}: {calibration.warning}")
    path = face_index.record_evaluation(context.run.run_id, metrics)
    names = dict(zip(people, index.entries.column("person_name").to_pylist(), strict=True))
    healthy = result.status == "ok" and result.target_met
    (context.log.info if healthy else context.log.warning)(
        f"{face_index.name}: {result.message} (face-to-person scores: {scores.computed} computed, {scores.reused} reused)"
    )
    numbers = {
        key: getattr(result, key)
        for key in ("rank1_accuracy", "rank1_accuracy_macro", "precision", "recall", "f1", "recommended_threshold", "far")
        if getattr(result, key) is not None
    }
    thresholds = {}
    if calibration is not None:
        thresholds = {
            "thresholds_by_level": MetadataValue.md(calibration.markdown()),
            "configured_thresholds_reject": calibration.configured_rejects,
            "thresholds_warning": MetadataValue.text(calibration.warning or "none"),
        }
    gate = _no_regression(metrics, face_index, artifacts.index_store(), config.regression_tolerance)
    (context.log.info if gate.passed else context.log.error)(f"{face_index.name}: {gate.summary}")
    face_index.record_check(NO_REGRESSION.name, {"passed": gate.passed, "summary": gate.summary, **gate.figures})
    yield Output(
        metrics,
        metadata={
            "status": result.status,
            "target_met": bool(result.target_met),
            "message": result.message,
            "index_version": face_index.name,
            **numbers,
            "probe_faces": result.probe_faces,
            "gallery_faces": result.gallery_faces,
            "person_scores_computed": scores.computed,
            "person_scores_reused": scores.reused,
            "threshold_sweep": MetadataValue.md(result.markdown()),
            **thresholds,
            **_per_person(metrics, names),
            "metrics_path": MetadataValue.path(str(path)),
        },
    )
    yield check_result(gate, NO_REGRESSION.name, candidate_version=face_index.name)


def _no_regression(metrics: dict, candidate: IndexVersion, store: IndexStore, tolerance: float) -> GateResult:
    promoted = store.promoted()
    if promoted is not None and promoted.version == candidate.version:
        return GateResult(True, f"{candidate.name} is the promoted version", {"tolerance": tolerance})
    baseline = baseline_evaluation(promoted, metrics["config"]) if promoted is not None else None
    return regression_gate(metrics, baseline, baseline_name=promoted.name if promoted else None, tolerance=tolerance)


def _per_person(metrics: dict, names: dict[str, str]) -> dict:
    """The per-person table, worst first (the plot is the asset evaluation_plot, drawn after the run)."""
    rows = per_person_rows(metrics, names)
    if not rows:
        return {}
    return {"per_person": MetadataValue.table([TableRecord(row) for row in rows], schema=PER_PERSON_SCHEMA)}
