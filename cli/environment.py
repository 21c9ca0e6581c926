"""Where the CLI's state lives: .env defaults, FACEPIPELINE_HOME and the Dagster instance in it."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

from facepipeline.settings import DEFAULT_HOME

DAGSTER_YAML = """\
# Written by facepipeline for its local Dagster instance (runs, events, schedules).
telemetry:
  enabled: false
"""


def prepare_environment() -> Path:
    """Load ``.env`` (real variables win) and make sure DAGSTER_HOME exists; returns it.

    DAGSTER_HOME defaults to ``$FACEPIPELINE_HOME/dagster`` so ``facepipeline`` runs and
    ``make ui`` share one instance, and every run shows up in the UI.
    """
    load_dotenv(Path.cwd() / ".env", override=False)
    home = Path(os.environ.get("FACEPIPELINE_HOME", DEFAULT_HOME)).expanduser().resolve()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").expanduser().resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home
