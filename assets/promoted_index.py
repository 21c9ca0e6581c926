"""The promoted index: the version recognition uses, switched to the new one once it is evaluated."""

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from facepipeline.index import IndexVersion
from resources import ArtifactStoreResource


@asset(group_name="retrain", code_version="1", kinds={"python"})
def promoted_index(
    context: AssetExecutionContext, face_index: IndexVersion, index_metrics: dict, artifacts: ArtifactStoreResource
) -> Output[dict]:
    """Promotes the new index version when its evaluation could be made; otherwise keeps the current one.

    The first version is promoted whatever its evaluation: recognition needs one to start with.
    """
    store = artifacts.index_store()
    current = store.promoted()
    evaluated = index_metrics.get("status") == "ok"
    if evaluated or current is None:
        reason = f"retrain run {context.run.run_id}: evaluation {index_metrics.get('status')}"
        record = store.promote(face_index.version, reason=reason, by=f"dagster run {context.run.run_id}")
        context.log.info(f"promoted {face_index.name} (was {'v' + str(record['previous']) if record['previous'] else 'none'})")
    else:
        record = {"version": current.version, "previous": current.version, "reason": "kept: the new version could not be evaluated"}
        context.log.warning(f"{face_index.name} not promoted ({index_metrics.get('message')}); recognition keeps {current.name}")
    promoted = store.get(record["version"])
    return Output(
        {"promoted": promoted.name, "candidate": face_index.name, "switched": promoted.version == face_index.version},
        metadata={
            "promoted_version": promoted.name,
            "candidate_version": face_index.name,
            "switched": promoted.version == face_index.version and record["previous"] != face_index.version,
            "reason": record["reason"],
            "model_pack": MetadataValue.text((promoted.model or {}).get("model_pack", "unknown")),
            "index_path": MetadataValue.path(str(promoted.path)),
        },
    )
