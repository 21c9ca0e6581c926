"""Run options and the config table's values: every bad value is refused with the field's name."""

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facepipeline.gallery.config import ConfigCache, ConfigError, ConfigStore, GalleryConfig, parse_assignment
from facepipeline.options import OptionsError, RetrainOptions

UUID = "0b9e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"event_ids": [UUID, "42"]}, "event_ids[1]: '42' is not a UUID"),
        ({"person_ids": "nope"}, "person_ids[0]: 'nope' is not a UUID"),
        ({"date_from": "2024-13-01"}, "date_from: '2024-13-01' is not a date"),
        ({"date_from": "2024-06-01", "date_to": "2024-05-31"}, "date_from: 2024-06-01 is after date_to 2024-05-31"),
        ({"min_faces_per_person": 0}, "min_faces_per_person: must be at least 1"),
        ({"min_faces_per_person": 2.5}, "min_faces_per_person: expected a whole number"),
        ({"context_weight": -0.1}, "context_weight: must be between 0 and 1"),
        ({"context_weight": "nan"}, "context_weight: expected a number between 0 and 1"),
        ({"mode": "sometimes"}, "mode: must be one of incremental, full"),
        ({"update_existing": "maybe"}, "update_existing: expected true or false"),
        ({"target_far": 1}, "target_far: must be strictly between 0 and 1"),
        ({"colour": "red"}, "colour: unknown option"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field(raw, message):
    with pytest.raises(OptionsError) as caught:
        RetrainOptions.parse(raw)
    assert str(caught.value).startswith(message)


def test_options_parse_cli_strings_and_take_the_config_tables_values_when_unset():
    options = RetrainOptions.parse(
        {"event_ids": f"{UUID.upper()},{UUID}", "date_from": "2024-01-01", "update_existing": "false", "mode": "full"}
    )
    assert options.event_ids == (UUID,) and options.date_from == date(2024, 1, 1) and not options.update_existing
    resolved = options.resolved(GalleryConfig(min_faces_per_person=4, context_weight=0.3))
    assert (resolved.min_faces_per_person, resolved.context_weight) == (4, 0.3)
    explicit = RetrainOptions.parse(min_faces_per_person="2", context_weight="0").resolved(GalleryConfig())
    assert (explicit.min_faces_per_person, explicit.context_weight) == (2, 0.0)
    filters = resolved.filters()
    assert filters.event_ids == (UUID,) and filters.min_faces_per_person == 4 and filters.by_event


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_context_weight_is_accepted_exactly_when_it_is_a_finite_number_in_the_unit_interval(value):
    try:
        parsed = RetrainOptions.parse(context_weight=value).context_weight
    except OptionsError as exc:
        assert str(exc).startswith("context_weight:")
        assert not (0 <= value <= 1)
    else:
        assert 0 <= value <= 1 and parsed == value


@given(st.text(max_size=40))
def test_event_ids_accept_only_uuids(text):
    import uuid

    try:
        expected = str(uuid.UUID(text.strip()))
    except ValueError:
        expected = None
    if expected is None or "," in text:
        with pytest.raises(OptionsError, match=r"^event_ids\["):
            RetrainOptions.parse(event_ids=[text])
    else:
        assert RetrainOptions.parse(event_ids=[text]).event_ids == (expected,)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"min_faces_per_person": 0}, "min_faces_per_person must be >= 1"),
        ({"min_faces_per_person": True}, "min_faces_per_person must be a whole number"),
        ({"context_weight": 1.2}, "context_weight must be between 0 and 1"),
        ({"confidence_thresholds": {"low_data": 0.7, "medium_data": 1.5, "high_data": 0.5}}, "confidence_thresholds.medium_data must be between 0 and 1"),
        ({"confidence_thresholds": {"low_data": 0.7, "high_data": 0.5}}, "confidence_thresholds is missing medium_data"),
        ({"confidence_thresholds": {"low_data": 0.7, "medium_data": 0.6, "high_data": 0.5, "huge_data": 0.4}}, "unknown levels huge_data"),
        ({"auto_retrain_percentage": "10%"}, "auto_retrain_percentage must be a number"),
    ],
)
def test_a_bad_config_value_is_an_error_naming_the_key(rows, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        GalleryConfig.from_rows(rows)


def test_config_rows_missing_keys_take_the_spec_defaults_and_say_so_unknown_keys_are_the_apps():
    config, notes = GalleryConfig.from_rows({"context_weight": 0.2, "gallery_theme": "dark"})
    assert config.context_weight == 0.2 and config.min_faces_per_person == 3
    assert config.confidence_thresholds.high_data == 0.55
    assert len(notes) == 6 and all("is not in face_recognition_config" in n for n in notes)


def test_config_set_parses_json_and_one_threshold_level():
    current = {"confidence_thresholds": {"low_data": 0.75, "medium_data": 0.6, "high_data": 0.5}}
    assert parse_assignment("context_weight", "0.25", current) == ("context_weight", 0.25)
    key, value = parse_assignment("confidence_thresholds.low_data", "0.8", current)
    assert key == "confidence_thresholds" and value == {"low_data": 0.8, "medium_data": 0.6, "high_data": 0.5}
    # A missing row counts as the defaults; the levels are checked against each other.
    assert parse_assignment("data_levels.high_data", "20", current) == ("data_levels", {"medium_data": 5, "high_data": 20})
    with pytest.raises(ConfigError, match="must not exceed"):
        parse_assignment("data_levels.medium_data", "30", current)
    for bad, message in [
        (("context_weight", "abc"), "must be JSON"),
        (("context_weight", "2"), "between 0 and 1"),
        (("confidence_thresholds.giant", "0.5"), "unknown level"),
        (("min_faces.x", "1"), "only confidence_thresholds and data_levels have parts"),
        (("colour", "1"), "unknown config key 'colour'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_assignment(*bad, current)


def test_the_folder_source_keeps_its_config_in_a_local_file(tmp_path):
    store = ConfigStore(tmp_path, "folder:/photos")
    config, notes = store.load()
    assert config == GalleryConfig() and notes
    store.set("min_faces_per_person", "5")
    again, notes = ConfigStore(tmp_path, "folder:/photos").load()
    assert again.min_faces_per_person == 5 and not notes
    assert ConfigStore(tmp_path, "folder:/other").load()[0].min_faces_per_person == 3  # per source


def test_an_unreadable_saved_copy_is_treated_as_none(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    assert ConfigCache(path).load() is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        # 400 digits used to raise OverflowError in math.isfinite (and in formatting the message)
        ({"context_weight": 10**400}, "context_weight must be between 0 and 1, got a number of about 401 digits"),
        ({"confidence_thresholds": {"low_data": -(10**400), "medium_data": 0.6, "high_data": 0.5}},
         "confidence_thresholds.low_data must be between 0 and 1, got a number of about 401 digits"),
        ({"min_faces_per_person": 10**400}, "min_faces_per_person must be at most 1,000,000,000"),
        ({"auto_retrain_threshold": 10**4400}, "auto_retrain_threshold must be at most"),  # str() of it would raise
        ({"regression_tolerance": float("inf")}, "regression_tolerance must be a number between 0 and 1, got Infinity"),
        ({"data_levels": {"medium_data": 5, "high_data": 10**10}}, "data_levels.high_data must be at most 1,000,000,000"),
    ],
)
def test_a_huge_config_number_is_a_config_error_not_an_overflow(rows, message):
    with pytest.raises(ConfigError, match=message):
        GalleryConfig.from_rows(rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9" * 5000, "context_weight: the value has too many digits"),  # json.loads raised ValueError (int-string limit)
        ("[" * 100_000, "context_weight: the value is nested too deeply"),  # RecursionError
        ("1" + "0" * 400, "context_weight must be between 0 and 1, got a number of about 401 digits"),
        ("-1e999", "context_weight must be a number between 0 and 1, got -Infinity"),
    ],
)
def test_config_set_of_an_absurd_value_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_assignment("context_weight", text, {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"context_weight": 10**400}, "context_weight: expected a number between 0 and 1, got a number of about 401 digits"),  # float() overflowed
        ({"seed": -1}, "seed: must be between 0 and 2**63 - 1"),
        ({"seed": 10**5000}, "seed: must be between 0 and 2**63 - 1, got a number of about 5001 digits"),  # repr() of it would raise
        ({"min_faces_per_person": "9" * 5000}, "min_faces_per_person: expected a whole number"),
        ({"min_faces_per_person": 10**7}, "min_faces_per_person: must be at most 1,000,000"),
        ({"model_version": "v1\nv2"}, "model_version: must be one line of printable characters"),
        ({"mode": ["full"]}, "mode: must be one of incremental, full, got ['full']"),
        ({"event_ids": {"a": 1}}, "event_ids: expected a list of UUIDs"),
        ({"date_from": 20240101}, "date_from: 20240101 is not a date"),
    ],
)
def test_absurd_run_options_are_refused_naming_the_field(raw, message):
    with pytest.raises(OptionsError) as caught:
        RetrainOptions.parse(raw)
    assert str(caught.value).startswith(message)


def test_a_config_row_the_json_reader_refuses_is_a_config_error_naming_the_key():
    from facepipeline.gallery.config import decode_row

    assert decode_row("context_weight", "0.25") == 0.25
    with pytest.raises(ConfigError, match=r"^context_weight: its value in face_recognition_config cannot be read \(Exceeds the limit"):
        decode_row("context_weight", "9" * 5000)
    with pytest.raises(ConfigError, match="^data_levels: its value in face_recognition_config is nested too deeply"):
        decode_row("data_levels", "[" * 100_000 + "]" * 100_000)
    assert decode_row("gallery_theme", "9" * 5000) == "9" * 5000  # the app's own key: kept, not ours to judge
