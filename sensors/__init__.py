"""Sensors: recognition of new event photos (the auto-retrain sensor arrives with the automation work)."""

from sensors.event_photos import new_event_photos

sensors = [new_event_photos]

__all__ = ["new_event_photos", "sensors"]
