"""The promoted index: the version recognition uses, switched to the new one once it is evaluated."""

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from facepipeline.index import IndexVersion
from resources import ArtifactStoreResource, RetrainOptionsResource


@asset(group_name="retrain", code_version="2", kinds={"python"})
def promoted_index(
    context: AssetExecutionContext,
    face_index: IndexVersion,
    index_metrics: dict,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Output[dict]:
    """Promotes the new index version when it was built from every verified face and its evaluation
    could be made; otherwise the current one stays and the new version is kept for inspection.

    A retrain filtered to some events, people or dates indexes only them: promoting it would make
    recognition forget everyone else. The first version is promoted whatever its evaluation, since
    recognition needs one to start with.
    """
    store = artifacts.index_store()
    current = store.promoted()
    options = retrain_options.options()
    if options.partial:
        why_not = "the retrain was filtered (events, people or dates): its index does not know everyone"
    elif index_metrics.get("status") != "ok":
        why_not = f"its evaluation could not be made ({index_metrics.get('message')})"
    else:
        why_not = None
    if current is None or why_not is None:
        reason = f"retrain run {context.run.run_id}: evaluation {index_metrics.get('status')}"
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
        metadata={
            "promoted_version": promoted.name,
            "candidate_version": face_index.name,
            "switched": switched,
            "reason": record["reason"],
            "model_pack": MetadataValue.text((promoted.model or {}).get("model_pack", "unknown")),
            "index_path": MetadataValue.path(str(promoted.path)),
        },
    )
