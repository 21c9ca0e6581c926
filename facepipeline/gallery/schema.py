"""The SPEC's schema (``schema.sql``), applied to an empty database: the demo's and the tests'."""

from __future__ import annotations

from importlib.resources import files

import psycopg

SCHEMA_SQL = files("facepipeline.gallery").joinpath("schema.sql").read_text()


def has_schema(conn: psycopg.Connection) -> bool:
    return conn.execute("select to_regclass('public.photo_faces') is not null").fetchone()[0]


def create_schema(dsn: str) -> bool:
    """Create the tables and the initial config rows unless they exist; True when created."""
    with psycopg.connect(dsn, autocommit=False) as conn:
        # Two processes starting the demo at once: the second waits, then finds the tables.
        conn.execute("select pg_advisory_xact_lock(hashtext('facepipeline.create_schema'))")
        if has_schema(conn):
            return False
        conn.execute(SCHEMA_SQL)
    return True
