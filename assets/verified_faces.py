"""The verified faces: every face people confirmed, with its person, photo and box, as filtered."""

from collections.abc import Iterator

import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, DataVersion, MetadataValue, Output, asset

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.gates import check_result
from assets.metadata import bullet_list, markdown_table, one_line
from assets.sessions import run_trains_model, training_sessions
from facepipeline.faces import faces_to_table, with_facts
from facepipeline.prepare import prepare_dataset
from facepipeline.quality import dataset_gate
from facepipeline.snapshots import snapshot_counts, snapshot_of
from jobs.run_guard import close_orphaned_sessions
from resources import ArtifactStoreResource, FaceSourceResource, RetrainOptionsResource


DATASET_VALID = AssetCheckSpec(
    "dataset_valid",
    asset="verified_faces",
    blocking=True,
    description="At least two people, each with the minimum number of faces; no face twice.",
)


@asset(
    group_name="retrain", io_manager_key="table_io_manager", code_version="3", kinds={"python", "parquet"},
    check_specs=[DATASET_VALID],
)
def verified_faces(
    context: AssetExecutionContext,
    face_source: FaceSourceResource,
    retrain_options: RetrainOptionsResource,
    artifacts: ArtifactStoreResource,
) -> Iterator[Output[pa.Table] | AssetCheckResult]:
    """The training set read from the source with the run's filters (SPEC section 3).

    Its blocking check ``dataset_valid``, evaluated in this step on the set just read, stops the
    retrain when the set cannot make an index. Every row read
    (also those left out, and why) is kept as the dataset snapshot, under the set's fingerprint. In
    a retrain run this step also opens the run's training session.

    First of all it claims the retrain assets for its run (jobs.run_guard.claim_retrain): beside
    another retrain in progress, whoever started either, this run fails here, having written
    nothing. Sessions that runs killed or lost left ``running`` are closed ``failed``.
    """
    claim_run(context)
    with failures_explained():
        options = retrain_options.options()
        source = face_source.open()
        sessions = training_sessions(face_source, artifacts)
        for session_id in close_orphaned_sessions(context.instance, sessions, context.run.run_id):
            context.log.warning(f"training session {session_id} was left running by a run that is over: closed failed")
        for session_id in sessions.sync_pending():
            context.log.info(f"training session {session_id}: its final state reached the gallery now")
        prepared = prepare_dataset(source, options, artifacts.config_store(source.description, face_source.gallery()))
    for note in prepared.notes:
        context.log.warning(note)
    stats, validation, read = prepared.stats, prepared.validation, prepared.read
    if validation.warnings:  # one line each: a gallery of 1,000 people can have hundreds
        context.log.warning(one_line(f"{len(validation.warnings)} people have few verified faces", validation.warnings))
    if read.rejected:
        context.log.warning(one_line(f"{len(read.rejected)} verified faces left out", [f"{r.face_id}: {r.reason}" for r in read.rejected]))

    session = None
    if run_trains_model(context):
        with failures_explained():
            session = sessions.start(
                context.run.run_id,
                {
                    "model_version": prepared.options.model_version,
                    "training_mode": prepared.options.mode,
                    "faces_count": stats.faces,
                    "people_count": stats.people,
                    "context_weight": prepared.options.context_weight,
                    "min_faces_per_person": prepared.options.min_faces_per_person,
                },
            )
        context.log.info(f"training session {session.id} is running")
    for error in validation.errors:
        context.log.error(f"{error}: the check dataset_valid stops this retrain")
    context.log.info(f"{stats.faces} verified faces of {stats.people} people from {source.description}")
    snapshot = snapshot_of(read)
    snapshot_path = artifacts.dataset_snapshots().write(prepared.fingerprint, snapshot)
    table = with_facts(
        faces_to_table(prepared.faces),
        dataset_fingerprint=prepared.fingerprint,
        min_faces_per_person=prepared.options.min_faces_per_person,
        partial=prepared.options.partial,
    )
    yield Output(
        table,
        data_version=DataVersion(prepared.fingerprint[:16]),
        metadata={
            "source": source.description,
            "people": stats.people,
            "faces": stats.faces,
            "faces_dropped_by_min_faces": read.dropped_by_min_faces,
            "people_added_as_co_occurring": read.added_as_co_occurring,
            "rows_rejected": len(read.rejected),
            "rejected_rows": markdown_table(["face", "reason"], [(r.face_id, r.reason) for r in read.rejected[:50]]),
            "min_faces_per_person": stats.min_faces_per_person,
            "max_faces_per_person": stats.max_faces_per_person,
            "avg_faces_per_person": stats.avg_faces_per_person,
            "people_by_face_count": markdown_table(["faces per person", "people"], list(stats.people_by_face_count.items())),
            "warnings": len(validation.warnings),
            "warning_details": bullet_list(validation.warnings),
            "options": MetadataValue.json(prepared.options.as_json()),
            "config_notes": bullet_list(prepared.notes),
            "training_session_id": MetadataValue.text(session.id if session else "none (not a retrain run)"),
            "dataset_fingerprint": MetadataValue.text(prepared.fingerprint),
            "dataset_snapshot": MetadataValue.path(str(snapshot_path)),
            **snapshot_counts(snapshot),
        },
    )
    yield check_result(dataset_gate(prepared.faces, prepared.options.min_faces_per_person), DATASET_VALID.name)
