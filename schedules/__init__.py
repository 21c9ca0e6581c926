"""Schedules. The periodic full retrain ships stopped: turn it on in the UI (Automation) when wanted.

New labels are retrained by the ``auto_retrain`` sensor, incrementally: a photo is embedded once.
A full retrain embeds every face again, a fresh start for the embeddings (after an onnxruntime or
model-pack upgrade, say) at the price of a full embedding pass (minutes per thousand faces on a
CPU), so it is a deliberate choice, not a default. Its time is ``FACEPIPELINE_FULL_RETRAIN_CRON``
(default ``0 3 * * *``, 03:00 UTC every night).

``weekly_prune`` (Sundays 04:00 UTC, also stopped by default) runs the ``prune_home`` job with its
default ``keep``: old index and clustering versions, older runs' step outputs, unneeded dataset
snapshots and cached photos nothing kept uses go, so the home grows with the work, not with the
number of runs (facepipeline.retention).
"""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from facepipeline.options import RetrainOptions
from facepipeline.settings import SettingsError
from jobs import retrain_job
from jobs.prune import prune_job
from resources import options_run_config


def build_schedules(cron: str) -> list[ScheduleDefinition]:
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(cron):
        raise SettingsError(f"FACEPIPELINE_FULL_RETRAIN_CRON must be a cron expression like '0 3 * * *', got {cron!r}")
    full_retrain = ScheduleDefinition(
        name="nightly_full_retrain",
        job=retrain_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        run_config=options_run_config(RetrainOptions(mode="full")),
        tags={"facepipeline/trigger": "nightly_full_retrain"},
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Full retrain (every face embedded again) at {cron} UTC; stopped by default.",
    )
    prune = ScheduleDefinition(
        name="weekly_prune",
        job=prune_job,
        cron_schedule="0 4 * * 0",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description="Prune the home to the newest versions and runs (prune_home's default keep) on Sundays at 04:00 UTC; stopped by default.",
    )
    return [full_retrain, prune]


__all__ = ["build_schedules"]
