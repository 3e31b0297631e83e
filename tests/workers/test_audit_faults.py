"""audit under hostile conditions, against real Redis and Postgres: times from
other languages' clients, the stream deleted under a blocked read, and rows
Postgres refuses over its own size limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import redis

from ferry.config import CommonSettings, load
from ferry.workers import audit
from ferry.workers.audit import AuditWorker
from tests.workers.helpers import run

Conn = psycopg.Connection[tuple[object, ...]]
Fields = dict[str, str | bytes]
Factory = Callable[..., AuditWorker]

STREAM = "audit:events"
GROUP = "ferry-audit"
FAST = {
    "FERRY_AUDIT_BLOCK_MS": "100",
    "FERRY_AUDIT_SESSION_S": "0.5",
    "FERRY_AUDIT_CLAIM_IDLE_MS": "300",
    "FERRY_AUDIT_CLAIM_INTERVAL_S": "0.1",
}
# jsonb refuses a string of 2^28 bytes or more ("string too long to represent
# as jsonb string"), a program limit rather than a data error.
JSONB_MAX_STRING_BYTES = 2**28 - 1


def event(n: int, **changes: str | bytes) -> Fields:
    fields: Fields = {
        "actor_id": f"user{n}",
        "action": "upload.create",
        "target_type": "upload",
        "target_id": f"up{n}",
        "ip": "203.0.113.7",
        "occurred_at": "2026-03-05T10:00:00Z",
        "metadata": json.dumps({"n": n}),
    }
    fields.update(changes)
    return fields


def add(client: redis.Redis, fields: Fields) -> str:
    added = client.xadd(STREAM, fields)  # type: ignore[arg-type]
    return added.decode() if isinstance(added, bytes) else str(added)


def pending(client: redis.Redis) -> int:
    try:
        return int(client.xpending(STREAM, GROUP)["pending"])
    except redis.ResponseError:
        return 0


@pytest.fixture
def make_worker(
    ferry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Factory]:
    built: list[AuditWorker] = []
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)

    def make(**settings: str) -> AuditWorker:
        for name, value in settings.items():
            monkeypatch.setenv(f"FERRY_AUDIT_{name.upper()}", value)
        worker = audit.build(load(CommonSettings))
        built.append(worker)
        return worker

    yield make
    for worker in built:
        worker.close()


def stored(db: Conn) -> dict[str, datetime]:
    rows = db.execute("SELECT stream_id, occurred_at FROM audit_log").fetchall()
    return {str(s): t for s, t in rows}  # type: ignore[misc]


def test_nanosecond_times_are_kept_to_the_microsecond(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    # Go's RFC3339Nano and Java's Instant.toString() write up to nine digits.
    ids = {
        add(rclient, event(1, occurred_at="2026-01-01T00:00:00.123456789Z")): (
            datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
        ),
        add(rclient, event(2, occurred_at="2025-12-31T23:59:59.999999999Z")): (
            datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        ),
        add(rclient, event(3, occurred_at="2026-01-01T01:00:00.0000001+01:00")): (
            datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC)
        ),
    }
    figures = run(make_worker())
    assert figures["dead_lettered"] == 0
    assert stored(db) == ids


def test_the_stream_deleted_under_a_blocked_read_does_not_fail_the_run(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    worker = make_worker(
        block_ms="1000", claim_idle_ms="5000", session_s="3", trim_interval_s="0.1"
    )
    first = add(rclient, event(1))
    outcome: dict[str, object] = {}

    def session() -> None:
        outcome.update(run(worker))

    thread = threading.Thread(target=session)
    thread.start()
    deadline = time.monotonic() + 10
    while first not in stored(db):
        assert time.monotonic() < deadline, "the first entry was not stored"
        time.sleep(0.02)
    # The worker is now blocked reading; the application drops the stream,
    # then writes to it again (which creates it without the group).
    time.sleep(0.2)
    rclient.delete(STREAM)
    time.sleep(0.2)
    second = add(rclient, event(2))
    thread.join(10)
    assert not thread.is_alive()

    assert outcome["synced"] == 2
    assert set(stored(db)) == {first, second}
    assert pending(rclient) == 0


def test_a_row_over_a_postgres_size_limit_is_dead_lettered_and_the_batch_lands(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    # One good entry beside it: each try sends the 256 MiB again, so the
    # batch is kept to the two halves the split needs.
    good = add(rclient, event(1))
    blob = "x" * (JSONB_MAX_STRING_BYTES + 1)
    metadata = json.dumps({"blob": blob})
    refused = add(rclient, event(2, metadata=metadata))
    omitted = len(json.dumps(metadata))
    del blob, metadata

    figures = run(make_worker())
    assert figures["synced"] == 1
    assert figures["dead_lettered"] == 1
    assert list(stored(db)) == [good]
    row = db.execute(
        "SELECT fields, reason FROM audit_dead_letters WHERE stream_id = %s",
        (refused,),
    ).fetchone()
    assert row is not None
    fields, reason = row
    assert reason == (
        "postgres refused the entry: string too long to represent as jsonb string"
    )
    # The dead letter keeps every field but the one too large for jsonb.
    assert fields == {
        **event(2, metadata=""),
        "metadata": {"omitted_json_bytes": omitted},
    }
    assert pending(rclient) == 0
