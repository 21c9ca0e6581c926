"""What the commands need of a Dagster run they executed: its first error, an asset's metadata.

The error is redacted once more with the environment's secrets before a command prints it: the
messages are built without secrets where they are raised, and this is the last line of defence
for an exception from a library that quotes a connection string.
"""

from __future__ import annotations

from assets.sessions import describe_failed_checks
from facepipeline.gallery.secrets import environment_secrets, redact


def first_error(result) -> str:
    return redact(_first_error(result), environment_secrets())


def _first_error(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                return failed_checks(result) or error.message.strip()
            # A Failure raised on purpose carries its description; anything else, its message.
            user = event.step_failure_data.user_failure_data
            if user and user.description:
                return user.description
            while error is not None and error.cause is not None:
                error = error.cause  # the user's exception, not Dagster's wrapper
            return error.message.strip() if error else "step failed"
    return "run failed"


def failed_checks(result) -> str | None:
    """The run's failed blocking checks, one clause each: "check no_regression failed: ..."."""
    return describe_failed_checks(
        event.asset_check_evaluation_data for event in result.all_events if event.event_type_value == "ASSET_CHECK_EVALUATION"
    )


def materialization_metadata(result, asset: str) -> dict:
    [materialization] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


CONSOLE_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
