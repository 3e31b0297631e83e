"""`ferry migrate`: apply the schema files in order, once each.

Files live in `ferry/stores/schema/` as `NNN_name.sql`. Each is applied in
its own transaction together with its row in `ferry_schema_migrations`, under
a transaction-scoped advisory lock so that two processes migrating at once
take turns. Applying again is a no-op.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from ferry.stores.postgres import connect, xact_lock

logger = logging.getLogger("ferry.stores.migrate")

LOCK_NAME = "migrate"


def schema_files() -> list[tuple[str, str]]:
    """(version, SQL text) for every schema file, in version order."""
    folder = resources.files("ferry.stores").joinpath("schema")
    names = sorted(
        entry.name for entry in folder.iterdir() if entry.name.endswith(".sql")
    )
    return [
        (name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in names
    ]


def migrate(url: str) -> list[str]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[str] = []
    with connect(url, application="migrate") as conn:
        _ensure_table(conn)
        for version, sql in schema_files():
            with conn.transaction():
                xact_lock(conn, LOCK_NAME)
                done = conn.execute(
                    "SELECT 1 FROM ferry_schema_migrations WHERE version = %s",
                    (version,),
                ).fetchone()
                if done:
                    continue
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO ferry_schema_migrations (version) VALUES (%s)",
                    (version,),
                )
            applied_now.append(version)
            logger.info("migration_applied version=%s", version)
    return applied_now


def _ensure_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with conn.transaction():
        xact_lock(conn, LOCK_NAME)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ferry_schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
