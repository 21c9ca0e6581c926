"""facepipeline: retrain and inspect the face-recognition index from the command line.

Every command that computes something materializes the pipeline's assets on the persistent Dagster
instance, so its runs appear in the Dagster UI like any other. Progress goes to stderr; with
``--json`` the one result object is the only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from cli.environment import prepare_environment
from facepipeline.errors import FacePipelineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facepipeline", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    retrain = commands.add_parser("retrain", help="read verified faces, embed, build and evaluate a new index version")
    retrain.add_argument("--source", help="folder:DIR (default: FACEPIPELINE_SOURCE)")
    retrain.add_argument("--mode", choices=("incremental", "full"), default="incremental", help="full re-embeds every face")
    retrain.add_argument("--min-faces-per-person", type=_positive_int, default=3, metavar="N")
    retrain.add_argument("--target-far", type=_unit_interval, default=0.001, metavar="RATE", help="false-accept rate for the recommended threshold")
    retrain.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    retrain.set_defaults(handler=run_retrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FacePipelineError as exc:
        print(f"facepipeline: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facepipeline: interrupted", file=sys.stderr)
        return 130


def run_retrain(args: argparse.Namespace) -> int:
    prepare_environment()
    from cli.retrain import retrain  # Dagster is imported only once the environment is set
    from facepipeline.settings import Settings

    settings = Settings.from_env()
    if args.source:
        settings = replace(settings, source=args.source)
    summary = retrain(settings, mode=args.mode, min_faces_per_person=args.min_faces_per_person, target_far=args.target_far)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(_human_summary(summary))
    return 0 if summary["status"] == "success" else 1


def _human_summary(summary: dict) -> str:
    if summary["status"] != "success":
        return f"retrain failed: {summary['error']}\n  run: {summary['run_id']}"
    metrics = summary["metrics"]
    lines = [
        f"retrain {summary['run_id']} succeeded",
        f"  faces:    {summary['faces_total']} verified of {summary['people']} people; "
        f"{summary['faces_embedded']} embedded, {summary['faces_reused']} reused, {summary['faces_failed']} failed",
        f"  photos:   {summary['photos_fetched']} fetched, {summary['photos_failed']} failed",
        f"  index:    {summary['index_version']} at {summary['index_path']}",
    ]
    if metrics.get("status") == "ok":
        verdict = "met" if metrics["target_met"] else "NOT met"
        lines.append(
            f"  metrics:  rank-1 {metrics['rank1_accuracy']:.4f} (macro {metrics['rank1_accuracy_macro']:.4f}); "
            f"at threshold {metrics['recommended_threshold']:.2f}: FAR {metrics['far']:.5f} "
            f"(target <= {metrics['target_far']} {verdict}), precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}"
        )
        if not metrics["target_met"]:
            lines.append(f"            {metrics['message']}")
    else:
        lines.append(f"  metrics:  {metrics.get('message')}")
    lines.append(f"  metrics file: {summary['metrics_path']}")
    lines.append(f"  embeddings:   {summary['embeddings_path']}")
    lines.append(f"  photo cache:  {summary['photo_cache']}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
