"""The face descriptors: every embedded verified face written back to the gallery's photo_faces."""

import pyarrow as pa
from dagster import AssetExecutionContext, Failure, MetadataValue, Output, asset

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.metadata import counts_table, one_line
from facepipeline.faces import table_to_faces
from facepipeline.gallery.base import CoOccurrence, WriteBackFailed
from facepipeline.writeback import descriptor_updates
from resources import ArtifactStoreResource, FaceSourceResource, RetrainOptionsResource


@asset(group_name="retrain", code_version="1", kinds={"python", "postgres"})
def face_descriptors(
    context: AssetExecutionContext,
    verified_faces: pa.Table,
    face_embeddings: pa.Table,
    face_source: FaceSourceResource,
    retrain_options: RetrainOptionsResource,
    artifacts: ArtifactStoreResource,
) -> Output[dict]:
    """insightface_descriptor, _confidence, _bbox, training_used and training_context, per face.

    Batched, one transaction per batch; only verified rows still labelled and boxed as they were
    read are written, and only when a value changes, so a rerun writes nothing. A row the last
    write-back left as this update wants it, untouched since (the ledger, facepipeline.gallery.ledger),
    is not even read back. Rows the gallery
    deleted, un-verified, relabelled or re-boxed during the run are skipped and counted by reason;
    the next run reads them as they are then. A database lost, refusing or timing out part-way
    fails the step with the counts of the batches committed before; the next run writes the rest.
    """
    claim_run(context)
    with failures_explained():
        gallery = face_source.gallery()
        options = retrain_options.options()
    if gallery is None or not options.update_existing:
        reason = "the source has no database" if gallery is None else "update_existing is false"
        context.log.info(f"no write-back: {reason}")
        result = {"status": "skipped", "reason": reason}
        return Output(result, metadata={"status": "skipped", "reason": reason, "write_back": MetadataValue.json(result)})

    session = artifacts.history().for_run(context.run.run_id)
    with failures_explained():
        co_occurrence = CoOccurrence.from_labels(gallery.face_labels())
    updates, left_out = descriptor_updates(
        table_to_faces(verified_faces), face_embeddings, co_occurrence, session.id if session else None
    )

    def progress(report) -> None:
        context.log.info(f"{report.line()} ({report.batches_committed} batches committed)")

    with failures_explained():
        try:
            report = gallery.write_descriptors(
                updates, batch_size=face_source.write_batch_size, progress=progress, ledger=artifacts.writeback_ledger(gallery.description)
            )
        except WriteBackFailed as exc:  # a Failure that also says how far it got
            metadata = {"status": "interrupted", **exc.report.as_dict(), "left": exc.report.left,
                        "skipped_by_reason": MetadataValue.json(exc.report.skipped_by_reason)}
            raise Failure(description=f"{type(exc).__name__}: {exc}", metadata=metadata) from None
    if report.skipped_ids:
        changed = [f"{face_id} ({report.skip_reason_of.get(face_id, 'changed')})" for face_id in report.skipped_ids]
        context.log.warning(one_line(f"{len(changed)} face(s) changed in the gallery during the run, not written", changed))
    context.log.info(f"{report.line()}; {report.compared} rows compared, the others known to be up to date")
    result = {"status": "written", **report.as_dict(), "skipped_by_reason": report.skipped_by_reason, "left_out": dict(left_out)}
    return Output(
        result,
        metadata={
            "status": "written",
            "summary": report.line(),
            **report.as_dict(),
            "rows_compared": report.compared,
            "skipped_by_reason": counts_table("reason", report.skipped_by_reason, "rows"),
            "left_out": counts_table("reason", left_out, "faces"),
            "training_session_id": session.id if session else "none",
            "write_back": MetadataValue.json(result),
        },
    )
