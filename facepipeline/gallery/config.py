"""The gallery's ``face_recognition_config`` table: parsed, validated, and remembered locally.

Each row is a key and a JSON value (SPEC section 2). facepipeline knows seven keys and validates
them as SPEC section 3 says (``data_levels``, the face counts that divide people into the three
threshold levels, and ``regression_tolerance``, how much worse a new index may be and still be
promoted, are facepipeline's own additions); keys it does not know belong to the gallery app and are left alone.
The last good copy is kept under ``FACEPIPELINE_HOME`` so a retrain can still start, with a
warning, while the database is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facepipeline.errors import FacePipelineError
from facepipeline.versions import replace_file


class ConfigError(FacePipelineError, ValueError):
    """A config value outside what the SPEC allows, or a key facepipeline does not know."""


THRESHOLD_LEVELS = ("low_data", "medium_data", "high_data")


@dataclass(frozen=True)
class ConfidenceThresholds:
    """Similarity a suggestion needs, by how much data its person has (SPEC section 3)."""

    low_data: float = 0.75
    medium_data: float = 0.65
    high_data: float = 0.55


@dataclass(frozen=True)
class DataLevels:
    """How much data a person has, by the number of their faces in the index.

    Fewer than ``medium_data`` faces: ``low_data``; from ``medium_data``: ``medium_data``; from
    ``high_data``: ``high_data``. The defaults follow the SPEC's statistics buckets (3-4 faces are
    few, 5-9 some, 10 and more many).
    """

    medium_data: int = 5
    high_data: int = 10

    def level(self, faces: int) -> str:
        if faces >= self.high_data:
            return "high_data"
        return "medium_data" if faces >= self.medium_data else "low_data"

    def describe(self) -> dict[str, str]:
        return {
            "low_data": f"1-{self.medium_data - 1} faces" if self.medium_data > 1 else "none",
            "medium_data": f"{self.medium_data}-{self.high_data - 1} faces" if self.high_data > self.medium_data else "none",
            "high_data": f"{self.high_data}+ faces",
        }


@dataclass(frozen=True)
class GalleryConfig:
    confidence_thresholds: ConfidenceThresholds = field(default_factory=ConfidenceThresholds)
    data_levels: DataLevels = field(default_factory=DataLevels)
    context_weight: float = 0.1
    min_faces_per_person: int = 3
    auto_retrain_threshold: int = 25
    auto_retrain_percentage: float = 0.1
    """0 turns the share rule off: only the threshold counts."""
    regression_tolerance: float = 0.02
    """How far a new index's rank-1 accuracy may fall below the promoted one's and still be promoted."""

    @classmethod
    def from_rows(cls, rows: Mapping[str, Any]) -> tuple[GalleryConfig, list[str]]:
        """Parse the table's rows (key -> JSON value); returns the config and what was defaulted.

        Raises :class:`ConfigError` naming the first bad key. Keys facepipeline does not know are
        ignored; keys it knows but that are missing take the SPEC's initial values.
        """
        defaults = cls()
        values: dict[str, Any] = {}
        notes = []
        for key in KNOWN_KEYS:
            if key in rows:
                values[key] = parse_value(key, rows[key])
            else:
                values[key] = getattr(defaults, key)
                notes.append(f"{key} is not in face_recognition_config; using {json.dumps(to_json(key, values[key]))}")
        return cls(**values), notes

    def to_rows(self) -> dict[str, Any]:
        return {key: to_json(key, getattr(self, key)) for key in KNOWN_KEYS}


MAX_WHOLE = 1_000_000_000
"""The largest whole-number value (a face count): beyond it a value is a typo, and would not fit
the ``integer`` columns or the JSON readers that meet it later."""


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error message: its JSON, cut short, and safe for any value.

    ``json.dumps`` itself fails on a 5,000-digit int (Python's int-to-string limit), recurses on a
    deeply nested list, and a message must not be a megabyte of JSON.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(key: str, value: Any, *, low: float = 0.0, high: float = 1.0) -> float:
    # Ints are compared as ints: math.isfinite and float() overflow on a 400-digit JSON number.
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite:
        raise ConfigError(f"{key} must be a number between {low:g} and {high:g}, got {shown(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {shown(value)}")
    return float(value)


def _whole(key: str, value: Any, *, minimum: int = 1, maximum: int = MAX_WHOLE) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number >= {minimum}, got {shown(value)}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {shown(value)}")
    if value > maximum:
        raise ConfigError(f"{key} must be at most {maximum:,}, got {shown(value)}")
    return value


def _thresholds(key: str, value: Any) -> ConfidenceThresholds:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be an object with {', '.join(THRESHOLD_LEVELS)}, got {shown(value)}")
    unknown = sorted(str(level) for level in set(value) - set(THRESHOLD_LEVELS))
    if unknown:
        raise ConfigError(f"{key} has unknown levels {shown(', '.join(unknown))[1:-1]} (known: {', '.join(THRESHOLD_LEVELS)})")
    missing = [level for level in THRESHOLD_LEVELS if level not in value]
    if missing:
        raise ConfigError(f"{key} is missing {', '.join(missing)}")
    return ConfidenceThresholds(**{level: _number(f"{key}.{level}", value[level]) for level in THRESHOLD_LEVELS})


def _levels(key: str, value: Any) -> DataLevels:
    names = ("medium_data", "high_data")
    if not isinstance(value, Mapping) or set(value) != set(names):
        raise ConfigError(f"{key} must be an object with exactly {', '.join(names)} (minimum faces), got {shown(value)}")
    levels = DataLevels(**{name: _whole(f"{key}.{name}", value[name], minimum=1) for name in names})
    if levels.medium_data > levels.high_data:
        raise ConfigError(f"{key}.medium_data ({levels.medium_data}) must not exceed {key}.high_data ({levels.high_data})")
    return levels


_PARSERS = {
    "confidence_thresholds": _thresholds,
    "data_levels": _levels,
    "context_weight": _number,
    "min_faces_per_person": _whole,
    "auto_retrain_threshold": _whole,
    "auto_retrain_percentage": _number,
    "regression_tolerance": _number,
}
KNOWN_KEYS = tuple(_PARSERS)


def parse_value(key: str, value: Any) -> Any:
    """Validate one key's JSON value; returns it in its typed form."""
    if key not in _PARSERS:
        raise ConfigError(f"unknown config key {key[:60]!r} (known: {', '.join(KNOWN_KEYS)})")
    return _PARSERS[key](key, value)


def decode_row(key: str, text: str) -> Any:
    """One ``face_recognition_config`` value read as text (``value::text``), decoded.

    For a transport to call instead of letting its driver decode jsonb: Python's JSON reader
    refuses a number of more than 4,300 digits (ValueError) and a deeply nested value
    (RecursionError), and only here can the error name the key. A key facepipeline does not know
    belongs to the gallery app: its unreadable value is kept as the text it is.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        if key not in _PARSERS:
            return text
        why = "is nested too deeply" if isinstance(exc, RecursionError) else f"cannot be read ({str(exc).split(';')[0]})"
        raise ConfigError(f"{key}: its value in face_recognition_config {why}; write it again with: "
                          f"facepipeline config set {key} VALUE") from None


def to_json(key: str, value: Any) -> Any:
    return asdict(value) if isinstance(value, (ConfidenceThresholds, DataLevels)) else value


# Keys whose value is an object: ``config set KEY.PART VALUE`` changes one part and keeps the others.
OBJECT_KEYS = {"confidence_thresholds": THRESHOLD_LEVELS, "data_levels": ("medium_data", "high_data")}


def _name(key: str) -> str:
    """A key as typed, for a message: cut short, and quoted when it holds a newline or the like."""
    return key[:60] if key[:60].isprintable() else repr(key[:60])


def decode_assignment(key: str, text: str) -> tuple[str, str, Any]:
    """``KEY VALUE`` of ``config set`` decoded, without the current rows: ``(top key, part, value)``.

    Checks what needs no database: VALUE is JSON (not too deep, no number past Python's
    4,300-digit int limit), KEY is known, a part is one its object has. ``config set`` calls it
    before it connects, so a typo costs no connection.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{_name(key)}: the value is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or a number past Python's int-string limit (4,300 digits)
        why = "must be JSON (a number, or an object)" if isinstance(exc, json.JSONDecodeError) else "has too many digits"
        raise ConfigError(f"{_name(key)}: the value {why}, got {shown(text)}") from None
    top, _, part = key.partition(".")
    if part:
        if top not in OBJECT_KEYS:
            raise ConfigError(f"only {' and '.join(OBJECT_KEYS)} have parts (e.g. confidence_thresholds.low_data); got {shown(key)}")
        if part not in OBJECT_KEYS[top]:
            raise ConfigError(f"unknown level {shown(part)} of {top} (known: {', '.join(OBJECT_KEYS[top])})")
    elif top not in _PARSERS:
        raise ConfigError(f"unknown config key {key[:60]!r} (known: {', '.join(KNOWN_KEYS)})")
    return top, part, value


def parse_assignment(key: str, text: str, current: Mapping[str, Any]) -> tuple[str, Any]:
    """``config set KEY VALUE`` from the command line: returns the row to write (key, JSON value).

    VALUE is JSON (``0.2``, ``{"low_data": 0.7, ...}``); a dotted key sets one part of an object
    value (``confidence_thresholds.low_data 0.7``) and keeps the other parts from ``current`` (the
    rows as they are, key -> JSON value; a missing or bad row counts as the defaults).
    """
    top, part, value = decode_assignment(key, text)
    if part:
        try:
            base = to_json(top, parse_value(top, current[top]))
        except (KeyError, ConfigError):
            base = to_json(top, getattr(GalleryConfig(), top))
        value = {**base, part: value}
    return top, to_json(top, parse_value(top, value))


class ConfigCache:
    """The last config read successfully, one JSON file; used while the database is down."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, config: GalleryConfig, source: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"source": source, "saved_at": datetime.now(UTC).isoformat(timespec="seconds"), "config": config.to_rows()}
        replace_file(self.path, json.dumps(document, indent=2, sort_keys=True))

    def load(self) -> tuple[GalleryConfig, str] | None:
        """The remembered config and when it was saved, or None when there is none (or it is unreadable)."""
        try:
            document = json.loads(self.path.read_text())
            config, _ = GalleryConfig.from_rows(document["config"])
            return config, document["saved_at"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


class ConfigStore:
    """Where a source's config is read and written: its table, or a local file for the folder source.

    For a gallery, every good read refreshes the local copy; when the database is unreachable the
    copy is used and a warning says so (a database that answers with a bad value is an error: the
    copy does not hide it). Sources without a database keep their config in the local file only.
    """

    def __init__(self, root: Path, source: str, gallery=None) -> None:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        self.cache = ConfigCache(Path(root) / f"{digest}.json")
        self.source = source
        self.gallery = gallery

    def load(self) -> tuple[GalleryConfig, list[str]]:
        """The config and notes (defaults taken, a fallback used) for logs and metadata."""
        from facepipeline.gallery.base import GalleryUnavailable

        if self.gallery is None:
            cached = self.cache.load()
            return (cached[0], []) if cached else (GalleryConfig(), ["no config saved for this source; using the SPEC's defaults"])
        try:
            rows = self._read_rows()
        except GalleryUnavailable as exc:
            cached = self.cache.load()
            if cached is None:
                raise
            return cached[0], [f"{exc}; using the config saved at {cached[1]}"]
        config, notes = GalleryConfig.from_rows(rows)
        self.cache.save(config, self.source)
        return config, notes

    def _read_rows(self) -> Mapping[str, Any]:
        """The table's rows; a value the JSON reader itself refuses is a :class:`ConfigError`.

        Python's ``json`` refuses a number of more than 4,300 digits (its int-string conversion
        limit) with a ValueError, and a deeply nested value with a RecursionError: jsonb holds both.
        """
        try:
            return self.gallery.read_config()
        except FacePipelineError:
            raise
        except (ValueError, RecursionError) as exc:
            detail = str(exc).split(";")[0] or type(exc).__name__
            raise ConfigError(
                f"face_recognition_config of {self.source} holds a value that cannot be read ({detail}); "
                "write the key again with: facepipeline config set KEY VALUE"
            ) from None

    def set(self, key: str, text: str) -> tuple[str, Any]:
        """Validate ``KEY VALUE`` and write it; returns the row written."""
        # Only the key written is validated: a bad value elsewhere in the table must not block its repair.
        top, part, value = decode_assignment(key, text)  # before any connection
        if not part:
            parse_value(top, value)
        if self.gallery is not None:
            try:
                current = self._read_rows()
            except ConfigError:
                current = {}  # an unreadable row must not block its repair: parts default
        else:
            local = self.load()[0]
            current = local.to_rows()
        top, value = parse_assignment(key, text, current)
        if self.gallery is not None:
            self.gallery.write_config(top, value)
            try:
                self.load()  # refresh the local copy from what the table now says
            except ConfigError:
                pass  # another key is still bad: the next run says which
        else:
            rows = local.to_rows()
            rows[top] = value
            self.cache.save(GalleryConfig.from_rows(rows)[0], self.source)
        return top, value
