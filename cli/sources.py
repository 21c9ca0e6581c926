"""From ``--source`` and the environment to settings and an open source, secrets kept out of config.

``postgres:DSN`` on the command line is moved into ``SUPABASE_DB_URL`` for the run, so the
connection string reaches Dagster only as an ``EnvVar`` and never shows in run config or the UI.

The source spec of a command that reads one is checked here, before any run starts: an unknown
kind, a folder that is not there or a connection string that cannot be parsed is bad input (one
line, exit status 2), not a failed run in the instance's history.
"""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import replace
from pathlib import Path

from facepipeline.options import RetrainOptions
from facepipeline.settings import Settings
from facepipeline.sources import FaceSource, open_source
from facepipeline.sources.base import connection_string_in

FILTER_FIELDS = (
    "event_ids", "person_ids", "date_from", "date_to", "min_faces_per_person", "include_co_occurring", "context_weight",
)


def settings_for(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the command's ``--source`` (checked already, with the
    rest of the command line, by :func:`check_arguments` before the command started)."""
    settings = Settings.from_env()
    source = getattr(args, "source", None) or settings.source
    dsn = connection_string_in(source)
    if dsn:
        os.environ["SUPABASE_DB_URL"] = dsn
        source = "postgres"
    return replace(settings, source=source)


def check_arguments(args: argparse.Namespace) -> None:
    """What ``args`` says, checked before a command's module (and Dagster) is loaded: the retrain
    options of a command that takes them (``option_fields``: those beyond the filters) and, for a
    command with ``--source``, the source. Raises the first error."""
    if hasattr(args, "option_fields"):
        options_from(args, *args.option_fields)
    if getattr(args, "config_command", None) == "set":  # the key and JSON first: they need no source
        from facepipeline.gallery.config import decode_assignment

        decode_assignment(args.key, args.value)
    if hasattr(args, "source"):
        check_source_spec(args.source or Settings.from_env().source)


def check_source_spec(spec: str) -> None:
    """Raise :class:`~cli.main.UsageError` for a source spec that cannot work, naming why.

    Only what can be known without connecting: whether the database answers is the run's business
    (it reports an unreachable database as its own failure, with the session marked).
    """
    from cli.main import UsageError
    from facepipeline.gallery.secrets import redact

    kind, _, rest = spec.partition(":")
    dsn = connection_string_in(spec)
    if kind == "folder" and rest:
        folder = Path(rest).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--source {redact(spec)!r}: folder not found: {folder}")
    elif dsn:
        import psycopg

        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise UsageError(f"--source: not a valid Postgres connection string: {redact(dsn)!r}") from None
    elif spec == "postgres":
        if not os.environ.get("SUPABASE_DB_URL"):
            raise UsageError("source 'postgres' needs a connection string: set SUPABASE_DB_URL or use --source postgres:DSN")
    elif spec not in ("embedded", "supabase"):
        raise UsageError(f"unknown source {redact(spec)!r}: use embedded, postgres:DSN, postgres, supabase or folder:DIR")


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
