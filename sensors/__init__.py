"""Sensors: retrain when enough new verified faces arrive, close the sessions of retrains that end
badly, recognize the faces on new event photos, and draw the reports after an evaluation."""

from dagster import SensorDefinition

from sensors.auto_retrain import build_auto_retrain_sensor
from sensors.event_photos import new_event_photos
from sensors.reports import build_reports_sensor
from sensors.retrain_runs import build_retrain_run_sensors


def build_sensors(interval_s: int) -> list[SensorDefinition]:
    return [
        build_auto_retrain_sensor(interval_s), *build_retrain_run_sensors(interval_s), new_event_photos,
        build_reports_sensor(interval_s),
    ]


__all__ = ["build_sensors", "new_event_photos"]
