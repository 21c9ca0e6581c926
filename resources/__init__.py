"""Every external system the pipeline touches, as a configurable Dagster resource."""

from resources.artifacts import ArtifactStoreResource
from resources.face_model import FaceModelResource
from resources.face_source import FaceSourceResource
from resources.io_managers import IndexVersionIOManager, ParquetTableIOManager, table_name
from resources.retrain_options import RetrainOptionsResource, options_run_config

__all__ = [
    "ArtifactStoreResource",
    "FaceModelResource",
    "FaceSourceResource",
    "IndexVersionIOManager",
    "ParquetTableIOManager",
    "RetrainOptionsResource",
    "options_run_config",
    "table_name",
]
