"""facepipeline: retrain, inspect and configure the face-recognition index from the command line.

Every command that computes something materializes the pipeline's assets on the persistent Dagster
instance, so its runs appear in the Dagster UI like any other. Progress goes to stderr; with
``--json`` the one result object is the only thing on stdout.

Errors are one line on stderr, ``facepipeline: error: ...``, never a traceback or argparse's usage
block: bad input (an unknown flag, a bad UUID, a number out of range, a missing folder) exits with
status 2 before any work starts; a failed run or an unreachable source with status 1. A bug (an
exception facepipeline did not raise on purpose) says ``unexpected error (TypeError): ...`` and
exits with status 1; ``FACEPIPELINE_DEBUG=1`` prints its traceback. Every message passes through
:func:`facepipeline.gallery.secrets.redact` with the secrets of the environment, so neither the
service role key nor a database password can reach the terminal.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import traceback
import uuid
from typing import NoReturn

from cli.collector import collect_as_usual, collect_less_often
from cli.environment import prepare_environment
from facepipeline.errors import FacePipelineError
from facepipeline.gallery.config import ConfigError
from facepipeline.gallery.secrets import environment_secrets, one_line, redact
from facepipeline.options import OptionsError

SOURCE_HELP = (
    "embedded (the demo gallery), postgres:DSN, postgres (SUPABASE_DB_URL), supabase (REST: SUPABASE_URL + "
    "SUPABASE_SERVICE_ROLE_KEY) or folder:DIR; default: FACEPIPELINE_SOURCE"
)


class UsageError(FacePipelineError):
    """Bad input on the command line: exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one :class:`UsageError`, not a usage block and ``exit(2)``.

    Sub-command parsers are made with the parent's class, so this covers every level.
    """

    def error(self, message: str) -> NoReturn:
        printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)  # an argument may hold a newline
        raise UsageError(f"{printable} (see {self.prog} --help)")


def whole_number(low: int, high: int):
    """An argparse ``type``: a whole number in ``[low, high]`` (digits only: no 1e9, no 5000-digit values)."""

    def parse(text: str) -> int:
        stripped = text.strip()
        digits = stripped.removeprefix("-")
        if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
            raise argparse.ArgumentTypeError(f"expected a whole number between {low} and {high}, got {_shown(text)}")
        value = int(stripped)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its message
    return parse


def event_arg(text: str) -> str:
    """An argparse ``type``: an event's UUID (canonical form), or ``none`` for photos without an event."""
    if text.strip() == "none":
        return "none"
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an event's UUID or 'none', got {_shown(text)}") from None


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="facepipeline", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    retrain = commands.add_parser("retrain", help="read verified faces, embed, build and evaluate a new index version")
    _source_argument(retrain)
    _filter_arguments(retrain)
    retrain.add_argument("--mode", default="incremental", help="incremental (default) or full: full re-embeds every face")
    retrain.add_argument("--model-version", help="label of this model version in the training session")
    retrain.add_argument("--no-update-existing", dest="update_existing", action="store_false", help="do not write descriptors back")
    retrain.add_argument("--target-far", metavar="RATE", help="false-accept rate for the recommended threshold (default 0.001)")
    retrain.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    retrain.set_defaults(handler="cli.retrain:run", option_fields=("mode", "model_version", "update_existing", "target_far"))

    prepare = commands.add_parser("prepare", help="the dataset a retrain would use: statistics and validation")
    _source_argument(prepare)
    _filter_arguments(prepare)
    prepare.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    prepare.set_defaults(handler="cli.gallery:prepare", option_fields=())

    history = commands.add_parser("history", help="training sessions, newest first (from the local history)")
    history.add_argument("--limit", type=whole_number(1, 1_000_000), default=20, metavar="N")
    history.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    history.set_defaults(handler="cli.gallery:history")

    versions = commands.add_parser("versions", help="the index versions with their metrics and checks; * = promoted")
    versions.add_argument("--limit", type=whole_number(1, 1_000_000), default=20, metavar="N")
    versions.add_argument("--json", action="store_true", help="print one JSON object on stdout (with every promotion)")
    versions.set_defaults(handler="cli.versions:versions")

    promote = commands.add_parser("promote", help="make an index version the one recognition uses (recorded with who and why)")
    promote.add_argument("version", metavar="VERSION", help="v7 or 7")
    promote.add_argument("--reason", help="why (kept in the promotions ledger and the Dagster event log)")
    promote.add_argument("--force", action="store_true", help="promote a version whose checks failed, or that is filtered")
    promote.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    promote.set_defaults(handler="cli.versions:promote")

    rollback = commands.add_parser("rollback", help="promote again the version that was promoted before the current one")
    rollback.add_argument("--reason", help="why (kept in the promotions ledger and the Dagster event log)")
    rollback.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    rollback.set_defaults(handler="cli.versions:rollback")

    prune = commands.add_parser(
        "prune", help="remove old index and clustering versions, old runs' step outputs, dataset snapshots and unused photos"
    )
    prune.add_argument("--keep", type=whole_number(1, 1_000_000), metavar="N",
                       help="keep the newest N of each, the promoted version and the N it can roll back to "
                            "(default: facepipeline.retention.DEFAULT_KEEP, 10)")
    prune.add_argument("--photo-grace-days", type=whole_number(0, 36_500), metavar="DAYS",
                       help="cached photos fetched in the last DAYS stay, used or not (default 7)")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    prune.set_defaults(handler="cli.prune:run")

    config = commands.add_parser("config", help="read or change face_recognition_config")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    get = config_commands.add_parser("get", help="print the config (validated)")
    _source_argument(get)
    get.add_argument("key", nargs="?", help="one key (default: all)")
    get.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    get.set_defaults(handler="cli.gallery:config_get")
    set_ = config_commands.add_parser("set", help="validate and write one key, e.g. context_weight 0.2")
    _source_argument(set_)
    set_.add_argument("key", help="a config key, or confidence_thresholds.LEVEL")
    set_.add_argument("value", help="a JSON value: 0.2, 5, or {\"low_data\": 0.7, ...}")
    set_.set_defaults(handler="cli.gallery:config_set")

    calibrate = config_commands.add_parser(
        "calibrate", help="recommended thresholds per data level for a false-accept rate, next to the configured ones"
    )
    _source_argument(calibrate)
    calibrate.add_argument("--far", metavar="RATE", help="target false-accept rate (default 0.001)")
    calibrate.add_argument("--apply", action="store_true", help="write the recommended thresholds to the config")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    calibrate.set_defaults(handler="cli.gallery:config_calibrate")

    recognize = commands.add_parser("recognize", help="suggest names for the faces on new photos, per event, with the promoted index")
    _source_argument(recognize)
    recognize.add_argument("--event-id", "--event", dest="event_ids", action="append", metavar="UUID", type=event_arg,
                           help="only this event (repeatable; 'none' = photos without an event); default: every event with new photos")
    recognize.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    recognize.set_defaults(handler="cli.recognize:recognize")

    clusters = commands.add_parser("clusters", help="cluster the faces nobody has named; show or reject clusters")
    _source_argument(clusters)
    clusters.add_argument("action", nargs="?", choices=("show", "reject"), help="show: the latest clustering, without clustering again; "
                          "reject ID: leave that cluster's faces out of every later clustering")
    clusters.add_argument("cluster_id", nargs="?", metavar="ID")
    clusters.add_argument("--reason", help="with reject: why (kept in the rejections ledger)")
    clusters.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    clusters.set_defaults(handler="cli.recognize:clusters")

    search = commands.add_parser("search", help="the faces of the promoted index most like the faces on a photo")
    search.add_argument("photo", help="a photo file (JPEG, PNG, WEBP)")
    search.add_argument("--event", metavar="UUID", type=event_arg, help="only faces of this event")
    search.add_argument("-k", type=whole_number(1, 10_000), default=10, help="matches per face (default 10)")
    search.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    search.set_defaults(handler="cli.search:run")

    gallery = commands.add_parser("gallery", help="the embedded demo gallery: up, down or status")
    gallery.add_argument("action", choices=("up", "down", "status"))
    gallery.set_defaults(handler="cli.gallery:embedded")
    return parser


def _source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help=SOURCE_HELP)


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-id", dest="event_ids", action="append", metavar="UUID", help="only this event (repeatable)")
    parser.add_argument("--person-id", dest="person_ids", action="append", metavar="UUID", help="only this person (repeatable)")
    parser.add_argument("--date-from", metavar="YYYY-MM-DD", help="only events on or after this day")
    parser.add_argument("--date-to", metavar="YYYY-MM-DD", help="only events on or before this day")
    parser.add_argument("--min-faces-per-person", metavar="N", help="default: the config table's")
    parser.add_argument("--include-co-occurring", action="store_true", default=None, help="with --person-id: also the people on the same photos")
    parser.add_argument("--context-weight", metavar="W", help="in [0, 1]; default: the config table's")


BAD_INPUT = (OptionsError, ConfigError, UsageError)
"""Errors of the user's input: exit status 2."""
DEBUG_VARIABLE = "FACEPIPELINE_DEBUG"
JOB_COMMANDS = ("cli.retrain:run", "cli.recognize:recognize")
"""The handlers that always run a job: they end their start-up themselves, once the instance is open."""


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        module_name, _, function = args.handler.partition(":")
        prepare_environment()
        from cli.sources import check_arguments

        check_arguments(args)  # bad options, a missing folder, an unknown source: refused before Dagster loads
        module = __import__(module_name, fromlist=[function])  # Dagster loads only once the environment is set
        if args.handler not in JOB_COMMANDS:
            collect_as_usual()  # the start-up is over (cli/collector.py)
        return getattr(module, function)(args)
    except BAD_INPUT as exc:
        return _fail(str(exc), 2)
    except FacePipelineError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        print("facepipeline: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ``facepipeline versions | head``: the reader left, nothing to say
        return 1
    except Exception as exc:  # a bug: still one line, and the way to see more
        if os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0"):
            print(redact(traceback.format_exc(), environment_secrets()), file=sys.stderr, end="")
        return _fail(f"unexpected error ({type(exc).__name__}): {exc}; rerun with {DEBUG_VARIABLE}=1 for the traceback", 1)


def run() -> NoReturn:
    """The console script ``facepipeline``: :func:`main`, then an exit without the interpreter's teardown.

    With Dagster, InsightFace and the code location loaded (~2,400 modules), Python spends about a
    second after the last line of a command freeing every module and object one by one (0.4 s for
    ``import dagster`` alone), work that a finished command does not need: the instance, the
    database connections and every file are closed by their ``with`` blocks. What a normal exit
    does before that still happens here, in its order: other threads are waited for, the exit
    handlers run (logging's flush, file locks, temporary files), and the output is flushed; an
    output that cannot be written (a full disk) fails the command with status 120, as Python's own
    exit does. Only the freeing is skipped.
    """
    collect_less_often()  # before Dagster's imports, which are most of a command's objects
    try:
        status = main()
    except SystemExit as exc:  # argparse's --help
        status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # CPython's own exit sequence runs the same (checked on 3.11)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # a reader that left (``| head``): nothing more to say
            pass
        except (OSError, ValueError):
            status = status or 120
    os._exit(status or 0)


def _fail(message: str, status: int) -> int:
    """One line on stderr, without secrets; returns the exit status."""
    print(f"facepipeline: error: {one_line(redact(message, environment_secrets()))}", file=sys.stderr)
    return status


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    run()
