"""The local instance's event log (cli/event_log_storage.py) on real SQLite files, through real Dagster instances.

Each test opens the instance the CLI's ``dagster.yaml`` describes, and a second, independent
instance on the same files where it matters: what one writes through its open connections, the
other must read, and its file watcher (the UI's live view of a run) must see arrive.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as db
from dagster import DagsterInstance, asset, materialize
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.migration import ASSET_KEY_INDEX_COLS
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from cli.environment import write_instance_config
from cli.event_log_storage import OPEN_DATABASES, LocalEventLogStorage, _migration_scripts


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster"
    write_instance_config(home)
    return home


def _instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_config(str(home))


def _message(run_id: str, text: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level=20, user_message=text, run_id=run_id, timestamp=time.time(), step_key=None, job_name=None,
        dagster_event=None,
    )


@asset
def answer() -> int:
    return 42


def test_the_instance_the_cli_writes_keeps_dagsters_files_and_a_run_is_read_back_by_another_instance(dagster_home):
    with _instance(dagster_home) as writer, _instance(dagster_home) as reader:
        assert isinstance(writer.event_log_storage, LocalEventLogStorage)
        result = materialize([answer], instance=writer)
        assert result.success
        # Dagster's own layout: one database per run beside the index, where its default keeps them.
        assert (dagster_home / "history" / "runs" / f"{result.run_id}.db").is_file()
        written = [record.event_log_entry.dagster_event_type for record in writer.get_records_for_run(result.run_id).records]
        # The writer's connections are still open: the reader sees every event through the log.
        read = [record.event_log_entry.dagster_event_type for record in reader.get_records_for_run(result.run_id).records]
        assert read == written and "ASSET_MATERIALIZATION" in {str(kind.value) for kind in read if kind}
        assert reader.get_latest_materialization_event(answer.key).run_id == result.run_id  # the index database too


@pytest.mark.parametrize("folder", ["with space", "quote\"'# {x}: y", "emoji \U0001f600", "newline\nin it"])
def test_the_dagster_yaml_names_the_event_folder_whatever_characters_its_path_holds(tmp_path, folder):
    home = tmp_path / folder / "dagster"
    write_instance_config(home)
    with _instance(home) as instance:
        assert instance.event_log_storage._base_dir == str(home / "history" / "runs")


def test_commits_use_synchronous_normal_and_the_databases_kept_open_are_bounded(dagster_home):
    with _instance(dagster_home) as instance:
        storage = instance.event_log_storage
        runs = [str(uuid.uuid4()) for _ in range(OPEN_DATABASES + 4)]
        for run_id in runs:
            storage.store_event(_message(run_id, "hello"))
        assert len(storage._engines) == OPEN_DATABASES
        assert list(storage._engines)[-1] == runs[-1]  # the most recently used stay open
        with storage.run_connection(runs[-1]) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)
        assert storage.get_logs_for_run(runs[0])[0].user_message == "hello"  # a closed one opens again
    assert not storage._engines  # disposing the instance closes them all


def test_the_live_view_of_a_run_sees_events_another_process_writes_through_its_open_connection(dagster_home):
    run_id = str(uuid.uuid4())
    seen: list[str] = []
    arrived = threading.Event()

    def callback(entry: EventLogEntry, _cursor: str) -> None:
        seen.append(entry.user_message)
        if len(seen) == 3:
            arrived.set()

    with _instance(dagster_home) as watching, _instance(dagster_home) as writing:
        writing.event_log_storage.store_event(_message(run_id, "first"))  # the run's database exists
        watching.event_log_storage.watch(run_id, None, callback)
        time.sleep(0.5)  # the watcher is scheduled
        for text in ("second", "third"):
            writing.event_log_storage.store_event(_message(run_id, text))
        # The writer's connection stays open, so the events are in the run's -wal file, not yet in its database.
        assert Path(f"{writing.event_log_storage.path_for_shard(run_id)}-wal").stat().st_size > 0
        assert arrived.wait(timeout=20), f"the watcher saw only {seen}"
        assert seen == ["first", "second", "third"]


def test_wipe_closes_the_deleted_databases_so_new_events_land_in_new_files(dagster_home):
    with _instance(dagster_home) as instance:
        storage = instance.event_log_storage
        run_id = str(uuid.uuid4())
        storage.store_event(_message(run_id, "before"))
        storage.wipe()
        assert not Path(storage.path_for_shard(run_id)).exists()
        storage.store_event(_message(run_id, "after"))
        assert Path(storage.path_for_shard(run_id)).is_file()
    with _instance(dagster_home) as reader:
        assert [entry.user_message for entry in reader.event_log_storage.get_logs_for_run(run_id)] == ["after"]


def _layout(path: Path) -> tuple:
    """What a Dagster event database is: its schema, its alembic revision, its journal mode."""
    with sqlite3.connect(path) as conn:
        schema = sorted(conn.execute("select type, name, tbl_name, coalesce(sql, '') from sqlite_master").fetchall())
        return schema, conn.execute("select version_num from alembic_version").fetchall(), conn.execute("pragma journal_mode").fetchone()


def test_new_databases_are_made_as_dagster_makes_them_with_its_migration_scripts_read_once(tmp_path):
    run_id = str(uuid.uuid4())
    dagsters = SqliteEventLogStorage(str(tmp_path / "dagster"))
    dagsters.store_event(_message(run_id, "hello"))
    _migration_scripts.cache_clear()
    ours = LocalEventLogStorage(str(tmp_path / "ours"))
    for other in (run_id, str(uuid.uuid4()), str(uuid.uuid4())):
        ours.store_event(_message(other, "hello"))
    try:
        for shard in ("index", run_id):
            made = _layout(tmp_path / "ours" / f"{shard}.db")
            assert made == _layout(tmp_path / "dagster" / f"{shard}.db")
            assert made[1] == [(_migration_scripts().get_current_head(),)] and made[2] == ("wal",)
        # The index and three new run databases: one reading of the scripts, then the process's copy.
        assert _migration_scripts.cache_info().misses == 1 and _migration_scripts.cache_info().hits >= 4
    finally:
        ours.dispose()
        dagsters.dispose()


def test_two_storages_making_the_same_run_database_at_once_both_write_to_it(tmp_path):
    base = str(tmp_path / "runs")
    first, second = LocalEventLogStorage(base), LocalEventLogStorage(base)  # as two processes would
    reference = SqliteEventLogStorage(str(tmp_path / "reference"))
    try:
        for attempt in range(5):
            run_id = str(uuid.uuid4())
            start = threading.Barrier(2)

            def write(storage: LocalEventLogStorage, text: str, run_id: str = run_id, start: threading.Barrier = start) -> None:
                start.wait()
                storage.store_event(_message(run_id, text))

            threads = [threading.Thread(target=write, args=(s, t)) for s, t in ((first, "one"), (second, "two"))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert sorted(entry.user_message for entry in first.get_logs_for_run(run_id)) == ["one", "two"], attempt
            reference.store_event(_message(run_id, "reference"))
            assert _layout(Path(base) / f"{run_id}.db") == _layout(tmp_path / "reference" / f"{run_id}.db")
    finally:
        for storage in (first, second, reference):
            storage.dispose()


def test_a_database_at_another_revision_is_left_to_dagster_which_does_not_migrate_it(tmp_path):
    run_id = str(uuid.uuid4())
    made = SqliteEventLogStorage(str(tmp_path))
    made.store_event(_message(run_id, "old"))
    made.dispose()
    head = _migration_scripts().get_current_head()
    older = _migration_scripts().get_revision(head).down_revision
    with sqlite3.connect(tmp_path / f"{run_id}.db") as conn:
        conn.execute("update alembic_version set version_num = ?", (older,))
    storage = LocalEventLogStorage(str(tmp_path))
    try:
        storage.store_event(_message(run_id, "new"))  # `dagster instance migrate` migrates, not opening it
        assert [entry.user_message for entry in storage.get_logs_for_run(run_id)] == ["old", "new"]
        assert _layout(tmp_path / f"{run_id}.db")[1] == [(older,)]
    finally:
        storage.dispose()


def test_a_built_secondary_index_is_asked_of_the_database_once_one_not_built_every_time(dagster_home):
    with _instance(dagster_home) as instance:
        storage = instance.event_log_storage
        assert storage.has_secondary_index(ASSET_KEY_INDEX_COLS)  # built when the index database was made
        asked: list[str] = []
        with storage._db_lock:
            engine = storage._engine("index")
        db.event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: asked.append(statement))

        def questions() -> int:
            return sum(statement.lstrip().upper().startswith("SELECT") and "secondary_indexes" in statement for statement in asked)

        storage._built_indexes.clear()
        assert storage.has_secondary_index(ASSET_KEY_INDEX_COLS) and storage.has_secondary_index(ASSET_KEY_INDEX_COLS)
        assert questions() == 1
        assert not storage.has_secondary_index("not_built_yet") and not storage.has_secondary_index("not_built_yet")
        assert questions() == 3
        storage.enable_secondary_index("not_built_yet")  # as a migration (another process, here this one) does
        assert storage.has_secondary_index("not_built_yet") and storage.has_secondary_index("not_built_yet")
        assert questions() == 4
