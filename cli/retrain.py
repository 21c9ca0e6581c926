"""``facepipeline retrain``: the ``retrain`` job on the persistent instance, summarised."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dagster import execute_job, reconstructable

from cli.collector import collect_as_usual
from cli.main import print_json
from cli.runs import CONSOLE_LOGS, first_error, materialization_metadata
from cli.sources import options_from, settings_for
from definitions import retrain_job_from_environment
from facepipeline.metrics import SUMMARY_KEYS
from facepipeline.settings import Settings
from jobs.run_guard import one_retrain_at_a_time, open_instance
from resources import ArtifactStoreResource, options_run_config


def run(args: argparse.Namespace) -> int:
    options = options_from(args, "mode", "model_version", "update_existing", "target_far")  # before any work
    summary = retrain(settings_for(args), options_run_config(options))
    if args.json:
        print_json(summary)
        if summary.get("thresholds_warning"):
            print(f"facepipeline: warning: {summary['thresholds_warning']}", file=sys.stderr)
    else:
        print(_human_summary(summary))
    return 0 if summary["status"] == "success" else 1


def retrain(settings: Settings, run_config: dict) -> dict:
    """Run the retrain job in this process on the persistent instance and summarise it.

    ``execute_job`` on the reconstructable job (rather than ``execute_in_process``, which keeps every
    step's output until the run ends): memory stays that of the largest step. The job is rebuilt from
    the environment, so the source chosen on the command line goes there first.
    """
    os.environ["FACEPIPELINE_SOURCE"] = settings.source
    if Settings.from_env() != settings:
        raise RuntimeError("the retrain job's settings must come from the environment")
    run_config = {**run_config, **CONSOLE_LOGS, "execution": {"config": {"in_process": {}}}}
    with open_instance() as instance, one_retrain_at_a_time(settings.home, instance) as tags:
        collect_as_usual()  # the start-up is over (cli/collector.py)
        with execute_job(reconstructable(retrain_job_from_environment), instance, run_config=run_config, tags=tags) as result:
            session = _session_of(settings, result.run_id)
            if not result.success:
                return {"status": "failure", "run_id": result.run_id, "error": first_error(result), "training_session": session}
            return _success_summary(settings, result, session)


def _success_summary(settings: Settings, result, session: dict | None) -> dict:
    """From the run's materializations and the files of the index version it made."""

    def metadata(asset: str) -> dict:
        return materialization_metadata(result, asset)

    embeddings, photos = metadata("face_embeddings"), metadata("cached_photos")
    version = ArtifactStoreResource(home=str(settings.home)).index_store().named(metadata("face_index")["index_version"])
    metrics = json.loads((version.path / "evaluations" / f"{result.run_id}.json").read_text())
    return {
        "status": "success",
        "run_id": result.run_id,
        "source": metadata("verified_faces")["source"],
        "mode": embeddings["mode"],
        "faces_total": embeddings["faces_total"],
        "faces_embedded": embeddings["faces_embedded"],
        "faces_reused": embeddings["faces_reused"],
        "faces_resumed": embeddings.get("faces_resumed", 0),
        "faces_failed": embeddings["faces_failed"],
        "faces_per_second": embeddings["faces_per_second"],
        "photos_total": photos["photos"],
        "photos_fetched": photos["fetched"],
        "photos_failed": photos["photos_failed"],
        "people": version.manifest["people"],
        "index_version": version.name,
        "promoted_index": metadata("promoted_index")["promoted_version"],
        "index_path": str(version.path),
        "metrics_path": str(version.path / "metrics.json"),
        "embeddings_path": embeddings["path"],
        "photo_cache": photos["cache_dir"],
        "model": version.manifest["model"],
        "write_back": metadata("face_descriptors")["write_back"],
        "training_session": session,
        "metrics": {key: metrics.get(key) for key in SUMMARY_KEYS},
        "thresholds_warning": (metrics.get("calibration") or {}).get("warning"),
    }


def _session_of(settings: Settings, run_id: str) -> dict | None:
    from facepipeline.sessions import SessionHistory

    record = SessionHistory(settings.home / "history").for_run(run_id)
    if record is None:
        return None
    return {"id": record.id, "status": record.status, "synced_to_gallery": record.synced, "in_gallery": record.in_gallery,
            "error": record.error}


def _human_summary(summary: dict) -> str:
    session = summary.get("training_session") or {}
    if summary["status"] != "success":
        lines = [f"retrain failed: {summary['error']}", f"  run: {summary['run_id']}"]
        if session:
            lines.append(f"  training session {session['id']}: {session['status']}")
        return "\n".join(lines)
    metrics = summary["metrics"]
    lines = [
        f"retrain {summary['run_id']} succeeded",
        f"  faces:    {summary['faces_total']} verified of {summary['people']} people; "
        f"{summary['faces_embedded']} embedded, {summary['faces_reused']} reused, {summary['faces_failed']} failed"
        + (f", {summary['faces_resumed']} resumed from an interrupted run" if summary["faces_resumed"] else ""),
        f"  photos:   {summary['photos_fetched']} fetched, {summary['photos_failed']} failed",
        f"  index:    {summary['index_version']} at {summary['index_path']} (promoted: {summary['promoted_index']})",
    ]
    if metrics.get("status") == "ok":
        verdict = "met" if metrics["target_met"] else "NOT met"
        lines.append(
            f"  metrics:  rank-1 {metrics['rank1_accuracy']:.4f} (macro {metrics['rank1_accuracy_macro']:.4f}); "
            f"at threshold {metrics['recommended_threshold']:.2f}: FAR {metrics['far']:.5f} "
            f"(target <= {metrics['target_far']} {verdict}), precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}"
        )
        if not metrics["target_met"]:
            lines.append(f"            {metrics['message']}")
    else:
        lines.append(f"  metrics:  {metrics.get('message')}")
    write_back = summary["write_back"]
    if write_back.get("status") == "written":
        lines.append(f"  write-back: {write_back['written']} rows written, {write_back['unchanged']} unchanged, "
                     f"{write_back['skipped']} skipped")
    else:
        lines.append(f"  write-back: skipped ({write_back.get('reason')})")
    if session:
        lines.append(f"  training session {session['id']}: {session['status']}"
                     + ("" if session["synced_to_gallery"] else " (locally; the gallery was not updated)"))
    lines.append(f"  metrics file: {summary['metrics_path']}")
    if summary.get("thresholds_warning"):
        lines.append(f"WARNING: {summary['thresholds_warning']}")
    lines.append(f"  embeddings:   {summary['embeddings_path']}")
    lines.append(f"  photo cache:  {summary['photo_cache']}")
    return "\n".join(lines)
