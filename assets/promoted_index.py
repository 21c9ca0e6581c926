"""The promoted index: the version recognition uses, switched to the new one once it passed its gates."""

from dagster import AssetCheckKey, AssetExecutionContext, AssetKey, DataVersion, DagsterInstance, MetadataValue, Output, asset

from assets.claims import claim_run
from facepipeline.index import IndexVersion
from resources import ArtifactStoreResource

NO_REGRESSION = AssetCheckKey(AssetKey("index_metrics"), "no_regression")


@asset(group_name="retrain", code_version="3", kinds={"python"})
def promoted_index(
    context: AssetExecutionContext, face_index: IndexVersion, index_metrics: dict, artifacts: ArtifactStoreResource
) -> Output[dict]:
    """Promotes the new index version once its blocking checks passed (Dagster runs this step only
    then), it was built from every verified face, its evaluation could be made, and its
    ``no_regression`` check passed for this very version. Otherwise the current version stays and
    the new one is kept for inspection (``facepipeline promote`` can still choose it).

    A retrain filtered to some events, people or dates indexes only them: promoting it would make
    recognition forget everyone else. The first version is promoted whatever its evaluation, since
    recognition needs one to start with.
    """
    claim_run(context)
    store = artifacts.index_store()
    current = store.promoted()
    if face_index.manifest.get("partial"):
        why_not = "the retrain was filtered (events, people or dates): its index does not know everyone"
    elif index_metrics.get("status") != "ok":
        why_not = f"its evaluation could not be made ({index_metrics.get('message')})"
    else:
        why_not = _regression_not_passed(context.instance, face_index)
    if current is None or why_not is None:
        reason = f"retrain run {context.run.run_id}: checks passed, evaluation {index_metrics.get('status')}"
        record = store.promote(face_index.version, reason=reason, by=f"dagster run {context.run.run_id}")
        previous = f"v{record['previous']}" if record["previous"] else "none"
        context.log.info(f"promoted {face_index.name} (was {previous})")
    else:
        record = {"version": current.version, "previous": current.version, "reason": f"{face_index.name} not promoted: {why_not}"}
        context.log.warning(f"{record['reason']}; recognition keeps {current.name}")
    promoted = store.get(record["version"])
    switched = promoted.version == face_index.version and record["previous"] != face_index.version
    return Output(
        {"promoted": promoted.name, "candidate": face_index.name, "switched": switched},
        data_version=DataVersion(promoted.name),
        metadata={
            "promoted_version": promoted.name,
            "candidate_version": face_index.name,
            "switched": switched,
            "action": "promote" if switched else "kept",
            "by": record.get("by", "dagster"),
            "reason": record["reason"],
            "model_pack": MetadataValue.text((promoted.model or {}).get("model_pack", "unknown")),
            "index_path": MetadataValue.path(str(promoted.path)),
        },
    )


def _regression_not_passed(instance: DagsterInstance, candidate: IndexVersion) -> str | None:
    """None when the latest ``no_regression`` evaluation of ``candidate`` passed, else why not."""
    for record in instance.event_log_storage.get_asset_check_execution_history(NO_REGRESSION, limit=50):
        evaluation = record.event.asset_check_evaluation if record.event else None
        if evaluation is None:
            continue
        version = evaluation.metadata.get("candidate_version")
        if version is not None and version.value == candidate.name:
            return None if evaluation.passed else f"its no_regression check failed ({evaluation.description})"
    return "its no_regression check has not run for it (materialize index_metrics with its checks)"
