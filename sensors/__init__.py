"""Sensors. None yet: the auto-retrain sensor needs the database source (it counts verified faces
not yet used in training), so it arrives with that source."""

sensors: list = []

__all__ = ["sensors"]
