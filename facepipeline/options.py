"""The options of one retrain, validated in one place before any work starts.

The CLI, the Dagster run config (Launchpad) and the sensors all build a :class:`RetrainOptions`;
a bad value raises :class:`OptionsError` whose message starts with the field's name. Options left
unset (``min_faces_per_person``, ``context_weight``) take the gallery's config table values.

Every parser takes any value at all (a string from the command line, any JSON value from run
config) and either returns a value within its bounds or raises :class:`OptionsError`: never
another exception, even for a 5,000-digit number, NaN, a nested object or a control character
(tests/test_parsers_properties.py holds them to that with hypothesis).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from typing import Any

from facepipeline.errors import FacePipelineError, shown
from facepipeline.gallery.config import GalleryConfig
from facepipeline.sources.base import FaceFilters

MODES = ("incremental", "full")
MAX_FACES_PER_PERSON = 1_000_000
MAX_SEED = 2**63 - 1
MAX_LABEL = 200


class OptionsError(FacePipelineError, ValueError):
    """A retrain option with a bad value; the message names the field."""


@dataclass(frozen=True)
class RetrainOptions:
    event_ids: tuple[str, ...] = ()
    person_ids: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    min_faces_per_person: int | None = None
    """None: the config table's value."""
    include_co_occurring: bool = False
    context_weight: float | None = None
    """None: the config table's value."""
    mode: str = "incremental"
    model_version: str | None = None
    """A label for this model version in the training session; None: ``<pack>/<index version>``."""
    update_existing: bool = True
    """False: no descriptors are written back to the gallery."""
    test_fraction: float = 0.2
    seed: int = 42
    target_far: float = 0.001

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None = None, **fields: Any) -> RetrainOptions:
        """Build from loose values (strings from a CLI or run config); raise on the first bad field."""
        values = {**(raw or {}), **fields}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise OptionsError(f"{sorted(unknown)[0]}: unknown option (known: {', '.join(cls.__dataclass_fields__)})")
        parsed = {name: _PARSERS[name](name, value) for name, value in values.items() if value is not None}
        options = cls(**parsed)
        if options.date_from and options.date_to and options.date_from > options.date_to:
            raise OptionsError(f"date_from: {options.date_from} is after date_to {options.date_to}")
        return options

    def resolved(self, config: GalleryConfig) -> RetrainOptions:
        """These options with the config table's values filled in where none was given."""
        return replace(
            self,
            min_faces_per_person=self.min_faces_per_person or config.min_faces_per_person,
            context_weight=config.context_weight if self.context_weight is None else self.context_weight,
        )

    @property
    def partial(self) -> bool:
        """True when the faces are a selection (events, people, dates): the index covers only them."""
        return bool(self.event_ids or self.person_ids or self.date_from or self.date_to)

    def filters(self) -> FaceFilters:
        return FaceFilters(
            event_ids=self.event_ids,
            person_ids=self.person_ids,
            date_from=self.date_from,
            date_to=self.date_to,
            min_faces_per_person=self.min_faces_per_person or 1,
            include_co_occurring=self.include_co_occurring,
        )

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["event_ids"], data["person_ids"] = list(self.event_ids), list(self.person_ids)
        for key in ("date_from", "date_to"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def _uuids(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise OptionsError(f"{name}: expected a list of UUIDs, got {shown(value)}")
    out = []
    for i, item in enumerate(items):
        text = item.strip() if isinstance(item, str) else None
        try:
            out.append(str(uuid.UUID(text)))
        except (TypeError, ValueError, AttributeError):
            raise OptionsError(f"{name}[{i}]: {shown(text if text is not None else item)} is not a UUID") from None
    return tuple(dict.fromkeys(out))


def _day(name: str, value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise OptionsError(f"{name}: {shown(value)} is not a date (YYYY-MM-DD)")


def _count(name: str, value: Any) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 12:
        number = int(value.strip())
    elif isinstance(value, str):
        try:
            as_float = float(value)
        except ValueError:
            as_float = math.nan
        if as_float.is_integer() and abs(as_float) <= MAX_FACES_PER_PERSON:
            number = int(as_float)  # "3.0"
    if number is None:
        raise OptionsError(f"{name}: expected a whole number, got {shown(value)}")
    if number < 1:
        raise OptionsError(f"{name}: must be at least 1, got {shown(number)}")
    if number > MAX_FACES_PER_PERSON:
        raise OptionsError(f"{name}: must be at most {MAX_FACES_PER_PERSON:,}, got {shown(number)}")
    return number


def _seed(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 42.0 from JSON, as pydantic takes it
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name}: expected a whole number, got {shown(value)}")
    if not 0 <= value <= MAX_SEED:
        raise OptionsError(f"{name}: must be between 0 and 2**63 - 1, got {shown(value)}")
    return value


def _unit(name: str, value: Any, *, open_interval: bool = False) -> float:
    number = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):  # "abc"; a 400-digit int
            number = math.nan
    if not math.isfinite(number):
        raise OptionsError(f"{name}: expected a number between 0 and 1, got {shown(value)}")
    inside = 0 < number < 1 if open_interval else 0 <= number <= 1
    if not inside:
        bounds = "strictly between 0 and 1" if open_interval else "between 0 and 1"
        raise OptionsError(f"{name}: must be {bounds}, got {number:g}")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else value
    if text in ("true", "yes", "1", "on", 1):
        return True
    if text in ("false", "no", "0", "off", 0):
        return False
    raise OptionsError(f"{name}: expected true or false, got {shown(value)}")


def _mode(name: str, value: Any) -> str:
    if not isinstance(value, str) or value not in MODES:
        raise OptionsError(f"{name}: must be one of {', '.join(MODES)}, got {shown(value)}")
    return value


def _label(name: str, value: Any) -> str | None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise OptionsError(f"{name}: expected a text, got {shown(value)}")
    text = value.strip() if isinstance(value, str) else shown(value)
    if len(text) > MAX_LABEL:
        raise OptionsError(f"{name}: at most {MAX_LABEL} characters")
    if any(not character.isprintable() for character in text):
        raise OptionsError(f"{name}: must be one line of printable characters, got {shown(text)}")
    return text or None


_PARSERS = {
    "event_ids": _uuids,
    "person_ids": _uuids,
    "date_from": _day,
    "date_to": _day,
    "min_faces_per_person": _count,
    "include_co_occurring": _flag,
    "context_weight": _unit,
    "mode": _mode,
    "model_version": _label,
    "update_existing": _flag,
    "test_fraction": lambda name, value: _unit(name, value, open_interval=True),
    "seed": _seed,
    "target_far": lambda name, value: _unit(name, value, open_interval=True),
}
