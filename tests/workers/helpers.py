"""What the worker tests share: one run in-process, and quota-sync's table."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TypeVar

import psycopg

from ferry.config import CommonSettings, load
from ferry.runtime import RunContext, Schedule, Worker
from ferry.stores import redis as redis_store
from ferry.workers import quota_sync
from ferry.workers.counter_sync import CounterSync

Conn = psycopg.Connection[tuple[object, ...]]
Sync = TypeVar("Sync", bound=CounterSync)


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


def quota_sync_as(cls: type[Sync], *, scan_count: int = 500) -> Sync:
    """quota-sync built as the CounterSync subclass `cls`, for fault tests
    that change how the walk behaves; settings come from the environment."""
    return cls(
        quota_sync.NAME,
        load(CommonSettings),
        pattern="quota:{account}:{metric}",
        table=quota_sync.TABLE,
        schedule=Schedule(interval_s=60),
        scan_count=scan_count,
    )


class RepeatingSync(CounterSync):
    """Returns every real SCAN page twice, as SCAN may during a rehash."""

    def pages(self, client: redis_store.Client) -> Iterator[redis_store.Page]:
        for keys, values in super().pages(client):
            yield keys, values
            yield keys, values
