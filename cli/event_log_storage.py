"""The local instance's event log: Dagster's SQLite storage without a new connection and two fsyncs per event.

Dagster's ``SqliteEventLogStorage`` keeps one SQLite database per run (and an index database
across runs) in write-ahead-log mode. For every read and write it creates an engine, opens a
connection, commits with SQLite's default ``synchronous=FULL`` (an fsync of the log) and closes
the connection again, and closing the last connection checkpoints the log into the database file
(a second fsync). A retrain stores about 150 events: measured here, ~8 ms each and 3-4 s of a
retrain that adds 25 faces, more than any of its steps.

:class:`LocalEventLogStorage` is that storage, with the same files and tables, and two changes:

- **Connections stay open**: one engine per database, the most recently used
  :data:`OPEN_DATABASES` of them (a webserver that shows hundreds of runs does not keep hundreds of
  files open), closed when the instance is disposed.
- **``synchronous=NORMAL``**, SQLite's recommended setting in WAL mode: a commit writes the log
  without an fsync; checkpoints still sync. The database cannot be corrupted by a crash; a power
  loss or an OS crash can lose the last events written before it (a process that dies loses
  nothing).
- **Alembic's scripts are read once per process**: Dagster checks each database it opens against
  the newest revision of its migration scripts and stamps a new one through alembic's command
  machinery, reading the ~90 script files each time (~20 ms): three times for the two databases a
  retrain opens (the index and its run's own). Here a database at the newest revision is left as it
  is, and a new, empty one is made as Dagster makes it (its tables, WAL, stamped at the newest
  revision), with the scripts read once; anything else goes to Dagster's own code.
- **A built secondary index is remembered**: Dagster's per-run storage asks the index database
  whether one is built before every read of asset records (25 queries in a retrain, ~1 ms each);
  its ``ConsolidatedSqliteEventLogStorage`` caches the answer, and so does this one, keeping only a
  yes (an index, once built, stays; one not built yet may be built by another process).

Since the log is checkpointed when it fills (SQLite's ``wal_autocheckpoint``), not after every
event, a run's new events reach its ``-wal`` file first: the UI's live view of a run (Dagster's
file watcher) watches that file as well as the database.

``cli.environment`` names this class in the ``dagster.yaml`` it writes, so the CLI, ``dagster dev``,
its daemon and every run they launch use it. Dagster is pinned to one release (pyproject.toml):
``_connect`` is the storage's own, private, connection helper.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine, get_alembic_config
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from watchdog.events import FileSystemEvent

OPEN_DATABASES = 8
"""Databases kept open per storage: the index and the runs being written or read."""
SECOND_LOOK_S = 0.1
"""After a change to a run's files, its watcher reads the run again this much later (see _RunWatcher)."""

_STORAGES: weakref.WeakSet[LocalEventLogStorage] = weakref.WeakSet()


class LocalEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with its databases kept open and ``synchronous=NORMAL`` (module docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()  # guarded by _db_lock
        self._built_indexes: set[str] = set()
        """Secondary indexes the index database says are built (see has_secondary_index)."""
        super().__init__(base_dir, inst_data)
        _STORAGES.add(self)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> LocalEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _engine(self, shard: str) -> db.engine.Engine:
        """The open engine of ``shard``'s database; called under ``_db_lock``, so no other is in use."""
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard), pool_size=1, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        )
        db.event.listen(engine, "connect", _commit_without_fsync)
        self._engines[shard] = engine
        while len(self._engines) > OPEN_DATABASES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    def _initdb(self, engine: db.engine.Engine, for_index_shard: bool = False) -> None:
        """Dagster's, with alembic's scripts read once per process (module docstring)."""
        scripts = _migration_scripts()
        try:
            with engine.connect() as conn:
                revision = MigrationContext.configure(conn).get_current_revision()
                if revision is not None and revision == scripts.get_current_head():
                    return
                if revision is None and not db.inspect(conn).get_table_names():
                    conn.rollback()  # ends SQLAlchemy's transaction of the reads (SQLite began none)
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                    # Each CREATE commits on its own (pysqlite), as in Dagster's code: not atomic, and an
                    # unstamped database a kill left behind is stamped by Dagster's code next time.
                    SqlEventLogStorageMetadata.create_all(conn)
                    MigrationContext.configure(conn).stamp(scripts, "head")
                    conn.commit()
                    return
        except (db.exc.DatabaseError, sqlite3.DatabaseError):
            pass  # another process is making it ("already exists", "locked"), or worse: Dagster's code retries or raises
        super()._initdb(engine, for_index_shard)

    def has_secondary_index(self, name: str) -> bool:
        """Dagster's answer, asked of the database until it is yes (module docstring)."""
        if name in self._built_indexes:
            return True
        built = super().has_secondary_index(name)
        if built:
            self._built_indexes.add(name)
        return built

    def _close_databases(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        """As Dagster's, with a watcher that also reacts to the run's ``-wal`` file."""
        if not self._obs:
            from watchdog.observers import Observer

            self._obs = Observer()
            self._obs.start()
        watcher = _RunWatcher(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watcher, self._obs.schedule(watcher, self._base_dir, recursive=True))

    def end_watch(self, run_id: str, handler: Any) -> None:
        watcher = self._watchers[run_id].get(handler, (None, None))[0]
        if watcher is not None:
            watcher.stop()
        super().end_watch(run_id, handler)

    def wipe(self) -> None:
        self._close_databases()  # the run databases are deleted: no connection may keep writing to them
        self._built_indexes.clear()
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        for watchers in list(self._watchers.values()):
            for watcher, _ in list(watchers.values()):
                watcher.stop()
        self._close_databases()

    def _forget_inherited_connections(self) -> None:
        """In a forked child: the parent's connections are the parent's; open new ones when needed."""
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()
        self._db_lock = threading.Lock()


class _RunWatcher(SqliteEventLogStorageWatchdog):
    """Dagster's watcher of one run's database, which also wakes when the run's log file changes.

    SQLite writes a commit's pages to the ``-wal`` file before it publishes the commit to readers
    (in the shared-memory index, which raises no file event), so a read woken by the last write can
    miss that commit, and nothing else would wake it: the run's last events would not show until
    the page is reloaded. Each change is therefore read again :data:`SECOND_LOOK_S` later.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading = threading.Lock()  # the file watcher's thread and the second look's take turns
        self._second_look: threading.Timer | None = None
        self._stopped = False

    @property
    def patterns(self) -> list[str]:
        return [self._log_path, f"{self._log_path}-wal"]

    def on_modified(self, event: FileSystemEvent) -> None:
        self._process_log()
        with self._reading:
            if self._stopped:
                return
            if self._second_look is not None:
                self._second_look.cancel()
            self._second_look = threading.Timer(SECOND_LOOK_S, self._process_log)
            self._second_look.daemon = True
            self._second_look.start()

    def _process_log(self) -> None:
        with self._reading:
            if not self._stopped:
                super()._process_log()

    def stop(self) -> None:
        self._stopped = True
        if self._second_look is not None:
            self._second_look.cancel()


@functools.cache
def _migration_scripts() -> ScriptDirectory:
    """Dagster's alembic scripts, as its own ``_initdb`` reads them (the same ``alembic.ini``), with
    their revision map built here: alembic builds it on first use, without a lock, and the storages
    of one process (the webserver's threads) share this object."""
    scripts = ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))
    scripts.get_current_head()
    return scripts


def _commit_without_fsync(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _after_fork_in_child() -> None:
    for storage in list(_STORAGES):
        storage._forget_inherited_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
