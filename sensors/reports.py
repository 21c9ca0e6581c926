"""Reports drawn after a retrain: the ``reports`` group's assets, materialized by their automation
conditions (``evaluation_plot``: for the latest evaluation, once it is new), evaluated by this sensor.

It runs by default, like the other sensors; ``dagster dev`` and the daemon evaluate it every
``interval_s`` seconds.
"""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

REPORTS_GROUP = "reports"


def build_reports_sensor(interval_s: int) -> AutomationConditionSensorDefinition:
    return AutomationConditionSensorDefinition(
        "evaluation_reports",
        target=AssetSelection.groups(REPORTS_GROUP),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Draws the reports (evaluation_plot) for the latest index evaluation once it is new.",
    )
