from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field, model_validator

from facepipeline.options import RetrainOptions


class RetrainOptionsResource(ConfigurableResource):
    """The options of one retrain, set in the Launchpad (``resources.retrain_options.config``).

    Every value is checked, with a message naming the field, when the run's first step starts,
    before anything is read or written. Empty values take the gallery config table's.
    """

    event_ids: list[str] = Field(default=[], description="Only faces on photos of these events (UUIDs).")
    person_ids: list[str] = Field(default=[], description="Only these people (UUIDs).")
    date_from: str | None = Field(default=None, description="Only events on or after this day (YYYY-MM-DD).")
    date_to: str | None = Field(default=None, description="Only events on or before this day (YYYY-MM-DD).")
    min_faces_per_person: int | None = Field(default=None, description="Keep people with at least this many faces; empty: the config table's.")
    include_co_occurring: bool = Field(default=False, description="With person_ids: also the people on the same photos.")
    context_weight: float | None = Field(default=None, description="Weight of co-occurrence context in [0, 1]; empty: the config table's.")
    mode: Literal["incremental", "full"] = Field(default="incremental", description="incremental: embed only what changed. full: embed everything again.")
    model_version: str | None = Field(default=None, description="Label of this model version in the training session.")
    update_existing: bool = Field(default=True, description="Write descriptors back to photo_faces.")
    test_fraction: float = Field(default=0.2, description="Share of each person's faces held out for evaluation, in (0, 1).")
    seed: int = Field(default=42, description="Seed of the held-out split.")
    target_far: float = Field(default=0.001, description="False-accept rate the recommended threshold must meet, in (0, 1).")

    @model_validator(mode="after")
    def _valid(self):
        self.options()  # raises OptionsError (a ValueError) naming the field
        return self

    def options(self) -> RetrainOptions:
        values = {name: getattr(self, name) for name in RetrainOptions.__dataclass_fields__}
        return RetrainOptions.parse(values)


def options_run_config(options: RetrainOptions) -> dict:
    """The run config that sets these options (for the CLI and sensors)."""
    config = {k: v for k, v in options.as_json().items() if v is not None}
    return {"resources": {"retrain_options": {"config": config}}}
