"""What the worker tests share: one run in-process, and quota-sync's table."""

from __future__ import annotations

import threading

import psycopg

from ferry.runtime import RunContext, Worker

Conn = psycopg.Connection[tuple[object, ...]]


def run(worker: Worker) -> dict[str, object]:
    """One run of `worker` in this process: its synced count and log fields.

    Fails the test if the run was skipped (another process held its lock).
    """
    outcome = worker.run_once(RunContext(threading.Event()))
    assert outcome.skipped is None
    return {"synced": outcome.synced, **outcome.fields}


def quota_rows(db: Conn) -> dict[tuple[str, str], int]:
    """`quota_usage` as {(account, metric): used}."""
    found = db.execute("SELECT account_id, metric, used FROM quota_usage").fetchall()
    return {(str(a), str(m)): int(str(u)) for a, m, u in found}
