"""Schedules. The nightly full retrain ships stopped: turn it on in the UI (Automation) when wanted.

A full retrain re-embeds every face from the cached photos, a fresh start for the embeddings (for
example after an onnxruntime upgrade) at the price of a full embedding pass.
"""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from facepipeline.options import RetrainOptions
from jobs import retrain_job
from resources import options_run_config

nightly_full_retrain = ScheduleDefinition(
    name="nightly_full_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    run_config=options_run_config(RetrainOptions(mode="full")),
    default_status=DefaultScheduleStatus.STOPPED,
    description="Full retrain every night at 03:00 UTC (stopped by default).",
)

schedules = [nightly_full_retrain]

__all__ = ["nightly_full_retrain", "schedules"]
