"""What the commands need of a Dagster run they executed: its first error, an asset's metadata."""

from __future__ import annotations


def first_error(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            # A Failure raised on purpose carries its description; anything else, its message.
            user = event.step_failure_data.user_failure_data
            if user and user.description:
                return user.description
            while error is not None and error.cause is not None:
                error = error.cause  # the user's exception, not Dagster's wrapper
            return error.message.strip() if error else "step failed"
    return "run failed"


def materialization_metadata(result, asset: str) -> dict:
    [materialization] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


CONSOLE_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
