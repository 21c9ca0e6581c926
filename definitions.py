"""The facepipeline code location: assets, jobs, schedules, sensors and the resources they use.

Settings come from the environment (FACEPIPELINE_HOME, FACEPIPELINE_MODEL_ROOT, FACEPIPELINE_MODEL,
FACEPIPELINE_SOURCE, FACEPIPELINE_PROVIDERS), read once, here.
"""

from dagster import Definitions, FilesystemIOManager

from assets import retrain_assets
from facepipeline.settings import Settings
from jobs import retrain_job
from resources import (
    ArtifactStoreResource,
    FaceModelResource,
    FaceSourceResource,
    IndexVersionIOManager,
    ParquetTableIOManager,
)
from schedules import schedules
from sensors import sensors


def build_definitions(settings: Settings) -> Definitions:
    artifacts = ArtifactStoreResource(home=str(settings.home))
    return Definitions(
        assets=retrain_assets,
        jobs=[retrain_job],
        schedules=schedules,
        sensors=sensors,
        resources={
            "face_source": FaceSourceResource(source=settings.source),
            "face_model": FaceModelResource(
                pack=settings.model_pack, model_root=str(settings.model_root), providers=list(settings.providers)
            ),
            "artifacts": artifacts,
            "table_io_manager": ParquetTableIOManager(artifacts=artifacts),
            "index_io_manager": IndexVersionIOManager(artifacts=artifacts),
            # Other outputs on disk too, so a step can run later in another process (or from the UI)
            # after a run launched by the CLI.
            "io_manager": FilesystemIOManager(base_dir=str(settings.home / "outputs")),
        },
    )


defs = build_definitions(Settings.from_env())
