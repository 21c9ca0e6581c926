"""From ``--source`` and the environment to settings and an open source, secrets kept out of config.

``postgres:DSN`` on the command line is moved into ``SUPABASE_DB_URL`` for the run, so the
connection string reaches Dagster only as an ``EnvVar`` and never shows in run config or the UI.
"""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import replace

from facepipeline.options import RetrainOptions
from facepipeline.settings import Settings
from facepipeline.sources import FaceSource, open_source
from facepipeline.sources.base import connection_string_in

FILTER_FIELDS = (
    "event_ids", "person_ids", "date_from", "date_to", "min_faces_per_person", "include_co_occurring", "context_weight",
)


def settings_for(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    source = getattr(args, "source", None) or settings.source
    dsn = connection_string_in(source)
    if dsn:
        os.environ["SUPABASE_DB_URL"] = dsn
        source = "postgres"
    return replace(settings, source=source)


def open_configured_source(settings: Settings) -> FaceSource:
    return open_source(
        settings.source,
        database_url=os.environ.get("SUPABASE_DB_URL"),
        supabase_url=os.environ.get("SUPABASE_URL"),
        service_role_key=os.environ.get("SUPABASE_SERVICE_ROLE_KEY"),
        embedded_home=settings.gallery_home,
        seed_folder=settings.seed_folder,
    )


def options_from(args: argparse.Namespace, *extra: str) -> RetrainOptions:
    """The validated options of ``args`` (raises OptionsError naming the field)."""
    fields = {name: getattr(args, name, None) for name in (*FILTER_FIELDS, *extra)}
    return RetrainOptions.parse({k: v for k, v in fields.items() if v is not None})


def event_id_arg(text: str) -> str | None:
    """An ``--event-id`` value: an event's UUID, or ``none`` for the photos without an event."""
    from cli.main import UsageError

    if text == "none":
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UsageError(f"an event id must be a UUID (or 'none' for photos without an event), got {text!r}") from None
