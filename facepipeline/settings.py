"""Process-wide settings read from the environment, in one place, with defaults that work here.

Only this module reads ``FACEPIPELINE_*`` variables; everything else receives values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from facepipeline.errors import FacePipelineError

DEFAULT_HOME = ".facepipeline"
DEFAULT_MODEL_PACK = "buffalo_l"
DEFAULT_MODEL_ROOT = "~/.insightface/models"
DEFAULT_SOURCE = "embedded"
DEFAULT_SEED_FOLDER = "../shared/data/faces"
DEFAULT_SENSOR_INTERVAL_S = 60
DEFAULT_FULL_RETRAIN_CRON = "0 3 * * *"


class SettingsError(FacePipelineError, ValueError):
    """A FACEPIPELINE_* variable with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    home: Path
    """Where facepipeline keeps its own state: photo cache, tables, index versions."""
    model_root: Path
    """Folder that holds model packs, one sub-folder per pack (``<root>/<pack>/*.onnx``)."""
    model_pack: str
    """Name of the pack to load (``buffalo_l`` in production, ``buffalo_sc`` in tests here)."""
    source: str
    """Where verified faces come from: ``embedded``, ``postgres``, ``supabase`` or ``folder:DIR``."""
    providers: tuple[str, ...]
    """onnxruntime execution providers, most preferred first."""
    seed_folder: Path = Path(DEFAULT_SEED_FOLDER)
    """The photo folder the embedded demo gallery is seeded from."""
    sensor_interval_s: int = DEFAULT_SENSOR_INTERVAL_S
    """How often the sensors ask the gallery for new verified faces and new photos."""
    full_retrain_cron: str = DEFAULT_FULL_RETRAIN_CRON
    """When the periodic full retrain runs (once its schedule is turned on), UTC."""
    embed_workers: int = 0
    """Threads per embedding step; 0 = one per core (1 on a GPU). With an executor that runs N
    steps at once on one machine, cores / N keeps the cores busy without oversubscribing them."""

    @property
    def gallery_home(self) -> Path:
        """Where the embedded gallery keeps its database and photo server state."""
        return self.home / "gallery"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        providers = env.get("FACEPIPELINE_PROVIDERS", "CPUExecutionProvider")
        return cls(
            home=Path(env.get("FACEPIPELINE_HOME", DEFAULT_HOME)).expanduser().resolve(),
            model_root=Path(env.get("FACEPIPELINE_MODEL_ROOT", DEFAULT_MODEL_ROOT)).expanduser().resolve(),
            model_pack=env.get("FACEPIPELINE_MODEL", DEFAULT_MODEL_PACK),
            source=env.get("FACEPIPELINE_SOURCE", DEFAULT_SOURCE),
            providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
            seed_folder=Path(env.get("FACEPIPELINE_SEED_FOLDER", DEFAULT_SEED_FOLDER)).expanduser().resolve(),
            sensor_interval_s=_seconds(env, "FACEPIPELINE_SENSOR_INTERVAL_S", DEFAULT_SENSOR_INTERVAL_S),
            full_retrain_cron=env.get("FACEPIPELINE_FULL_RETRAIN_CRON", DEFAULT_FULL_RETRAIN_CRON),
            embed_workers=_whole(env, "FACEPIPELINE_EMBED_WORKERS", 0, 0, 64),
        )


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, 1, 86400, unit=" seconds")


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int, unit: str = "") -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SettingsError(f"{name} must be a whole number{' of' + unit if unit else ''}, got {shown!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}{unit}, got {value}")
    return value
