"""Events as dynamic partitions: the recognition of each event's new photos is a partition of its own.

Partition keys are event ids; photos that belong to no event share the key ``no_event``.
"""

from dagster import DynamicPartitionsDefinition

event_partitions = DynamicPartitionsDefinition(name="events")

NO_EVENT = "no_event"


def event_id_of(partition_key: str) -> str | None:
    return None if partition_key == NO_EVENT else partition_key


def partition_key_of(event_id: str | None) -> str:
    return event_id or NO_EVENT
