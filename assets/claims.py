"""Every retrain asset that writes claims its run first, whichever assets the run selected.

A run that selects only ``face_index`` (or promotes, or writes descriptors back) starts with that
step, so each writing step claims the run (jobs.run_guard.claim_retrain): beside another retrain in
progress it fails before writing anything; in a run that already holds the claim it passes at once.
"""

from dagster import AssetExecutionContext, OpExecutionContext

from assets.errors import failures_explained
from jobs.run_guard import claim_retrain


def claim_run(context: AssetExecutionContext | OpExecutionContext) -> None:
    """This run's claim on the retrain assets, or a Failure naming the run that holds it."""
    with failures_explained():
        claim_retrain(context.instance, context.run.run_id)
