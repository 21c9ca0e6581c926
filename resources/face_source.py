from dagster import ConfigurableResource
from pydantic import Field

from facepipeline.sources import FaceSource, open_source


class FaceSourceResource(ConfigurableResource):
    """Where verified faces come from."""

    source: str = Field(description="'folder:DIR' (one sub-folder per person, or a face_boxes.csv).")

    def open(self) -> FaceSource:
        return open_source(self.source)
