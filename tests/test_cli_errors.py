"""Bad input on the command line: one clear line on stderr, a non-zero exit, no traceback, no usage block.

Every case runs the real ``facepipeline`` console script as a subprocess, as a user would. The
checks are the same for all: exit status 2 (bad input) or 1 (a fault), exactly one line on stderr
starting ``facepipeline: error:``, nothing on stdout, and no run started (the Dagster instance has
no run afterwards). Most cases are refused before Dagster is even imported, so each takes well
under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FACES

SCRIPT = Path(sys.executable).with_name("facepipeline")
UUID = "0b9e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
FAKE_KEY = "sb_secret_FAKEcliErrorKey0123456789abcdef"
HUGE = "9" * 5000  # past Python's 4,300-digit int-string conversion limit
BIG = "1" + "0" * 400  # overflows float()
A_PHOTO = next(FACES.glob("*/*.jpg"))


def facepipeline(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FACEPIPELINE_", "DAGSTER_", "SUPABASE_"))}
    clean.update(FACEPIPELINE_HOME=str(home), **(env or {}))
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=clean, cwd=home.parent, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess, status: int, message: str) -> str:
    assert done.returncode == status, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    [line] = lines
    assert line.startswith("facepipeline: error: "), line
    assert message in line, line
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr
    assert done.stdout == ""
    return line


def no_runs(home: Path) -> None:
    """Nothing was started: no Dagster run storage was even created."""
    assert not (home / "dagster" / "history").exists()


@pytest.fixture()
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture()
def folder(tmp_path) -> Path:
    (tmp_path / "faces").mkdir()
    return tmp_path / "faces"


BAD_INPUT = [
    # unknown commands, flags, choices
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["retrain", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["retrain", "--mode"], "argument --mode: expected one argument"),
    (["gallery", "sideways"], "invalid choice: 'sideways'"),
    (["clusters", "explode"], "invalid choice: 'explode'"),
    (["config"], "the following arguments are required: config_command"),
    # modes, UUIDs, dates
    (["retrain", "--mode", "sometimes"], "mode: must be one of incremental, full, got 'sometimes'"),
    (["retrain", "--event-id", "not-a-uuid"], "event_ids[0]: 'not-a-uuid' is not a UUID"),
    (["retrain", "--event-id", UUID, "--event-id", UUID[:-1]], f"event_ids[1]: '{UUID[:-1]}' is not a UUID"),
    (["prepare", "--person-id", "1234"], "person_ids[0]: '1234' is not a UUID"),
    (["retrain", "--date-from", "2024-02-30"], "date_from: '2024-02-30' is not a date"),
    (["retrain", "--date-from", "2024-06-02", "--date-to", "2024-06-01"], "date_from: 2024-06-02 is after date_to"),
    (["recognize", "--event-id", "nope"], "argument --event-id/--event: expected an event's UUID or 'none', got 'nope'"),
    (["search", str(A_PHOTO), "--event", "x" * 500], "expected an event's UUID or 'none', got 'xxxx"),
    # numbers out of range, not numbers, too many digits
    (["retrain", "--min-faces-per-person", "0"], "min_faces_per_person: must be at least 1"),
    (["retrain", "--min-faces-per-person", "-3"], "min_faces_per_person: must be at least 1"),
    (["retrain", "--min-faces-per-person", "2.5"], "min_faces_per_person: expected a whole number"),
    (["retrain", "--min-faces-per-person", HUGE], "min_faces_per_person: expected a whole number"),
    (["retrain", "--context-weight", "nan"], "context_weight: expected a number between 0 and 1"),
    (["retrain", "--context-weight", "1e400"], "context_weight: expected a number between 0 and 1"),
    (["retrain", "--context-weight", BIG], "context_weight: expected a number between 0 and 1"),
    (["retrain", "--context-weight", "-0.1"], "context_weight: must be between 0 and 1"),
    (["retrain", "--target-far", "2"], "target_far: must be strictly between 0 and 1"),
    (["retrain", "--target-far", "0"], "target_far: must be strictly between 0 and 1"),
    (["retrain", "--model-version", "v1\u0007beep"], "model_version: must be one line of printable characters"),
    (["retrain", "--model-version", "v" * 201], "model_version: at most 200 characters"),
    (["history", "--limit", "abc"], "argument --limit: expected a whole number between 1 and 1000000, got 'abc'"),
    (["history", "--limit", "0"], "argument --limit: must be between 1 and 1000000, got 0"),
    (["versions", "--limit", HUGE], "argument --limit: expected a whole number"),
    (["search", str(A_PHOTO), "-k", "0"], "argument -k: must be between 1 and 10000, got 0"),
    # missing files and folders, unknown sources
    (["retrain", "--source", "folder:/definitely/not/here"], "folder not found: /definitely/not/here"),
    (["prepare", "--source", "folder:/definitely/not/here"], "folder not found"),
    (["retrain", "--source", "s3:bucket"], "unknown source 's3:bucket'"),
    (["retrain", "--source", "postgresql://u:pw@127.0.0.1/db?no_such_option=1"], "not a valid Postgres connection string"),
    (["search", "/definitely/not/here.jpg"], "no such photo: /definitely/not/here.jpg"),
    # versions
    (["promote", "v" + HUGE], "VERSION must look like v7 or 7"),
    (["promote", "seven"], "VERSION must look like v7 or 7, got 'seven'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a)[:50] or "nothing" for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(args, message, home):
    assert_one_line_error(facepipeline(*args, home=home), 2, message)
    no_runs(home)


CONFIG_INPUT = [
    (["set", "context_weight", HUGE], "context_weight: the value has too many digits"),
    (["set", "context_weight", BIG], "context_weight must be between 0 and 1, got a number of about 401 digits"),
    (["set", "context_weight", "NaN"], "context_weight must be a number between 0 and 1, got NaN"),
    (["set", "context_weight", "[" * 100_000], "context_weight: the value is nested too deeply"),
    (["set", "context_weight", "{oops"], "context_weight: the value must be JSON"),
    (["set", "min_faces_per_person", BIG], "min_faces_per_person must be at most 1,000,000,000, got a number of about 401 digits"),
    (["set", "data_levels.high_data", "true"], "data_levels.high_data must be a whole number >= 1, got true"),
    (["set", "confidence_thresholds.huge_data", "0.5"], "unknown level \"huge_data\" of confidence_thresholds"),
    (["set", "colour", "1"], "unknown config key 'colour'"),
    (["get", "colour"], "unknown config key 'colour'"),
]


@pytest.mark.parametrize(("args", "message"), CONFIG_INPUT, ids=[" ".join(a)[:50] for a, _ in CONFIG_INPUT])
def test_a_bad_config_value_is_one_line_and_the_saved_config_is_unchanged(args, message, home, folder):
    assert facepipeline("config", "set", "context_weight", "0.3", "--source", f"folder:{folder}", home=home).returncode == 0
    saved = sorted((home / "config").glob("*.json"))
    before = [p.read_text() for p in saved]
    assert_one_line_error(facepipeline("config", *args, "--source", f"folder:{folder}", home=home), 2, message)
    assert [p.read_text() for p in sorted((home / "config").glob("*.json"))] == before  # nothing written
    shown = facepipeline("config", "get", "context_weight", "--source", f"folder:{folder}", home=home)
    assert shown.returncode == 0 and shown.stdout == "context_weight = 0.3\n"


def test_a_bad_setting_in_the_environment_is_one_line_and_exit_status_1(home, folder):
    done = facepipeline("retrain", "--source", f"folder:{folder}", home=home, env={"FACEPIPELINE_EMBED_WORKERS": HUGE})
    assert_one_line_error(done, 1, "FACEPIPELINE_EMBED_WORKERS must be a whole number, got '9999")
    no_runs(home)


def test_an_unexpected_error_is_one_redacted_line_and_debug_shows_the_traceback(tmp_path):
    """A real fault nobody raises on purpose: FACEPIPELINE_HOME is a file. Its path holds the key,
    which must not reach the terminal, in the line or in the debug traceback."""
    home = tmp_path / FAKE_KEY
    home.write_text("not a folder")
    env = {"SUPABASE_SERVICE_ROLE_KEY": FAKE_KEY}
    done = facepipeline("history", home=home, env=env)
    line = assert_one_line_error(done, 1, "unexpected error (")
    assert "rerun with FACEPIPELINE_DEBUG=1 for the traceback" in line and "***" in line
    assert FAKE_KEY not in done.stderr

    debug = facepipeline("history", home=home, env={**env, "FACEPIPELINE_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == line  # the same one line, last
    assert FAKE_KEY not in debug.stderr and "***" in debug.stderr


def test_a_missing_folder_from_the_environment_is_refused_before_a_run(home):
    done = facepipeline("retrain", home=home, env={"FACEPIPELINE_SOURCE": "folder:/definitely/not/here"})
    assert_one_line_error(done, 2, "folder not found: /definitely/not/here")
    no_runs(home)


def test_help_still_works(home):
    done = facepipeline("retrain", "--help", home=home)
    assert done.returncode == 0 and "usage: facepipeline retrain" in done.stdout and done.stderr == ""


def test_a_config_value_of_400_or_5000_digits_in_the_database_is_one_line_and_can_be_repaired(gallery_dsn, home):
    """A gallery app that wrote an absurd number: 400 digits overflowed float() (OverflowError), 5000
    digits are past Python's int-string limit (ValueError) in the JSON reader itself."""
    import psycopg

    source = ("--source", f"postgres:{gallery_dsn}")
    with psycopg.connect(gallery_dsn, autocommit=True) as conn:
        for digits, message in ((BIG, "context_weight must be between 0 and 1, got a number of about 401 digits"),
                                (HUGE, "holds a value that cannot be read (Exceeds the limit (4300 digits) for integer string conversion")):
            assert conn.execute("update face_recognition_config set value = %s::jsonb where key = 'context_weight'", [digits]).rowcount == 1
            line = assert_one_line_error(facepipeline("config", "get", *source, home=home), 2, message)
            assert "Traceback" not in line and gallery_dsn not in line
            repaired = facepipeline("config", "set", "context_weight", "0.2", *source, home=home)
            assert repaired.returncode == 0, repaired.stderr[-2000:]
            value = conn.execute("select value from face_recognition_config where key = 'context_weight'").fetchone()[0]
            assert value == 0.2
