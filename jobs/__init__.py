"""Jobs: named selections of assets that a person, a schedule or a sensor launches."""

from dagster import AssetSelection, define_asset_job

from assets.sessions import RETRAIN_JOB, mark_session_failed

RETRAIN_GROUP = "retrain"

retrain_job = define_asset_job(
    name=RETRAIN_JOB,
    selection=AssetSelection.groups(RETRAIN_GROUP),
    description=(
        "Read verified faces, cache photos, embed, build a new index version and evaluate it, write the "
        "descriptors back and record the training session."
    ),
    hooks={mark_session_failed},
)

__all__ = ["retrain_job"]
