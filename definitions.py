"""The facepipeline code location: assets, jobs, schedules, sensors and the resources they use.

Settings come from the environment (FACEPIPELINE_HOME, FACEPIPELINE_MODEL_ROOT, FACEPIPELINE_MODEL,
FACEPIPELINE_SOURCE, FACEPIPELINE_PROVIDERS, FACEPIPELINE_SEED_FOLDER, FACEPIPELINE_SENSOR_INTERVAL_S,
FACEPIPELINE_FULL_RETRAIN_CRON, FACEPIPELINE_EMBED_WORKERS), read once, here, over the defaults of the checkout's facepipeline.env. The gallery's
secrets (SUPABASE_DB_URL, SUPABASE_SERVICE_ROLE_KEY) reach the source resource only as ``EnvVar``s:
resolved when a run starts, shown in the UI by name, never by value.
"""

import functools
import os

import facepipeline  # noqa: F401  (first: it chooses Arrow's memory allocator before pyarrow loads)
from dagster import Definitions, EnvVar, FilesystemIOManager

from assets import recognize_assets, report_assets, retrain_assets, retrain_checks
from cli.collector import freeze_what_is_loaded
from cli.environment import load_env_files
from facepipeline.errors import SourceError
from facepipeline.settings import Settings
from facepipeline.sources.base import connection_string_in
from jobs import cluster_job, recognize_job, retrain_job
from jobs.prune import prune_job
from resources import (
    ArtifactStoreResource,
    FaceModelResource,
    FaceSourceResource,
    IndexVersionIOManager,
    ParquetTableIOManager,
    RetrainOptionsResource,
)
from schedules import build_schedules
from sensors import build_sensors


SECRET_SETTINGS = {
    "database_url": "SUPABASE_DB_URL",
    "supabase_url": "SUPABASE_URL",
    "service_role_key": "SUPABASE_SERVICE_ROLE_KEY",
}


def face_source_resource(settings: Settings) -> FaceSourceResource:
    if connection_string_in(settings.source):
        raise SourceError(
            "FACEPIPELINE_SOURCE holds a connection string, which the UI would show: "
            "set FACEPIPELINE_SOURCE=postgres and put the connection string in SUPABASE_DB_URL"
        )
    # Only variables that are set: an EnvVar that is missing fails every run, even a folder one.
    secrets = {field: EnvVar(name) for field, name in SECRET_SETTINGS.items() if os.environ.get(name)}
    return FaceSourceResource(
        source=settings.source,
        embedded_home=str(settings.gallery_home),
        seed_folder=str(settings.seed_folder),
        **secrets,
    )


def build_definitions(settings: Settings) -> Definitions:
    artifacts = ArtifactStoreResource(home=str(settings.home))
    return Definitions(
        assets=[*retrain_assets, *recognize_assets, *report_assets],
        asset_checks=retrain_checks,
        jobs=[retrain_job, recognize_job, cluster_job, prune_job],
        schedules=build_schedules(settings.full_retrain_cron),
        sensors=build_sensors(settings.sensor_interval_s),
        resources={
            "face_source": face_source_resource(settings),
            "retrain_options": RetrainOptionsResource.configure_at_launch(),
            "face_model": FaceModelResource(
                pack=settings.model_pack, model_root=str(settings.model_root), providers=list(settings.providers),
                workers=settings.embed_workers,
            ),
            "artifacts": artifacts,
            "table_io_manager": ParquetTableIOManager(artifacts=artifacts),
            "index_io_manager": IndexVersionIOManager(artifacts=artifacts),
            # Other outputs on disk too, so a step can run later in another process (or from the UI)
            # after a run launched by the CLI.
            "io_manager": FilesystemIOManager(base_dir=str(settings.home / "outputs")),
        },
    )


def retrain_job_from_environment():
    """The retrain job of the code location the environment describes: what the CLI runs, as a
    ``reconstructable`` job, so that ``execute_job`` keeps no step's output in memory. Dagster asks
    for it several times per run: it is built once per process and settings."""
    secrets_set = tuple(name for name in SECRET_SETTINGS.values() if os.environ.get(name))  # face_source_resource reads them
    return _retrain_job(Settings.from_env(), secrets_set)


@functools.lru_cache(maxsize=1)
def _retrain_job(settings: Settings, secrets_set: tuple[str, ...]):
    return build_definitions(settings).resolve_job_def(retrain_job.name)


load_env_files()  # the checkout's facepipeline.env defaults; real environment variables win
defs = build_definitions(Settings.from_env())
freeze_what_is_loaded()  # Dagster and the code location live as long as the process (cli/collector.py)
