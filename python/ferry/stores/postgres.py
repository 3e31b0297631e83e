"""Postgres connections that survive a transaction-mode pooler.

Ferry keeps no session state across transactions: locks are
transaction-scoped advisory locks, temporary tables are dropped on commit,
and server-side prepared statements are off (`prepare_threshold=None`)
because a pooler may hand the next transaction to another backend.
"""

from __future__ import annotations

import logging
from datetime import datetime

import psycopg

from ferry.errors import StoreError

# A connect attempt that takes longer than this is a dead server, not a slow one.
CONNECT_TIMEOUT_S = 10

logger = logging.getLogger("ferry.stores.postgres")


def connect(url: str, *, application: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection with autocommit off and prepared statements off.

    Raises `StoreError` when the server cannot be reached.
    """
    try:
        return psycopg.connect(
            url,
            autocommit=False,
            prepare_threshold=None,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=f"ferry-{application}",
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to Postgres: {first_line(exc)}") from exc


def xact_lock(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    """Wait for the transaction-scoped advisory lock `name`."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ferry:{name}",))


def try_xact_lock(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    """Take the transaction-scoped advisory lock `name` if nobody holds it.

    The lock is released by the commit or rollback of the current transaction,
    which keeps it correct behind a transaction-mode pooler.
    """
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"ferry:{name}",)
    ).fetchone()
    return bool(row and row[0])


def alive(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """True when `conn` still answers; a dropped connection answers False.

    Sends one query outside any transaction Ferry keeps, so it is safe
    behind a transaction-mode pooler.
    """
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1")
        conn.rollback()
    except psycopg.OperationalError:
        return False
    return True


def transaction_time(conn: psycopg.Connection[tuple[object, ...]]) -> datetime:
    """The start time of the current transaction, on the database's clock."""
    row = conn.execute("SELECT now()").fetchone()
    if row is None or not isinstance(row[0], datetime):
        raise StoreError("postgres did not answer SELECT now() with a time")
    return row[0]


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, for one-line logs."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
