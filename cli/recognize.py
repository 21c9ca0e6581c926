"""``facepipeline recognize`` and ``facepipeline clusters``: use the promoted model on the gallery.

Both run their assets on the persistent Dagster instance (``DAGSTER_HOME``), so the runs, their
metadata and the annotated photos are in the UI afterwards.
"""

from __future__ import annotations

import argparse

from dagster import DagsterInstance

from assets.partitions import event_partitions, partition_key_of
from cli.collector import collect_as_usual
from cli.main import UsageError, print_json
from cli.runs import CONSOLE_LOGS, first_error, materialization_metadata
from cli.sources import event_id_arg, open_configured_source, settings_for
from definitions import build_definitions
from facepipeline.clustering import ClusterStore
from facepipeline.errors import FacePipelineError
from facepipeline.gallery.base import Gallery
from facepipeline.index import IndexStore
from jobs import cluster_job, recognize_job

TOTALS = ("photos", "faces_found", "suggested", "unknown", "photos_without_faces", "photos_failed")


def recognize(args: argparse.Namespace) -> int:
    events = list(dict.fromkeys(event_id_arg(text) for text in args.event_ids or ()))  # before any work
    settings = settings_for(args)
    IndexStore(settings.home / "index").require_promoted()  # one clear error, not one per event
    if not events:
        source = open_configured_source(settings)
        if not isinstance(source, Gallery):
            raise UsageError(f"recognition needs a gallery database (embedded, postgres or supabase); {source.description} is a folder")
        events = [event.event_id for event in source.pending_events()]
    keys = [partition_key_of(event) for event in events]
    job = build_definitions(settings).resolve_job_def(recognize_job.name)
    summary: dict = {"status": "success", **dict.fromkeys(TOTALS, 0), "events": []}
    with DagsterInstance.get() as instance:
        collect_as_usual()  # the start-up is over (cli/collector.py)
        known = set(instance.get_dynamic_partitions(event_partitions.name))
        instance.add_dynamic_partitions(event_partitions.name, [key for key in keys if key not in known])
        for key in keys:
            result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False, run_config=CONSOLE_LOGS)
            if not result.success:
                summary["status"] = "failure"
                summary["events"].append({"event": key, "status": "failure", "run_id": result.run_id, "error": first_error(result)})
                continue
            found = materialization_metadata(result, "face_suggestions")
            for total in TOTALS:
                summary[total] += found[total]
            summary["events"].append({"event": key, "status": "success", "run_id": result.run_id,
                                      **{name: found[name] for name in (*TOTALS, "kept_existing", "rows_inserted",
                                                                       "rows_updated", "rows_unchanged", "index_version")}})
    if args.json:
        print_json(summary)
    else:
        print(f"recognized {len(keys)} events: {summary['photos']} photos, {summary['faces_found']} faces, "
              f"{summary['suggested']} suggested, {summary['unknown']} unknown, "
              f"{summary['photos_without_faces']} photos without faces, {summary['photos_failed']} photos failed")
        for event in summary["events"]:
            detail = event.get("error") or f"{event['suggested']} suggested, {event['rows_inserted']} rows written"
            print(f"  {event['event']}: {event['status']} ({detail})")
    return 0 if summary["status"] == "success" else 1


def clusters(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    store = ClusterStore(settings.home / "clusters")
    if args.action == "reject":
        if not args.cluster_id:
            raise UsageError("clusters reject needs a cluster id (see `facepipeline clusters`)")
        faces = store.reject(args.cluster_id, by="facepipeline clusters reject", reason=args.reason)
        print(f"rejected cluster {args.cluster_id}: its {len(faces)} faces are left out of every later clustering")
        return 0
    if args.action != "show":
        job = build_definitions(settings).resolve_job_def(cluster_job.name)
        with DagsterInstance.get() as instance:
            result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=CONSOLE_LOGS)
        if not result.success:
            raise FacePipelineError(f"clustering failed: {first_error(result)}")
    version = store.latest()
    if version is None:
        raise UsageError("no clustering yet: run `facepipeline clusters`")
    report = {"version": version.name, **version.manifest.get("summary", {}), "clusters": version.clusters()}
    if args.json:
        print_json(report)
        return 0
    print(f"clustering {version.name}: {len(report['clusters'])} clusters")
    for cluster in report["clusters"]:
        suggestion = cluster.get("suggested_person_name") or cluster.get("suggested_person_id")
        hint = f", looks like {suggestion} ({cluster['suggestion_similarity']:.2f})" if suggestion else ""
        print(f"  {cluster['cluster_id']}: {cluster['size']} faces{hint}: {', '.join(cluster['face_ids'][:8])}"
              + (" ..." if cluster["size"] > 8 else ""))
    return 0
