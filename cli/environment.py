"""Where the CLI's state lives: facepipeline.env defaults, FACEPIPELINE_HOME and the Dagster instance in it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from dotenv import dotenv_values

from facepipeline.settings import DEFAULT_HOME
from facepipeline.versions import replace_file

RETRAIN_TAG = "facepipeline/retrain"  # jobs.RETRAIN_TAG; Dagster is not imported before the environment is set

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = "facepipeline.env"
"""Not ``.env``: ``dagster dev`` loads a ``.env`` of its working directory over the real environment."""
# Settings that hold paths: a relative path in an env file means "relative to that file".
PATH_SETTINGS = ("FACEPIPELINE_HOME", "FACEPIPELINE_MODEL_ROOT", "FACEPIPELINE_SEED_FOLDER", "DAGSTER_HOME")

MANAGED_MARK = "# Written by facepipeline"
DAGSTER_YAML = f"""\
{MANAGED_MARK} for its local Dagster instance (runs, events, schedules), and rewritten
# when facepipeline needs other settings. Remove this first line to keep edits of your own.
event_log_storage:
  # Dagster's SQLite event log (the same files), keeping its databases open and committing without
  # an fsync per event: a retrain stores ~150 events (cli/event_log_storage.py says what changes).
  module: cli.event_log_storage
  class: LocalEventLogStorage
  config:
    base_dir: {{events_dir}}
telemetry:
  enabled: false
concurrency:
  runs:
    # One retrain at a time, whoever starts it: the auto_retrain sensor, the schedule, the UI.
    # (The facepipeline CLI runs in its own process and refuses to start beside a running one.)
    tag_concurrency_limits:
      - key: {RETRAIN_TAG}
        limit: 1
run_monitoring:
  # A run stuck starting or canceling is marked failed, and its training session with it.
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
"""


def load_env_files() -> list[Path]:
    """Defaults from ``./facepipeline.env``, then from the checkout's ``facepipeline.env`` beneath it.

    Real variables win over both, and ``./facepipeline.env`` over the checkout's; an empty value sets nothing.
    Returns the files read.
    """
    read = []
    for candidate in dict.fromkeys((Path.cwd() / ENV_FILE, PROJECT_ROOT / ENV_FILE)):
        if not candidate.is_file():
            continue
        read.append(candidate)
        for key, value in dotenv_values(candidate).items():
            if key in os.environ or not value:
                continue
            if key in PATH_SETTINGS:
                value = str((candidate.parent / Path(value).expanduser()).resolve())
            elif key == "FACEPIPELINE_SOURCE" and value.startswith("folder:"):
                value = f"folder:{(candidate.parent / Path(value.removeprefix('folder:')).expanduser()).resolve()}"
            os.environ[key] = value
    return read


def prepare_environment() -> Path:
    """Load the facepipeline.env defaults and make sure DAGSTER_HOME exists; returns it.

    DAGSTER_HOME defaults to ``$FACEPIPELINE_HOME/dagster`` so ``facepipeline`` runs and
    ``make ui`` share one instance, and every run shows up in the UI.
    """
    load_env_files()
    home = Path(os.environ.get("FACEPIPELINE_HOME", DEFAULT_HOME)).expanduser().resolve()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").expanduser().resolve()
    write_instance_config(dagster_home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def write_instance_config(dagster_home: Path) -> Path:
    """``dagster.yaml`` with facepipeline's settings (one retrain at a time, run monitoring), unless
    someone else's file is there: a file facepipeline wrote is brought up to date."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    events_dir = str(dagster_home / "history" / "runs")  # where Dagster's default storage keeps them
    # A double-quoted YAML scalar on one line, whatever the path holds (quotes, "#", emoji, odd bytes).
    wanted = DAGSTER_YAML.format(events_dir=yaml.safe_dump(events_dir, default_style='"', width=math.inf).strip())
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith(MANAGED_MARK) and current != wanted):
        replace_file(config, wanted)
    return config
