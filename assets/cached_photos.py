"""The cached photos: each photo of the training set, fetched once and kept by content."""

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.metadata import markdown_table
from facepipeline.photos import records_to_table, redact_ref, summarize
from resources import ArtifactStoreResource, FaceSourceResource

@asset(group_name="retrain", io_manager_key="table_io_manager", code_version="1", kinds={"python", "parquet"})
def cached_photos(
    context: AssetExecutionContext, verified_faces: pa.Table, artifacts: ArtifactStoreResource, face_source: FaceSourceResource
) -> Output[pa.Table]:
    """Every photo of the verified faces, in the content-addressed cache; failures counted, never fatal.

    Only what the source's photo policy allows is fetched (facepipeline.photo_policy): a refused
    photo is a failed one, with its reason.
    """
    claim_run(context)
    refs = verified_faces.column("photo_ref").to_pylist()
    with failures_explained():
        policy = artifacts.photo_policy(face_source)
    context.log.info(f"photo policy: {policy.describe()}")

    def progress(done: int, total: int, failed: int) -> None:
        if done % 500 == 0 or done == total:
            context.log.info(f"photos {done}/{total}, {failed} failed")

    with artifacts.photo_cache(policy) as cache:
        records = cache.fetch_all(refs, progress=progress)
        cache_dir = str(cache.root)
    summary = summarize(records)
    failures = [r for r in records if not r.ok]
    for record in failures[:20]:
        context.log.warning(f"photo skipped: {redact_ref(record.ref)}: {record.error}")
    context.log.info(summary.line())
    return Output(
        records_to_table(records),
        metadata={
            "summary": summary.line(),
            "photos": summary.total,
            "photos_ok": summary.ok,
            "photos_failed": summary.failed,
            "photos_refused": summary.refused,
            "fetched": summary.fetched,
            "fetch_attempts": summary.attempts,
            "fetched_bytes": summary.fetched_bytes,
            "from_cache": summary.from_cache,
            "cache_dir": MetadataValue.path(cache_dir),
            "failures": markdown_table(["photo", "reason"], [(redact_ref(r.ref), r.error) for r in failures[:50]]),
        },
    )
