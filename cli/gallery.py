"""``facepipeline prepare | history | config | gallery``: the gallery side, without a Dagster run."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from cli.main import print_json
from cli.sources import open_configured_source, options_from, settings_for
from facepipeline.gallery.base import Gallery
from facepipeline.gallery.config import KNOWN_KEYS, ConfigError, ConfigStore
from facepipeline.options import RetrainOptions
from facepipeline.prepare import prepare_dataset
from facepipeline.sessions import SessionHistory
from facepipeline.settings import Settings


def _config_store(settings: Settings):
    source = open_configured_source(settings)
    gallery = source if isinstance(source, Gallery) else None
    return source, ConfigStore(settings.home / "config", source.description, gallery)


def prepare(args: argparse.Namespace) -> int:
    options = options_from(args)
    settings = settings_for(args)
    source, store = _config_store(settings)
    prepared = prepare_dataset(source, options, store)
    report = prepared.as_dict()
    if args.json:
        print_json(report)
        return 0 if prepared.validation.ok else 1
    stats = prepared.stats
    print(f"{report['source']}: {stats.faces} verified faces of {stats.people} people "
          f"(per person: min {stats.min_faces_per_person}, max {stats.max_faces_per_person}, avg {stats.avg_faces_per_person})")
    print("  people by face count: " + ", ".join(f"{band}: {n}" for band, n in stats.people_by_face_count.items()))
    print(f"  left out: {prepared.read.dropped_by_min_faces} faces of people with fewer than "
          f"{prepared.options.min_faces_per_person}; {len(prepared.read.rejected)} rows with a bad box")
    for note in prepared.notes:
        print(f"  note: {note}")
    for error in prepared.validation.errors:
        print(f"  ERROR: {error}")
    print(f"  {len(prepared.validation.warnings)} warnings (people with fewer than 5 faces)")
    return 0 if prepared.validation.ok else 1


def history(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    records = SessionHistory(settings.home / "history").list(args.limit)
    if args.json:
        print_json({"sessions": [record.__dict__ for record in records]})
        return 0
    if not records:
        print(f"no training sessions yet under {settings.home / 'history'}")
    for r in records:
        metrics = r.fields.get("metrics") or {}
        detail = r.error or metrics.get("processed") or ""
        if metrics.get("rank1_accuracy") is not None:
            detail += f", rank-1 {metrics['rank1_accuracy']:.4f}"
        sync = "" if r.synced else " [not yet in the gallery]"
        print(f"{r.created_at}  {r.status:<9}  {r.id}  {r.fields.get('training_mode') or '-':<11}  "
              f"{r.fields.get('model_version') or '-'}  {detail}{sync}")
    return 0


def config_get(args: argparse.Namespace) -> int:
    _, store = _config_store(settings_for(args))
    config, notes = store.load()
    rows = config.to_rows()
    if args.key:
        if args.key not in rows:
            raise ConfigError(f"unknown config key {args.key!r} (known: {', '.join(KNOWN_KEYS)})")
        rows = {args.key: rows[args.key]}
    if args.json:
        print_json({"config": rows, "notes": notes})
    else:
        for key, value in rows.items():
            print(f"{key} = {json.dumps(value)}")
        for note in notes:
            print(f"note: {note}")
    return 0


def config_set(args: argparse.Namespace) -> int:
    _, store = _config_store(settings_for(args))
    key, value = store.set(args.key, args.value)
    print(f"{key} = {json.dumps(value)}")
    return 0


def config_calibrate(args: argparse.Namespace) -> int:
    """The thresholds per data level that meet a false-accept rate on the promoted index's faces."""
    from facepipeline.calibration import calibrate
    from facepipeline.index import IndexStore
    from facepipeline.metrics import EvaluationConfig

    options = RetrainOptions.parse({"target_far": args.far} if args.far is not None else {})  # validated, named
    settings = settings_for(args)
    _, store = _config_store(settings)
    config, notes = store.load()
    version = IndexStore(settings.home / "index").require_promoted()
    index = version.load()
    result = calibrate(
        index.vectors(), index.entries.column("person_id").to_pylist(), index.entries.column("face_id").to_pylist(),
        levels=config.data_levels, configured=config.confidence_thresholds,
        config=EvaluationConfig(test_fraction=options.test_fraction, seed=options.seed, target_far=options.target_far),
    )
    applied = None
    if args.apply:
        if not result.trusted:
            raise ConfigError(
                f"nothing to apply: {len(index)} faces cannot show FAR <= {result.target_far} at any level "
                f"({next(iter(result.per_level.values())).note}); choose a larger --far"
            )
        applied = store.set("confidence_thresholds", json.dumps(asdict(result.recommended)))[1]
    if args.json:
        print_json({"index_version": version.name, **result.as_dict(), "applied": applied, "notes": notes})
        return 0
    print(f"thresholds for index {version.name} ({len(index)} faces), target false-accept rate {result.target_far}:")
    print(f"data levels: {', '.join(f'{level} = {band}' for level, band in config.data_levels.describe().items())}")
    print(result.markdown().replace("**", ""))
    for level in result.per_level.values():
        print(f"  {level.level}: {level.note}")
    if result.warning:
        print(f"warning: {result.warning}")
    print(f"applied: confidence_thresholds = {json.dumps(applied)}" if applied else "not applied (add --apply to write them)")
    return 0


def embedded(args: argparse.Namespace) -> int:
    from facepipeline.gallery.embedded import EmbeddedGallery

    settings = Settings.from_env()
    gallery = EmbeddedGallery(settings.gallery_home, settings.seed_folder)
    if args.action == "down":
        gallery.down()
        print("embedded gallery stopped (its data stays for the next 'up')")
        return 0
    if args.action == "status":
        running = gallery.postgres.running()
        print(f"postgres: {running.dsn() if running else 'stopped'}")
        return 0 if running else 1
    up = gallery.up()
    print(f"postgres: {up.dsn}\nphotos:   {up.photos_url}")
    if up.seeded:
        print(f"seeded:   {up.seeded.line()}")
    return 0
