"""``facepipeline prune``: bound what the home keeps of earlier runs (facepipeline.retention)."""

from __future__ import annotations

import argparse

from cli.main import print_json
from cli.sources import settings_for
from facepipeline.index import who
from facepipeline.retention import CACHED_PHOTOS, DEFAULT_KEEP, PHOTO_GRACE_S
from jobs.prune import prune_home
from jobs.run_guard import open_instance
from resources import ArtifactStoreResource


def run(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    keep = args.keep or DEFAULT_KEEP
    grace_s = PHOTO_GRACE_S if args.photo_grace_days is None else args.photo_grace_days * 86400.0
    with open_instance() as instance:
        plan, report = prune_home(instance, ArtifactStoreResource(home=str(settings.home)), keep=keep,
                                  dry_run=args.dry_run, reason=f"facepipeline prune --keep {keep}", by=who(),
                                  photo_grace_s=grace_s)
    summary = {
        "dry_run": args.dry_run, "keep": keep, "plan": plan.line(), "bytes": plan.bytes, "kept": plan.kept,
        "removals": [{"kind": r.kind, "name": r.name, "path": str(r.path), "bytes": r.bytes} for r in plan.removals],
    }
    if report is not None:
        summary.update(report.as_dict())
    if args.json:
        print_json(summary)
    else:
        print(("would remove " if report is None else "pruning: ") + plan.line())
        for removal in plan.removals:
            print(f"  {removal.kind:20} {removal.name:40} {removal.bytes / 2**20:9.1f} MiB")
        for why in plan.kept.get(CACHED_PHOTOS, []):
            print(f"  cached photos kept: {why}")
        if report is not None:
            print(report.line())
            for path, why in report.kept.items():
                print(f"  kept after all: {path}: {why}")
            for path, why in report.failed.items():
                print(f"  not removed: {path}: {why}")
    return 1 if report is not None and report.failed else 0
