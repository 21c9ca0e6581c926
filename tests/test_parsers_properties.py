"""Property-based tests of every parser of outside input: any value in, a valid value or a clear error out.

hypothesis feeds each parser arbitrary JSON-like values (None, booleans, huge and negative ints,
NaN, infinities, 1.7e308, strings, nested lists and objects) and checks the one promise that
matters: the parser returns a value inside its documented bounds, or raises the error class meant
for users (BBoxError, ConfigError, OptionsError, UsageError, argparse's ArgumentTypeError), never
anything else (no OverflowError, ValueError from int(), RecursionError, TypeError).
tests/test_options_and_config.py holds the example-based cases; these are the "for any value" ones.
"""

from __future__ import annotations

import argparse
import json
import math
import uuid
from datetime import date
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cli.main import UsageError, build_parser, event_arg, whole_number
from facepipeline.gallery.config import (
    KNOWN_KEYS,
    MAX_WHOLE,
    OBJECT_KEYS,
    ConfidenceThresholds,
    ConfigError,
    DataLevels,
    GalleryConfig,
    parse_assignment,
    parse_value,
    to_json,
)
from facepipeline.gallery.secrets import MASK, environment_secrets, password_in, redact
from facepipeline.geometry import MAX_COORDINATE, BBox, BBoxError
from facepipeline.options import MAX_FACES_PER_PERSON, MAX_SEED, MODES, OptionsError, RetrainOptions
from facepipeline.settings import Settings, SettingsError

PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

NASTY_NUMBERS = st.sampled_from(
    [0, -0.0, 1, -1, 0.5, 1.0000000001, 1.7e308, -1.7e308, 5e-324, 10**400, -(10**400), 10**30, 2**63, math.inf, -math.inf, math.nan]
)
NUMBERS = st.one_of(
    NASTY_NUMBERS,
    st.integers(),
    st.integers(min_value=-(10**450), max_value=10**450),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
BOX_KEYS = ("x", "y", "width", "height")
BOXES = st.one_of(
    JSON,
    st.fixed_dictionaries({k: JSON for k in BOX_KEYS}),
    st.fixed_dictionaries({k: NUMBERS for k in BOX_KEYS}),
    st.fixed_dictionaries({k: st.floats(-2e7, 2e7) for k in BOX_KEYS}),
    st.dictionaries(st.sampled_from(BOX_KEYS), NUMBERS),  # missing keys
)


def _finite_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def assert_valid_box(box: BBox) -> None:
    for value in (box.x, box.y, box.width, box.height, box.x2, box.y2, *box.center):
        assert _finite_real(value)
    assert 0 < box.width <= MAX_COORDINATE and 0 < box.height <= MAX_COORDINATE
    assert abs(box.x) <= MAX_COORDINATE and abs(box.y) <= MAX_COORDINATE


# -- boxes -------------------------------------------------------------------------------------


@PROPERTY
@given(BOXES)
def test_any_json_is_a_finite_box_of_positive_size_or_a_bbox_error(data):
    try:
        box = BBox.from_json(data)
    except BBoxError as exc:
        message = str(exc)
        assert message.startswith("bbox") and "\n" not in message and len(message) < 300
        return
    assert_valid_box(box)
    if min(box.width, box.height) >= 1:  # to_json rounds to 2 places: only a box of a pixel or more survives it unchanged
        assert BBox.from_json(box.to_json()).iou(box) > 0.98


VALID_BOXES = st.builds(
    BBox,
    st.floats(-MAX_COORDINATE, MAX_COORDINATE),
    st.floats(-MAX_COORDINATE, MAX_COORDINATE),
    st.floats(min_value=0, max_value=MAX_COORDINATE, exclude_min=True),
    st.floats(min_value=0, max_value=MAX_COORDINATE, exclude_min=True),
)
FACTORS = st.one_of(st.floats(min_value=1, allow_infinity=False), st.integers(min_value=1, max_value=10**400), st.sampled_from([1, 1.5, 3, 1e308]))


@PROPERTY
@given(VALID_BOXES, FACTORS)
def test_expanded_of_any_valid_box_stays_a_finite_valid_box_that_covers_more(box, factor):
    grown = box.expanded(factor)
    assert_valid_box(grown)
    assert grown.width >= box.width and grown.height >= box.height


@PROPERTY
@given(VALID_BOXES, st.one_of(st.floats(max_value=1, exclude_max=True), st.sampled_from([math.inf, math.nan, True, "2"])))
def test_expanded_refuses_a_factor_that_shrinks_or_is_not_finite(box, factor):
    with pytest.raises(BBoxError, match="finite factor >= 1"):
        box.expanded(factor)


@PROPERTY
@given(VALID_BOXES, st.integers(1, 30_000), st.integers(1, 30_000))
def test_a_box_grown_and_clipped_to_any_photo_is_inside_it_or_none(box, width, height):
    clipped = box.expanded(1.5).clipped(width, height)
    if clipped is not None:
        assert_valid_box(clipped)
        assert 0 <= clipped.x and clipped.x2 <= width and 0 <= clipped.y and clipped.y2 <= height


def test_the_boxes_that_broke_runs_are_refused_with_a_reason():
    """1.7e308 used to pass from_json and overflow to inf in expanded(): every run failed."""
    for data, message in [
        ({"x": 0, "y": 0, "width": 1.7e308, "height": 50}, "bbox width must be within"),
        ({"x": 1e300, "y": 0, "width": 50, "height": 50}, "bbox x must be within"),
        ({"x": 10**400, "y": 0, "width": 50, "height": 50}, "bbox x must be within"),
        ({"x": 0, "y": 0, "width": {"a": [1]}, "height": 50}, "bbox width must be a number, got {'a': [1]}"),
        ({"x": 0, "y": 0, "width": None, "height": 50}, "bbox width must be a number, got None"),
    ]:
        with pytest.raises(BBoxError, match=message.replace("[", r"\[")):
            BBox.from_json(data)
    edge = BBox(MAX_COORDINATE, MAX_COORDINATE, MAX_COORDINATE, MAX_COORDINATE)
    assert_valid_box(edge.expanded(1e308))


# -- the config table --------------------------------------------------------------------------


def assert_in_range(key: str, value) -> None:
    if isinstance(value, ConfidenceThresholds):
        assert all(0 <= getattr(value, level) <= 1 for level in ("low_data", "medium_data", "high_data"))
    elif isinstance(value, DataLevels):
        assert 1 <= value.medium_data <= value.high_data <= MAX_WHOLE
    elif isinstance(value, float):
        assert math.isfinite(value) and 0 <= value <= 1
    else:
        assert isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WHOLE


def config_values(key: str):
    """Arbitrary JSON, and values near the valid ones so the success path is exercised too."""
    if key == "confidence_thresholds":
        near = st.fixed_dictionaries({level: st.one_of(NUMBERS, st.floats(0, 1)) for level in OBJECT_KEYS[key]})
    elif key == "data_levels":
        near = st.fixed_dictionaries({part: st.one_of(NUMBERS, st.integers(1, 50)) for part in OBJECT_KEYS[key]})
    else:
        near = st.one_of(NUMBERS, st.floats(0, 1), st.integers(-5, 50))
    return st.one_of(JSON, near)


@PROPERTY
@given(st.data())
def test_every_config_key_takes_any_json_value_to_a_valid_value_or_a_config_error(data):
    key = data.draw(st.sampled_from(KNOWN_KEYS))
    value = data.draw(config_values(key))
    try:
        parsed = parse_value(key, value)
    except ConfigError as exc:
        assert str(exc).startswith(key) and "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert_in_range(key, parsed)
    assert parse_value(key, json.loads(json.dumps(to_json(key, parsed)))) == parsed  # what is written reads back


@PROPERTY
@given(st.dictionaries(st.sampled_from([*KNOWN_KEYS, "gallery_theme"]), JSON, max_size=8))
def test_any_config_rows_give_a_valid_config_or_a_config_error(rows):
    try:
        config, notes = GalleryConfig.from_rows(rows)
    except ConfigError:
        return
    for key in KNOWN_KEYS:
        assert_in_range(key, getattr(config, key))
    assert len(notes) == len([k for k in KNOWN_KEYS if k not in rows])


ASSIGNED_KEYS = st.one_of(
    st.sampled_from([*KNOWN_KEYS, *(f"{top}.{part}" for top, parts in OBJECT_KEYS.items() for part in parts)]),
    st.text(max_size=30),
)
ASSIGNED_TEXT = st.one_of(st.text(max_size=40), JSON.map(lambda v: _dumps(v)), st.sampled_from(["9" * 5000, "[" * 5000, "1e999", "NaN"]))


def _dumps(value) -> str:
    try:
        return json.dumps(value)
    except ValueError:
        return "0"


@PROPERTY
@given(ASSIGNED_KEYS, ASSIGNED_TEXT, st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON, max_size=3))
def test_config_set_takes_any_text_to_a_valid_row_or_a_config_error(key, text, current):
    try:
        top, value = parse_assignment(key, text, current)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 500
        return
    assert top in KNOWN_KEYS
    assert_in_range(top, parse_value(top, value))


# -- run options (CLI strings and Launchpad JSON) -----------------------------------------------

OPTION_VALUES = st.one_of(
    JSON,
    st.sampled_from([*MODES, "true", "false", "2024-02-29", "2024-02-30", str(uuid.UUID(int=7)), "3", "3.0", "1e3", "0.5"]),
    st.lists(st.one_of(st.uuids().map(str), st.text(max_size=5), NUMBERS), max_size=3),
)


@PROPERTY
@given(st.dictionaries(st.sampled_from(list(RetrainOptions.__dataclass_fields__)), OPTION_VALUES, max_size=4))
def test_any_run_options_give_options_within_their_bounds_or_an_options_error_naming_the_field(raw):
    try:
        options = RetrainOptions.parse(raw)
    except OptionsError as exc:
        field = str(exc).split(":")[0].split("[")[0]
        assert field in raw and "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert all(str(uuid.UUID(u)) == u for u in (*options.event_ids, *options.person_ids))
    assert options.min_faces_per_person is None or 1 <= options.min_faces_per_person <= MAX_FACES_PER_PERSON
    assert options.context_weight is None or 0 <= options.context_weight <= 1
    assert 0 < options.test_fraction < 1 and 0 < options.target_far < 1 and 0 <= options.seed <= MAX_SEED
    assert options.mode in MODES and isinstance(options.update_existing, bool) and isinstance(options.include_co_occurring, bool)
    assert options.model_version is None or (len(options.model_version) <= 200 and options.model_version.isprintable())
    for day in (options.date_from, options.date_to):
        assert day is None or type(day) is date
    json.dumps(options.as_json())  # what goes into run config and metadata serialises


@PROPERTY
@given(st.dictionaries(st.sampled_from(["seed", "context_weight", "target_far", "test_fraction", "min_faces_per_person", "mode"]),
                       st.one_of(NUMBERS, st.sampled_from(MODES)), max_size=3))
def test_the_launchpad_resource_accepts_only_what_the_options_accept(raw):
    import pydantic

    from resources.retrain_options import RetrainOptionsResource

    try:
        expected = RetrainOptions.parse(raw)
    except OptionsError:
        expected = None
    try:
        resource = RetrainOptionsResource(**raw)
    except pydantic.ValidationError:
        assert expected is None, raw
        return
    assert expected is not None and resource.options() == expected


# -- the command line ----------------------------------------------------------------------------


@PROPERTY
@given(st.text(max_size=30), st.integers(0, 5), st.integers(5, 10**6))
def test_whole_number_arguments_are_in_range_or_refused(text, low, high):
    try:
        value = whole_number(low, high)(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc)
        return
    assert type(value) is int and low <= value <= high


@PROPERTY
@given(st.one_of(st.text(max_size=40), st.uuids().map(str), st.uuids().map(lambda u: str(u).upper())))
def test_event_arguments_are_canonical_uuids_or_none_or_refused(text):
    try:
        value = event_arg(text)
    except argparse.ArgumentTypeError:
        return
    assert value == "none" or str(uuid.UUID(value)) == value


TOKENS = st.one_of(
    st.sampled_from(["retrain", "prepare", "history", "versions", "promote", "rollback", "config", "get", "set", "calibrate",
                     "recognize", "clusters", "search", "gallery", "up", "--mode", "--limit", "-k", "--source", "--event-id",
                     "--json", "--apply", "--far", "--no-such", "0", "-1", "9" * 5000, "nan"]),
    st.text(max_size=12).filter(lambda t: not t.startswith(("-h", "--h"))),  # --help prints and exits 0, by design
)


@PROPERTY
@given(st.lists(TOKENS, max_size=6))
def test_any_command_line_parses_or_is_one_usage_error_never_an_exit(argv):
    assume(not any(t.startswith(("-h", "--h")) for t in argv))
    try:
        build_parser().parse_args(argv)
    except UsageError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


def test_version_arguments_are_small_numbers_or_a_usage_error():
    from cli.versions import _version_number

    assert _version_number("v7") == 7 and _version_number(" 12 ") == 12
    for bad in ("v" + "9" * 5000, "v-1", "v1.5", "v\u0663", "", "v"):
        with pytest.raises(UsageError, match="VERSION must look like v7 or 7"):
            _version_number(bad)


# -- settings from the environment ---------------------------------------------------------------


@PROPERTY
@given(st.sampled_from(["FACEPIPELINE_SENSOR_INTERVAL_S", "FACEPIPELINE_EMBED_WORKERS"]),
       st.one_of(st.text(max_size=20).filter(lambda t: "\x00" not in t), st.sampled_from(["9" * 5000, "-1", "0", "64", "86401"])))
def test_numeric_settings_are_in_range_or_a_settings_error(name, text):
    try:
        settings_ = Settings.from_env({name: text})
    except SettingsError as exc:
        assert str(exc).startswith(name) and "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert 1 <= settings_.sensor_interval_s <= 86400 and 0 <= settings_.embed_workers <= 64


# -- redaction ------------------------------------------------------------------------------------

SECRET_TEXT = st.text(st.characters(blacklist_characters="*", blacklist_categories=("Cs",)), min_size=4, max_size=30)


@PROPERTY
@given(SECRET_TEXT, st.text(max_size=40), st.text(max_size=40))
def test_a_known_secret_never_survives_redaction(secret, before, after):
    assert secret not in redact(f"{before}{secret}{after}{secret}", [secret])


@PROPERTY
@given(SECRET_TEXT.filter(lambda s: s.strip() == s and "\n" not in s))
def test_the_password_of_a_connection_string_is_found_and_redacted_in_either_encoding(password):
    dsn = f"postgresql://facepipeline:{quote(password, safe='')}@127.0.0.1:5432/gallery"
    assert password_in(dsn) == password
    found = environment_secrets({"SUPABASE_DB_URL": dsn})
    message = f"could not connect to {dsn} (password {password})"
    cleaned = redact(message, found)
    assert password not in cleaned and quote(password, safe="") not in cleaned and MASK in cleaned
