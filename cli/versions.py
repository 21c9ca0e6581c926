"""``facepipeline versions | promote VERSION | rollback``: the index versions and which one recognition uses.

A switch by hand is written where the pipeline's own promotions go (``index/promoted.json`` and the
``promotions.jsonl`` ledger) and reported to the Dagster instance as a materialization of
``promoted_index``, with who, when and why: the asset's history in the UI shows every switch.
"""

from __future__ import annotations

import argparse
import itertools
import re

from dagster import AssetMaterialization, DagsterInstance, MetadataValue

from cli.main import UsageError, print_json
from cli.sources import settings_for
from facepipeline.index import IndexStore, IndexVersion, who
from facepipeline.settings import Settings

PROMOTED_INDEX = "promoted_index"


def _store(settings: Settings) -> IndexStore:
    return IndexStore(settings.home / "index")


def describe(version: IndexVersion, promoted: IndexVersion | None) -> dict:
    manifest, metrics = version.manifest, version.metrics() or {}
    checks = version.checks()
    model = manifest.get("model") or {}
    return {
        "version": version.name,
        "promoted": promoted is not None and promoted.version == version.version,
        "created_at": manifest.get("created_at"),
        "faces": manifest.get("faces"),
        "people": manifest.get("people"),
        "partial": manifest.get("partial", False),
        "model_pack": model.get("model_pack"),
        "model_fingerprint": model.get("model_fingerprint"),
        "dataset_fingerprint": manifest.get("dataset_fingerprint"),
        "rank1_accuracy": metrics.get("rank1_accuracy"),
        "rank1_accuracy_macro": metrics.get("rank1_accuracy_macro"),
        "recommended_threshold": metrics.get("recommended_threshold"),
        "far": metrics.get("far"),
        "checks": {name: result.get("passed") for name, result in checks.items()},
        "failed_checks": {name: result.get("summary") for name, result in checks.items() if not result.get("passed")},
        "training_session_id": manifest.get("training_session_id"),
        "run_id": manifest.get("run_id"),
        "path": str(version.path),
    }


def versions(args: argparse.Namespace) -> int:
    store = _store(settings_for(args))
    promoted = store.promoted()
    listed = [describe(v, promoted) for v in itertools.islice(store.newest_first(), args.limit)]
    if args.json:
        print_json({"promoted": promoted.name if promoted else None, "versions": listed, "promotions": store.promotions()})
        return 0
    if not listed:
        print(f"no index versions in {store.root}: run facepipeline retrain")
        return 0
    checks_of = {row["version"]: _checks_text(row) for row in listed}
    width = max(len("checks"), *map(len, checks_of.values())) + 2  # the column fits its longest entry
    print(f"{'':2}{'version':8}{'created (UTC)':22}{'faces':>7}{'people':>7}  {'rank-1':>7}  {'pack':12}{'checks':{width}}session")
    for row in listed:
        rank1 = f"{row['rank1_accuracy']:.4f}" if row["rank1_accuracy"] is not None else "-"
        print(f"{'*' if row['promoted'] else ' ':2}{row['version']:8}{(row['created_at'] or '')[:19]:22}"
              f"{row['faces'] or 0:>7}{row['people'] or 0:>7}  {rank1:>7}  {row['model_pack'] or '-':12}"
              f"{checks_of[row['version']]:{width}}{row['training_session_id'] or '-'}")
        for name, summary in row["failed_checks"].items():
            print(f"{'':10}{name}: {summary}")
    print("* = promoted (the version recognition uses)")
    return 0


def _checks_text(row: dict) -> str:
    checks = ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in row["checks"].items()) or "-"
    return "filtered; " + checks if row["partial"] else checks


def _version_number(text: str) -> int:
    match = re.fullmatch(r"v?([0-9]{1,9})", text.strip())  # ASCII digits, few: int() never meets a 5000-digit string
    if not match:
        raise UsageError(f"VERSION must look like v7 or 7, got {text[:40]!r}")
    return int(match.group(1))


def promote(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    store = _store(settings)
    target = store.get(_version_number(args.version))
    current = store.promoted()
    if current is not None and current.version == target.version:
        raise UsageError(f"{target.name} is already the promoted version")
    problems = _promotion_problems(target, settings)
    if problems and not args.force:
        raise UsageError(f"{target.name} is not promoted: {'; '.join(problems)} (--force promotes it all the same)")
    return _switch(settings, store, target, "promote", args.reason or "promoted by hand", args.json, problems)


def rollback(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    store = _store(settings)
    target = store.rollback_target()
    return _switch(settings, store, target, "rollback", args.reason or "rolled back by hand", args.json, [])


def _promotion_problems(version: IndexVersion, settings: Settings) -> list[str]:
    problems = [f"its check {name} failed ({result.get('summary')})" for name, result in version.checks().items()
                if not result.get("passed")]
    if version.manifest.get("partial"):
        problems.append("it was built from a filtered retrain and does not know everyone")
    pack = (version.model or {}).get("model_pack")
    if pack and pack != settings.model_pack:
        problems.append(f"its vectors come from model pack {pack}, recognition uses {settings.model_pack}")
    return problems


def _switch(settings: Settings, store: IndexStore, target: IndexVersion, action: str, reason: str, as_json: bool,
            overridden: list[str]) -> int:
    by = who()
    record = store.promote(target.version, reason=reason, by=by, action=action)
    previous = f"v{record['previous']}" if record["previous"] else "none"
    metadata = {
        "promoted_version": target.name,
        "previous_version": previous,
        "action": action,
        "by": by,
        "at": record["at"],
        "reason": reason,
        "overridden_problems": MetadataValue.md("\n".join(f"- {p}" for p in overridden) or "none"),
        "model_pack": MetadataValue.text((target.model or {}).get("model_pack", "unknown")),
        "index_path": MetadataValue.path(str(target.path)),
    }
    with DagsterInstance.get() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(
                asset_key=PROMOTED_INDEX,
                description=f"{action}: {previous} -> {target.name} by {by} ({reason})",
                metadata=metadata,
                tags={"dagster/data_version": target.name},
            )
        )
    if as_json:
        print_json({"action": action, "promoted": target.name, "previous": previous, "by": by, "at": record["at"],
                    "reason": reason, "overridden_problems": overridden})
    else:
        print(f"{action}: {previous} -> {target.name} (by {by}; {reason})")
        for problem in overridden:
            print(f"  forced although {problem}")
    return 0
