"""Face suggestions: every face on an event's new photos, named from the promoted index when it is
sure enough, written to the gallery as suggestions for people to confirm."""

import base64

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.errors import failures_explained
from assets.metadata import bullet_list, counts_table
from assets.partitions import event_id_of, event_partitions
from assets.promoted_index import promoted_index
from facepipeline.event_recognition import EventRecognition, recognize_event, written_ids
from facepipeline.gallery.base import CoOccurrence
from facepipeline.recognition import ContextPrior, RecognitionPolicy, Recognizer
from resources import ArtifactStoreResource, FaceModelResource, FaceSourceResource, table_name


@asset(
    group_name="recognize",
    partitions_def=event_partitions,
    deps=[promoted_index],
    io_manager_key="table_io_manager",
    code_version="1",
    kinds={"python", "postgres"},
)
def face_suggestions(
    context: AssetExecutionContext,
    face_source: FaceSourceResource,
    face_model: FaceModelResource,
    artifacts: ArtifactStoreResource,
) -> Output[pa.Table]:
    """Recognizes the faces on the event's photos that have no verified face yet; one row per face
    (and per photo without a face, or that failed), the suggestions written to ``photo_faces``."""
    event_id = event_id_of(context.partition_key)
    with failures_explained():
        gallery = face_source.require_gallery("recognition")
        config, notes = artifacts.config_store(gallery.description, gallery).load()
        version = artifacts.index_store().require_promoted()
        policy = RecognitionPolicy(config.confidence_thresholds, config.data_levels, config.context_weight)
        co_occurrence = CoOccurrence.from_labels(gallery.face_labels())
        recognizer = Recognizer(face_model.load(), version, policy, ContextPrior(co_occurrence))
        for note in notes:
            context.log.warning(note)
        context.log.info(f"recognizing with index {version.name} ({len(recognizer.index)} faces of {len(recognizer.directory.counts)} people)")
        with artifacts.photo_cache(artifacts.photo_policy(face_source)) as cache:  # the source's photo hosts only
            result = recognize_event(
                gallery,
                cache,
                recognizer,
                event_id,
                nearby=set(co_occurrence.event_people.get(event_id or "", ())),
                row_context={"index_version": version.name, "model_pack": (version.model or {}).get("model_pack")},
                # The rows earlier runs wrote: one that is gone now was deleted by a person, and stays so.
                written_before=written_ids(artifacts.tables().read(table_name(context.asset_key, context.partition_key))),
                log=context.log.info,
            )
    summary = result.summary()
    context.log.info(
        f"{summary['photos']} photos: {summary['faces_found']} faces, {summary['suggested']} suggested, "
        f"{summary['unknown']} unknown, {summary['photos_without_faces']} without faces, {summary['photos_failed']} failed; "
        f"rows {result.written.as_dict()}"
    )
    return Output(
        result.table,
        metadata={
            **{key: value for key, value in summary.items() if key not in ("written", "event_id")},
            "event_id": MetadataValue.text(event_id or "none (photos without an event)"),
            "rows_inserted": result.written.inserted,
            "rows_updated": result.written.updated,
            "rows_unchanged": result.written.unchanged,
            "rows_skipped": result.written.skipped,
            "photos_without_faces_list": bullet_list(result.photos_without_faces),
            "photo_failures": counts_table("reason", dict(result.failures), "photos"),
            "index_version": version.name,
            "thresholds": MetadataValue.json({**policy.thresholds.__dict__, "context_weight": policy.context_weight,
                                              "data_levels": config.data_levels.describe()}),
            "annotated_photos": _annotated(result, artifacts, context.partition_key),
        },
    )


def _annotated(result: EventRecognition, artifacts: ArtifactStoreResource, partition_key: str) -> MetadataValue:
    """The sample of drawn photos: saved beside the tables, and shown inline in the UI."""
    folder = artifacts.root / "annotated" / partition_key
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for photo_id, jpeg in result.annotated:
        (folder / f"{photo_id}.jpg").write_bytes(jpeg)
        lines.append(f"**{photo_id}**\n\n![{photo_id}](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})\n")
    lines.append(f"All drawn photos: `{folder}`")
    return MetadataValue.md("\n".join(lines))
