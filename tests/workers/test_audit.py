"""audit against real Redis and Postgres: dead letters, redelivery without
duplicates, claims from a dead consumer, deleted entries, trimming and
shutdown with a batch in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any, cast

import psycopg
import pytest
import redis

from ferry.config import CommonSettings, load
from ferry.errors import ConfigError
from ferry.runtime import EXIT_OK
from ferry.workers import audit
from ferry.workers.audit import AuditWorker
from tests.conftest import REPO, ferry_cmd, run_ferry
from tests.workers.helpers import run

Conn = psycopg.Connection[tuple[object, ...]]
Fields = dict[str, str | bytes]

STREAM = "audit:events"
GROUP = "ferry-audit"
# Long enough for any wait below on a loaded machine; the waits end as soon
# as their condition holds.
WAIT_S = 30.0
# Settings that keep the suite fast: short reads, sessions, claim times.
FAST = {
    "FERRY_AUDIT_BLOCK_MS": "100",
    "FERRY_AUDIT_SESSION_S": "0.5",
    "FERRY_AUDIT_CLAIM_IDLE_MS": "300",
    "FERRY_AUDIT_CLAIM_INTERVAL_S": "0.1",
}


def event(n: int, **changes: str | bytes | None) -> Fields:
    """A good event's fields, with some changed (None removes a field)."""
    fields: Fields = {
        "actor_id": f"user{n}",
        "action": "upload.create",
        "target_type": "upload",
        "target_id": f"up{n}",
        "ip": "203.0.113.7",
        "occurred_at": "2026-03-05T10:00:00+01:00",
        "metadata": json.dumps({"n": n}),
    }
    for name, value in changes.items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    return fields


def add(client: redis.Redis, fields: Fields, entry_id: str = "*") -> str:
    added = client.xadd(STREAM, fields, id=entry_id)  # type: ignore[arg-type]
    return added.decode() if isinstance(added, bytes) else str(added)


def create_group(client: redis.Redis) -> None:
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


def pending(client: redis.Redis) -> int:
    """Entries pending in the group; 0 before a worker has created it."""
    try:
        return int(client.xpending(STREAM, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def stored_ids(db: Conn) -> list[str]:
    rows = db.execute("SELECT stream_id FROM audit_log ORDER BY stream_id").fetchall()
    return [str(row[0]) for row in rows]


def dead_letters(db: Conn) -> dict[str, tuple[Any, str]]:
    rows = db.execute(
        "SELECT stream_id, fields, reason FROM audit_dead_letters"
    ).fetchall()
    return {str(s): (f, str(r)) for s, f, r in rows}


def stream_ids(client: redis.Redis) -> list[str]:
    entries = cast(list[tuple[bytes, object]], client.xrange(STREAM))
    return [entry_id.decode() for entry_id, _ in entries]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fast_env(
    ferry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    return {**ferry_env, **FAST}


Factory = Callable[..., AuditWorker]


@pytest.fixture
def make_worker(
    fast_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Factory]:
    """Builds workers from the environment, as `ferry run audit` would."""
    built: list[AuditWorker] = []

    def make(process_num: int = 0, **settings: str) -> AuditWorker:
        monkeypatch.setenv("FERRY_PROCESS_NUM", str(process_num))
        for name, value in settings.items():
            monkeypatch.setenv(f"FERRY_AUDIT_{name.upper()}", value)
        worker = audit.build(load(CommonSettings))
        built.append(worker)
        return worker

    yield make
    for worker in built:
        worker.close()


@pytest.fixture
def audit_log_locked(database_url: str) -> Iterator[Callable[[], None]]:
    """Holds a lock that makes inserts into audit_log wait; call to release."""
    conn = psycopg.connect(database_url)
    conn.execute("LOCK TABLE audit_log IN SHARE MODE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            conn.rollback()
            released = True

    yield release
    release()
    conn.close()


def start(env: dict[str, str], process_num: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ferry_cmd("run", "audit"),
        env={**env, "FERRY_PROCESS_NUM": str(process_num)},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_each_malformed_entry_is_dead_lettered_with_its_reason(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    good = [
        add(rclient, event(0)),
        add(rclient, event(1, ip="", metadata=None)),
        add(rclient, event(2, occurred_at="1700000000123", ip="2001:db8::1")),
    ]
    bad = {
        add(rclient, event(3, actor_id=None)): "missing field actor_id",
        add(rclient, event(4, occurred_at="yesterday")): (
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds:"
            " 'yesterday'"
        ),
        add(rclient, event(5, ip="300.1.2.3")): "ip is not an IP address: '300.1.2.3'",
        add(rclient, event(6, metadata="[1, 2]")): "metadata is not a JSON object",
        add(rclient, event(7, actor_id=b"\xff\xfe")): (
            "field actor_id is not valid UTF-8"
        ),
        add(rclient, event(8, target_id=b"up\x008")): (
            "field target_id contains a NUL byte"
        ),
    }
    good.append(add(rclient, event(9)))

    figures = run(make_worker())
    assert figures["synced"] == 4
    assert figures["read"] == 10
    assert figures["dead_lettered"] == 6
    assert figures["acked"] == 10
    assert pending(rclient) == 0

    assert stored_ids(db) == sorted(good)
    rows = db.execute(
        "SELECT actor_id, action, target_type, target_id, ip, occurred_at, metadata"
        " FROM audit_log ORDER BY stream_id"
    ).fetchall()
    assert rows[0] == (
        "user0",
        "upload.create",
        "upload",
        "up0",
        ip_address("203.0.113.7"),
        datetime(2026, 3, 5, 9, 0, tzinfo=UTC),
        {"n": 0},
    )
    assert rows[1][4:] == (None, datetime(2026, 3, 5, 9, 0, tzinfo=UTC), None)
    assert rows[2][4:6] == (
        ip_address("2001:db8::1"),
        datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    )

    letters = dead_letters(db)
    assert {sid: reason for sid, (_, reason) in letters.items()} == bad
    by_reason = {reason: fields for fields, reason in letters.values()}
    assert by_reason["field actor_id is not valid UTF-8"]["actor_id"] == {
        "base64": "//4="
    }
    assert by_reason["field target_id contains a NUL byte"]["target_id"] == {
        "base64": "dXAAOA=="
    }
    assert by_reason["missing field actor_id"] == {
        k: v for k, v in event(3, actor_id=None).items()
    }


def test_a_row_postgres_refuses_is_dead_lettered_and_the_batch_lands(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    # A JSON number the core accepts but numeric cannot hold.
    ids = [add(rclient, event(n)) for n in range(7)]
    refused = add(rclient, event(7, metadata='{"size": 1e200000}'))
    ids += [add(rclient, event(n)) for n in range(8, 16)]

    figures = run(make_worker())
    assert figures["synced"] == 15
    assert figures["dead_lettered"] == 1
    assert stored_ids(db) == sorted(ids)
    ((fields, reason),) = dead_letters(db).values()
    assert reason == "postgres refused the entry: value overflows numeric format"
    assert fields["metadata"] == '{"size": 1e200000}'
    assert pending(rclient) == 0
    assert refused in dead_letters(db)


def test_a_kill_after_the_commit_and_before_the_ack_stores_nothing_twice(
    fast_env: dict[str, str],
    rclient: redis.Redis,
    db: Conn,
    audit_log_locked: Callable[[], None],
) -> None:
    ids = [add(rclient, event(n)) for n in range(500)]
    worker = start(fast_env)
    try:
        # The batch is read and its insert waits on the lock.
        wait_for(lambda: pending(rclient) == 500, "the batch to be delivered")
        # Writes pause (XACK among them), then the insert goes ahead and
        # commits: the process is between the commit and the ack.
        rclient.execute_command("CLIENT", "PAUSE", "30000", "WRITE")  # type: ignore[no-untyped-call]
        try:
            audit_log_locked()
            wait_for(lambda: len(stored_ids(db)) == 500, "the commit")
            assert pending(rclient) == 500
            worker.kill()
            worker.wait(WAIT_S)
        finally:
            rclient.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    finally:
        worker.kill()
        worker.wait(WAIT_S)

    # The restarted process reads its own pending entries first.
    done = run_ferry("run", "audit", "--once", env=fast_env)
    assert done.returncode == EXIT_OK, done.stderr
    assert "synced=0 read=500 duplicates=500 dead_lettered=0" in done.stderr
    assert stored_ids(db) == sorted(ids)
    assert pending(rclient) == 0


def test_a_killed_consumers_pending_entries_are_taken_over(
    fast_env: dict[str, str],
    rclient: redis.Redis,
    db: Conn,
    audit_log_locked: Callable[[], None],
) -> None:
    ids = [add(rclient, event(n)) for n in range(300)]
    first = start(fast_env, process_num=0)
    try:
        wait_for(lambda: pending(rclient) == 300, "the batch to be delivered")
    finally:
        first.kill()
        first.wait(WAIT_S)
    audit_log_locked()
    owners = rclient.xpending(STREAM, GROUP)["consumers"]
    assert owners == [{"name": b"ferry-audit-0", "pending": 300}]

    done = run_ferry(
        "run", "audit", "--once", env={**fast_env, "FERRY_PROCESS_NUM": "1"}
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert (
        "pending_claimed worker=audit consumer=ferry-audit-1 entries=300 deleted=0"
        in done.stderr
    )
    assert "synced=300 read=300" in done.stderr
    assert "claimed=300" in done.stderr
    assert stored_ids(db) == sorted(ids)
    assert pending(rclient) == 0
    # The dead consumer is still known to the group, with nothing pending.
    consumers = {
        c["name"]: c["pending"] for c in rclient.xinfo_consumers(STREAM, GROUP)
    }
    assert consumers == {b"ferry-audit-0": 0, b"ferry-audit-1": 0}


@pytest.mark.parametrize(
    "owner", ["ferry-audit-0", "ferry-audit-9"], ids=["own", "other"]
)
def test_an_entry_deleted_while_pending_is_cleared_not_stored(
    make_worker: Factory, rclient: redis.Redis, db: Conn, owner: str
) -> None:
    create_group(rclient)
    ids = [add(rclient, event(n)) for n in range(3)]
    # `owner` read the entries and died; then one was deleted from the stream.
    rclient.xreadgroup(GROUP, owner, {STREAM: ">"})
    rclient.xdel(STREAM, ids[1])
    time.sleep(0.35)

    figures = run(make_worker())
    assert figures["synced"] == 2
    assert figures["deleted_pending"] == 1
    assert figures["claimed"] == (3 if owner != "ferry-audit-0" else 0)
    assert stored_ids(db) == [ids[0], ids[2]]
    assert dead_letters(db) == {ids[1]: ({}, "entry was deleted from the stream")}
    assert pending(rclient) == 0


def test_an_entry_delivered_too_often_is_dead_lettered_unread(
    make_worker: Factory, rclient: redis.Redis, db: Conn
) -> None:
    create_group(rclient)
    entry = add(rclient, event(1, metadata=b"\xff"))
    rclient.xreadgroup(GROUP, "ferry-audit-9", {STREAM: ">"})
    time.sleep(0.35)

    figures = run(make_worker(max_deliveries="1"))
    assert figures["over_delivered"] == 1
    ((fields, reason),) = dead_letters(db).values()
    assert reason == (
        "delivered 2 times without being stored; the limit is 1"
        " (FERRY_AUDIT_MAX_DELIVERIES)"
    )
    assert fields["metadata"] == {"base64": "/w=="}
    assert fields["actor_id"] == "user1"
    assert entry in dead_letters(db)
    assert pending(rclient) == 0


@pytest.mark.parametrize("limit", ["age", "length"])
def test_trimming_never_passes_the_oldest_pending_entry(
    make_worker: Factory, rclient: redis.Redis, db: Conn, limit: str
) -> None:
    create_group(rclient)
    ids = [add(rclient, event(n), entry_id=f"1000-{n}") for n in range(1, 11)]
    # A dead consumer holds 1000-4 and 1000-5; the others were acknowledged.
    rclient.xreadgroup(GROUP, "ferry-audit-9", {STREAM: ">"})
    rclient.xack(STREAM, GROUP, *ids[:3], *ids[5:])
    settings = (
        {"trim_max_age_s": "1", "trim_max_len": "0"}
        if limit == "age"
        else {"trim_max_age_s": "0", "trim_max_len": "2"}
    )
    worker = make_worker(claim_idle_ms="600000", **settings)

    assert run(worker)["trimmed"] == 3
    remaining = stream_ids(rclient)
    assert remaining == ids[3:]
    assert pending(rclient) == 2

    # Once they are acknowledged, the trim goes on to the limit.
    rclient.xack(STREAM, GROUP, *ids[3:5])
    worker._next_housekeeping = 0.0
    run(worker)
    remaining = stream_ids(rclient)
    assert remaining == ([] if limit == "age" else ids[8:])


def test_trimming_spares_entries_another_group_has_not_read(
    make_worker: Factory, rclient: redis.Redis
) -> None:
    create_group(rclient)
    rclient.xgroup_create(STREAM, "billing", id="1000-2")
    ids = [add(rclient, event(n), entry_id=f"1000-{n}") for n in range(1, 6)]
    figures = run(make_worker(trim_max_age_s="1"))
    assert figures["synced"] == 5
    remaining = stream_ids(rclient)
    assert remaining == ids[2:]


def test_a_consumer_with_pending_entries_is_never_deleted(
    make_worker: Factory, rclient: redis.Redis
) -> None:
    create_group(rclient)
    add(rclient, event(1))
    rclient.xreadgroup(GROUP, "ferry-audit-7", {STREAM: ">"})
    second = add(rclient, event(2))
    rclient.xreadgroup(GROUP, "ferry-audit-8", {STREAM: ">"})
    rclient.xack(STREAM, GROUP, second)
    time.sleep(0.3)

    figures = run(make_worker(consumer_idle_delete_s="0.2", claim_idle_ms="600000"))
    assert figures["consumers_deleted"] == 1
    consumers = {
        c["name"]: c["pending"] for c in rclient.xinfo_consumers(STREAM, GROUP)
    }
    assert consumers == {b"ferry-audit-0": 0, b"ferry-audit-7": 1}


def test_sigterm_with_a_batch_in_flight_commits_and_acks_it(
    fast_env: dict[str, str],
    rclient: redis.Redis,
    db: Conn,
    audit_log_locked: Callable[[], None],
) -> None:
    ids = [add(rclient, event(n)) for n in range(2000)]
    env = {**fast_env, "FERRY_AUDIT_BATCH_SIZE": "500", "FERRY_AUDIT_SESSION_S": "60"}
    worker = start(env)
    try:
        # The first batch waits on the lock; the next may already be read.
        wait_for(lambda: pending(rclient) >= 500, "the first batch")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert worker.poll() is None
        audit_log_locked()
        _, stderr = worker.communicate(timeout=WAIT_S)
    finally:
        worker.kill()
    assert worker.returncode == EXIT_OK, stderr

    # Whatever was delivered was stored and acknowledged; nothing more was read.
    (group,) = rclient.xinfo_groups(STREAM)
    delivered = int(group["entries-read"])
    assert delivered in (500, 1000)
    assert group["last-delivered-id"] == ids[delivered - 1].encode()
    assert stored_ids(db) == sorted(ids[:delivered])
    assert pending(rclient) == 0
    assert f"run_done worker=audit instance=audit synced={delivered}" in stderr
    assert "worker_stop worker=audit reason=signal" in stderr


def test_claim_idle_must_exceed_the_blocking_read(
    ferry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRY_AUDIT_BLOCK_MS", "5000")
    monkeypatch.setenv("FERRY_AUDIT_CLAIM_IDLE_MS", "4000")
    with pytest.raises(ConfigError) as caught:
        audit.build(load(CommonSettings))
    assert str(caught.value) == (
        "FERRY_AUDIT_CLAIM_IDLE_MS must exceed FERRY_AUDIT_BLOCK_MS (5000 ms), or a"
        " consumer waiting on an idle stream would have its entries claimed,"
        " got '4000'"
    )
