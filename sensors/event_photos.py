"""New photos in the gallery: one partition per event, one recognition run per event with new photos.

Each tick asks the gallery which events have photos without a verified face, adds a partition for
an event it has not seen, and requests a run for each event whose newest photo, or the promoted
index, changed since the last request. The cursor remembers, per event, what was requested; the
``run_key`` makes a request for the same photos and index a no-op even if the cursor is lost.
"""

import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.partitions import event_partitions, partition_key_of
from facepipeline.errors import FacePipelineError
from jobs import recognize_job
from resources import ArtifactStoreResource, FaceSourceResource


@sensor(
    job=recognize_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds an events partition for each event with new photos and recognizes them with the promoted index.",
)
def new_event_photos(context: SensorEvaluationContext, face_source: FaceSourceResource, artifacts: ArtifactStoreResource):
    promoted = artifacts.index_store().promoted()
    if promoted is None:
        return SkipReason("no promoted index yet: the first retrain promotes one")
    try:
        gallery = face_source.gallery()
        if gallery is None:
            return SkipReason(f"{face_source.open().description} is a folder of verified faces: it has no new photos")
        events = gallery.pending_events()
    except FacePipelineError as exc:
        return SkipReason(f"cannot ask the gallery for new photos: {exc}")

    requested = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(event_partitions.name))
    new_partitions, runs = [], []
    for event in events:
        key = partition_key_of(event.event_id)
        if key not in known:
            new_partitions.append(key)
        state = f"{event.latest_photo_at}|{promoted.name}"
        if requested.get(key) != state:
            requested[key] = state
            runs.append(RunRequest(partition_key=key, run_key=f"{key}|{state}", tags={"facepipeline/event": event.name or key}))
    if not runs and not new_partitions:
        return SkipReason(f"{len(events)} events have photos awaiting confirmation; none new since the last run (index {promoted.name})")
    context.log.info(f"{len(runs)} events to recognize with {promoted.name}; {len(new_partitions)} new partitions")
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[event_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(requested, sort_keys=True),
    )
