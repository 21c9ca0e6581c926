"""The face embeddings: one ArcFace vector per verified face, only new work redone, events side by side.

split_by_event -> embed_event (one step per event with faces to embed) -> combine_embeddings

Each event with work is a step of its own, so Dagster's multiprocess executor (or dagster-celery,
or dagster-k8s) embeds events in parallel processes; ``combine_embeddings`` adds the reused rows
and lays everything out as one table, the same as embedding all faces in one step would give.

Every step journals the rows it makes as it goes (facepipeline.embedding_journal): a run killed
in the middle loses at most a batch of faces, and the next run resumes from the journal.
``split_by_event`` first claims the retrain assets for its run (jobs.run_guard): a run beside
another retrain stops there, before writing anything.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetKey,
    Config,
    DynamicOut,
    DynamicOutput,
    HookContext,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    graph_asset,
    op,
    success_hook,
)
from pydantic import Field

from assets.claims import claim_run
from assets.errors import failures_explained
from assets.metadata import counts_table, markdown_table
from facepipeline.embedding import Progress, stage_fingerprint
from facepipeline.embedding_journal import EmbeddingJournal
from facepipeline.embedding_shards import combine, plan_shards, total_report
from facepipeline.embedding_store import (
    EmbeddingReport,
    embeddings_schema,
    faces_to_embed,
    read_keys,
    reusable_keys,
    update_embeddings,
)
from facepipeline.faces import VerifiedFace, table_to_faces
from facepipeline.model.face_model import FaceModel
from facepipeline.photos import records_by_ref
from resources import ArtifactStoreResource, FaceModelResource, RetrainOptionsResource, table_name

FACE_EMBEDDINGS = AssetKey("face_embeddings")
JOURNAL_DIR = "embedding_journal"
"""Under FACEPIPELINE_HOME: the rows of embedding steps that have not been published yet."""


class ShardConfig(Config):
    max_shards: int = Field(
        default=16, ge=1, le=1024,
        description="At most this many embedding steps; events beyond it share steps (largest first, balanced by faces).",
    )
    min_faces_per_shard: int = Field(
        default=200, ge=1,
        description=(
            "No more steps than give each this many faces on average: a step costs ~0.3 s in-process and ~8 s of "
            "process start and model load in a multiprocess run, so a few new faces are embedded in one step."
        ),
    )


@op(out=DynamicOut(list), tags={"kind": "python"})
def split_by_event(
    context: OpExecutionContext,
    config: ShardConfig,
    verified_faces: pa.Table,
    cached_photos: pa.Table,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
):
    """One shard of face ids per event with faces to embed; events whose faces are all reused need none."""
    claim_run(context)
    with failures_explained():
        model, mode = face_model.load(), retrain_options.options().mode
    faces = table_to_faces(verified_faces)
    previous_keys = read_keys(_published(artifacts), embeddings_schema(model.embedding_dim))  # not the vectors: combine reads those
    journal = journal_of(artifacts, model)
    pruned = journal.prune(reusable_keys(previous_keys), compact=True)  # no step of this stage is writing yet
    journalled = journal.rows()
    if pruned or journalled:
        context.log.info(f"embedding journal: {pruned} rows already published dropped, {journalled} rows of an unfinished run to resume from")
    pending = faces_to_embed(model, faces, records_by_ref(cached_photos), previous_keys, mode=mode, journal=journal)
    shards = plan_shards(faces, pending, config.max_shards, config.min_faces_per_shard)
    context.log.info(f"{len(pending)} of {len(faces)} faces to embed ({mode}), in {len(shards)} step(s) by event")
    for shard in shards:
        yield DynamicOutput(list(shard.face_ids), mapping_key=shard.key, metadata={"faces": len(shard.face_ids), "events": len(shard.event_ids)})


@op(tags={"kind": "onnx"})
def embed_event(
    context: OpExecutionContext,
    face_ids: list,
    verified_faces: pa.Table,
    cached_photos: pa.Table,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Output[tuple]:
    """Detect, align and embed one shard's faces on their cached photos: (shard key, rows, report)."""
    shard = verified_faces.filter(pc.is_in(verified_faces.column("face_id"), pa.array(face_ids, pa.string())))
    faces = table_to_faces(shard)  # this shard's rows only: 25 new faces need not convert 5,000
    # split_by_event found nothing to reuse for these in the published table: only the journal counts.
    table, report = _update(context, faces, cached_photos, face_model, artifacts, retrain_options, previous=None)
    context.log.info(f"{report.line()} in {report.seconds:.1f}s ({report.faces_per_second:.1f} faces/s)")
    return Output((context.get_mapping_key(), table, report), metadata={"faces_embedded": report.embedded, "faces_resumed": report.resumed,
                                             "faces_failed": report.failed,
                                             "faces_per_second": round(report.faces_per_second, 1)})


@op(out=Out(io_manager_key="table_io_manager"), tags={"kind": "parquet"})
def combine_embeddings(
    context: OpExecutionContext,
    shards: list,
    verified_faces: pa.Table,
    cached_photos: pa.Table,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
) -> Output[pa.Table]:
    """The shards' rows and the reused ones, in the order of the verified faces."""
    faces = table_to_faces(verified_faces)
    embedded = {face_id for _, table, _ in shards for face_id in table.column("face_id").to_pylist()}
    rest = [face for face in faces if face.face_id not in embedded]  # reused, or failed for want of a photo
    rest_table, rest_report = _update(context, rest, cached_photos, face_model, artifacts, retrain_options, previous=_previous(artifacts))
    table = combine([part for _, part, _ in shards] + [rest_table], faces)
    report = total_report([shard_report for _, _, shard_report in shards] + [rest_report])
    report.faces_total = len(faces)
    model = face_model.load()
    context.log.info(f"{report.line()} in {len(shards)} step(s); {report.seconds:.1f}s of embedding ({report.faces_per_second:.1f} faces/s per step)")
    return Output(table, metadata={**_metadata(report, retrain_options.options().mode, model), **_shard_metadata(shards)})


@success_hook(required_resource_keys={"artifacts"})
def prune_embedding_journal(context: HookContext) -> None:
    """Once ``combine_embeddings`` succeeded (its table written by the IO manager), the journal rows
    that table holds are dropped."""
    artifacts = context.resources.artifacts
    dropped = journal_of(artifacts, None).prune(published_keys(artifacts))
    if dropped:
        context.log.info(f"embedding journal: {dropped} rows dropped, the published face_embeddings table holds them")


@graph_asset(group_name="retrain", code_version="3", kinds={"python", "onnx", "parquet"})
def face_embeddings(verified_faces: pa.Table, cached_photos: pa.Table) -> pa.Table:
    """Detect each verified face on its photo, align it, embed it; reuse what is unchanged; events side by side."""
    shards = split_by_event(verified_faces, cached_photos).map(lambda ids: embed_event(ids, verified_faces, cached_photos))
    return combine_embeddings.with_hooks({prune_embedding_journal})(shards.collect(), verified_faces, cached_photos)


def _previous(artifacts: ArtifactStoreResource) -> pa.Table | None:
    return artifacts.tables().read(table_name(FACE_EMBEDDINGS))


def _published(artifacts: ArtifactStoreResource) -> Path:
    return artifacts.tables().path(table_name(FACE_EMBEDDINGS))


def journal_of(artifacts: ArtifactStoreResource, model: FaceModel | None) -> EmbeddingJournal:
    """The embedding journal of ``model``'s stage; with no model, of every stage (to prune it)."""
    return EmbeddingJournal(artifacts.root / JOURNAL_DIR, stage_fingerprint(model) if model is not None else None)


def published_keys(artifacts: ArtifactStoreResource) -> set[str]:
    """The reusable keys of the published face_embeddings table (only its key columns are read)."""
    return reusable_keys(read_keys(_published(artifacts)))


def _update(
    context: OpExecutionContext,
    faces: list[VerifiedFace],
    cached_photos: pa.Table,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
    retrain_options: RetrainOptionsResource,
    *,
    previous: pa.Table | None,
) -> tuple[pa.Table, EmbeddingReport]:
    with failures_explained():
        model, mode = face_model.load(), retrain_options.options().mode

    def progress(state: Progress) -> None:
        context.log.info(state.line())

    with artifacts.photo_cache() as cache:
        return update_embeddings(
            model, faces, records_by_ref(cached_photos), cache.read, previous, mode=mode, progress=progress,
            journal=journal_of(artifacts, model),
        )


def _metadata(report: EmbeddingReport, mode: str, model: FaceModel) -> dict:
    return {
        "summary": report.line(),
        "mode": mode,
        "faces_total": report.faces_total,
        "faces_embedded": report.embedded,
        "faces_reused": report.reused,
        "faces_resumed": report.resumed,
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
    }


def _shard_metadata(shards: list) -> dict:
    rows = [(key, str(table.num_rows), str(report.embedded), str(report.failed), f"{report.seconds:.1f}")
            for key, table, report in sorted(shards, key=lambda shard: shard[0])]
    return {
        "embedding_steps": len(shards),
        "steps": markdown_table(["step", "faces", "embedded", "failed", "seconds"], rows) if rows else MetadataValue.md("no face needed embedding"),
    }
