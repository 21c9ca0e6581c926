"""New photos in the gallery: one partition per event, one recognition run per event with new photos.

Each tick asks the gallery which events have photos without a verified face, adds a partition for
an event it has not seen, and requests a run for each event whose set of such photos (a hash of
their ids), or the promoted index, changed since its last request. The cursor remembers, per event,
what was requested and how many times; a run that failed is requested again on a later tick, up to
``MAX_ATTEMPTS`` times for the same photos and index. The ``run_key`` (event, photos, index,
attempt) makes a repeated request a no-op even if the cursor were lost.
"""

import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.partitions import event_partitions, partition_key_of
from facepipeline.errors import FacePipelineError
from jobs import recognize_job
from resources import ArtifactStoreResource, FaceSourceResource
from sensors.runs import last_run_failed

MAX_ATTEMPTS = 3


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
    new_partitions, runs, gave_up = [], [], []
    for event in events:
        key = partition_key_of(event.event_id)
        if key not in known:
            new_partitions.append(key)
        state = f"{event.photos_fingerprint}|{promoted.name}"
        last = requested.get(key)
        if not isinstance(last, dict) or last.get("state") != state:
            attempt = 1
        elif last_run_failed(context.instance, recognize_job.name, {"dagster/partition": key}):
            if last.get("attempt", MAX_ATTEMPTS) >= MAX_ATTEMPTS:
                gave_up.append(key)
                continue
            attempt = last["attempt"] + 1
        else:
            continue
        requested[key] = {"state": state, "attempt": attempt}
        runs.append(RunRequest(partition_key=key, run_key=f"{key}|{state}|{attempt}",
                               tags={"facepipeline/event": event.name or key, "facepipeline/attempt": str(attempt)}))
    if gave_up:
        context.log.warning(f"recognition failed {MAX_ATTEMPTS} times for {', '.join(gave_up)}: not retried until their photos or the index change")
    if not runs and not new_partitions:
        return SkipReason(
            f"{len(events)} events have photos awaiting confirmation; none new since the last run (index {promoted.name})"
            + (f"; {len(gave_up)} failed {MAX_ATTEMPTS} times" if gave_up else "")
        )
    context.log.info(f"{len(runs)} events to recognize with {promoted.name}; {len(new_partitions)} new partitions")
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[event_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(requested, sort_keys=True),
    )

