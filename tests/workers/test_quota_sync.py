"""quota-sync against real Redis and Postgres: each rule of the counter sync."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from ferry.config import CommonSettings, load
from ferry.errors import StoreError
from ferry.runtime import EXIT_CONFIG, EXIT_OK, RunContext
from ferry.stores import redis as redis_store
from ferry.stores.migrate import migrate
from ferry.workers import quota_sync
from ferry.workers.counter_sync import CounterSync
from tests.conftest import REPO, ferry_cmd, run_ferry
from tests.servers import PrivatePostgres, PrivateRedis
from tests.workers.helpers import RepeatingSync, quota_rows, quota_sync_as, run

Conn = psycopg.Connection[tuple[object, ...]]


def stamps(db: Conn) -> set[datetime]:
    found = db.execute("SELECT DISTINCT synced_at FROM quota_usage").fetchall()
    return {row[0] for row in found}  # type: ignore[misc]


def test_counters_are_mirrored_with_one_synced_at_per_run(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({f"quota:acct{i}:uploads": i for i in range(2000)})
    rclient.set("quota:acct1:bytes", "-42")
    before = datetime.now(UTC)
    figures = run(worker)
    assert figures["synced"] == 2001
    assert quota_rows(db)[("acct1999", "uploads")] == 1999
    assert quota_rows(db)[("acct1", "bytes")] == -42
    (stamp,) = stamps(db)
    assert before <= stamp <= datetime.now(UTC)


def test_empty_keyspace_goes_through_normal_completion(
    ferry_env: dict[str, str], state_dir: Path
) -> None:
    done = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert done.returncode == EXIT_OK, done.stderr
    assert "run_done worker=quota-sync instance=quota-sync synced=0 keys=0" in (
        done.stderr
    )
    stats = json.loads((state_dir / "quota-sync.json").read_text())
    assert stats["runs_completed"] == 1
    assert stats["last_run_synced"] == 0
    assert stats["last_success_at"] is not None
    # The lock went with the transaction: a second run is not skipped.
    again = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert "run_done worker=quota-sync" in again.stderr


def test_a_key_returned_twice_by_scan_is_written_and_counted_once(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({"quota:a:uploads": 3, "quota:b:uploads": 4})
    sync = quota_sync_as(RepeatingSync)
    figures = run(sync)
    sync.close()
    assert figures["synced"] == 2
    assert figures["duplicates"] == 2
    assert quota_rows(db) == {("a", "uploads"): 3, ("b", "uploads"): 4}


@pytest.mark.parametrize(
    "key",
    [
        b"quota:a\x00b:uploads",
        b"quota:\xff\xfe:uploads",
        b"quota:a",
        b"quota::uploads",
        b"quota:a:b:c",
        b"quota:a:",
    ],
    ids=["nul", "not-utf8", "too-few", "empty-segment", "too-many", "empty-last"],
)
def test_malformed_key_is_skipped_and_counted_without_failing_its_batch(
    worker: CounterSync, rclient: redis.Redis, db: Conn, key: bytes
) -> None:
    rclient.set(key, 5)
    rclient.mset({f"quota:good{i}:uploads": 1 for i in range(10)})
    figures = run(worker)
    assert figures["malformed"] == 1
    assert figures["synced"] == 10
    assert len(quota_rows(db)) == 10


@pytest.mark.parametrize(
    "value",
    [
        b"12x",
        b" 1",
        b"1 ",
        b"+1",
        b"007",
        b"-0",
        b"1.5",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"abc",
        b"\xff",
        b"1e3",
    ],
)
def test_each_kind_of_invalid_value_is_skipped_and_counted(
    worker: CounterSync, rclient: redis.Redis, db: Conn, value: bytes
) -> None:
    rclient.set("quota:bad:uploads", value)
    rclient.set("quota:good:uploads", "9223372036854775807")
    figures = run(worker)
    assert figures["invalid"] == 1
    assert quota_rows(db) == {("good", "uploads"): 9223372036854775807}


def test_empty_value_counts_as_zero(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", "")
    run(worker)
    assert quota_rows(db) == {("a", "uploads"): 0}


def test_bad_value_never_zeroes_a_good_row(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", 10)
    run(worker)
    rclient.set("quota:a:uploads", "ten")
    figures = run(worker)
    assert figures["invalid"] == 1
    assert figures["zeroed"] == 0
    assert quota_rows(db) == {("a", "uploads"): 10}


def test_key_gone_from_a_complete_walk_is_written_as_zero(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({"quota:a:uploads": 10, "quota:b:uploads": 20})
    run(worker)
    rclient.delete("quota:a:uploads")
    figures = run(worker)
    assert figures["zeroed"] == 1
    assert quota_rows(db) == {("a", "uploads"): 0, ("b", "uploads"): 20}


class FailingWalk(CounterSync):
    """Redis fails after the first page: the walk does not complete."""

    def pages(self, client: redis_store.Client) -> Iterator[redis_store.Page]:
        for page in super().pages(client):
            yield page
            raise StoreError("redis walk failed: connection lost")


def test_incomplete_walk_touches_no_row(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    common = load(CommonSettings)
    good = quota_sync.build(common)
    rclient.mset({f"quota:a{i}:uploads": 1 for i in range(50)})
    run(good)
    good.close()
    rclient.delete(*[f"quota:a{i}:uploads" for i in range(25)])
    rclient.mset({f"quota:a{i}:uploads": 2 for i in range(25, 50)})
    failing = quota_sync_as(FailingWalk, scan_count=10)
    with pytest.raises(StoreError):
        failing.run_once(RunContext(threading.Event()))
    failing.on_failure()
    assert set(quota_rows(db).values()) == {1}
    assert len(quota_rows(db)) == 50


def test_unchanged_rows_are_not_rewritten(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({f"quota:a{i}:uploads": i for i in range(100)})
    run(worker)
    (first,) = stamps(db)
    again = run(worker)
    assert again["synced"] == 0
    assert again["unchanged"] == 100
    assert stamps(db) == {first}
    rclient.incr("quota:a7:uploads")
    third = run(worker)
    assert third["synced"] == 1
    assert len(stamps(db)) == 2


def test_a_run_never_overwrites_newer_data(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    db.execute("INSERT INTO quota_usage VALUES ('a', 'uploads', 99, %s)", (future,))
    rclient.set("quota:a:uploads", 5)
    figures = run(worker)
    assert figures["synced"] == 0
    assert quota_rows(db) == {("a", "uploads"): 99}


def test_memory_is_reloaded_when_another_process_wrote_in_between(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    common = load(CommonSettings)
    first, second = quota_sync.build(common), quota_sync.build(common)
    rclient.set("quota:a:uploads", 5)
    run(first)
    rclient.set("quota:a:uploads", 7)
    run(second)
    # Back to the value `first` remembers writing: it must not skip it.
    rclient.set("quota:a:uploads", 5)
    figures = run(first)
    first.close()
    second.close()
    assert figures["synced"] == 1
    assert quota_rows(db) == {("a", "uploads"): 5}


def test_failed_run_forgets_memory_so_nothing_is_skipped_wrongly(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", 5)
    run(worker)
    db.execute("UPDATE quota_usage SET used = 1")
    worker.on_failure()
    figures = run(worker)
    assert figures["synced"] == 1
    assert quota_rows(db) == {("a", "uploads"): 5}


def test_second_process_skips_while_the_lock_is_held(
    ferry_env: dict[str, str], rclient: redis.Redis, database_url: str
) -> None:
    rclient.set("quota:a:uploads", 5)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('ferry:quota-sync'))")
        done = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert done.returncode == EXIT_OK
    assert "run_skipped worker=quota-sync instance=quota-sync" in done.stderr
    assert "reason=lock_held_elsewhere" in done.stderr


def test_two_processes_started_together_sync_once_between_them(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    pipe = rclient.pipeline(transaction=False)
    for i in range(50_000):
        pipe.set(f"quota:acct{i}:uploads", i)
    pipe.execute()
    procs = [
        subprocess.Popen(
            ferry_cmd("run", "quota-sync", "--once"),
            env=ferry_env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    synced = sum(
        int(line.split(" synced=")[1].split()[0])
        for out in outputs
        for line in out.splitlines()
        if "run_done" in line
    )
    assert synced == 50_000
    assert len(quota_rows(db)) == 50_000


def test_bad_setting_stops_start_up_with_one_line_naming_it(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "FERRY_QUOTA_SYNC_INTERVAL_S": "soon"}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip().splitlines() == [
        "ferry: configuration error: FERRY_QUOTA_SYNC_INTERVAL_S Input should be a"
        " valid number, unable to parse string as a number, got 'soon'"
    ]
    env = {**ferry_env, "REDIS_URL": "localhost:6379"}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip() == (
        "ferry: configuration error: REDIS_URL must start with one of redis://,"
        " rediss://, unix://, got 'localhost:6379'"
    )


class RestartingRedis(CounterSync):
    """Restarts the private Redis after the first page, losing its keys."""

    server: PrivateRedis

    def pages(self, client: redis_store.Client) -> Iterator[redis_store.Page]:
        first = True
        for page in super().pages(client):
            yield page
            if first:
                first = False
                self.server.kill()
                self.server.start()


def test_redis_restarted_mid_walk_fails_the_run_and_touches_no_row(
    ferry_env: dict[str, str], db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis().start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        client = redis.Redis.from_url(server.url)
        client.mset({f"quota:a{i}:uploads": 1 for i in range(3000)})
        sync = quota_sync_as(RestartingRedis, scan_count=100)
        sync.server = server
        db.execute(
            "INSERT INTO quota_usage VALUES ('a1', 'uploads', 1, now() - interval '1h')"
        )
        with pytest.raises(StoreError, match="redis restarted during the walk"):
            sync.run_once(RunContext(threading.Event()))
        sync.on_failure()
        assert quota_rows(db) == {("a1", "uploads"): 1}
        client.close()
    finally:
        server.stop()


def test_postgres_killed_mid_run_fails_it_and_the_next_run_recovers(
    ferry_env: dict[str, str], rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivatePostgres().init().start()
    try:
        migrate(server.url)
        monkeypatch.setenv("DATABASE_URL", server.url)
        rclient.mset({f"quota:a{i}:uploads": i for i in range(3000)})
        common = load(CommonSettings)

        class KillingPostgres(CounterSync):
            def pages(self, client: redis_store.Client) -> Iterator[redis_store.Page]:
                for number, page in enumerate(super().pages(client)):
                    yield page
                    if number == 1:
                        server.kill()

        doomed = quota_sync_as(KillingPostgres, scan_count=100)
        with pytest.raises(StoreError, match="postgres failed"):
            doomed.run_once(RunContext(threading.Event()))
        doomed.on_failure()
        server.start()
        worker = quota_sync.build(common)
        assert run(worker)["synced"] == 3000
        worker.close()
        with psycopg.connect(server.url) as conn:
            assert quota_rows(conn)[("a2999", "uploads")] == 2999
    finally:
        server.remove()


def test_a_misspelt_variable_is_reported_with_the_name_it_resembles(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "FERRY_QUOTA_SYNC_INTERVL_S": "5", "FERRY_DEV_PRIVATE": "1"}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    assert done.returncode == EXIT_OK
    assert (
        "config_unknown_variable name=FERRY_QUOTA_SYNC_INTERVL_S"
        " did_you_mean=FERRY_QUOTA_SYNC_INTERVAL_S action=ignored"
    ) in done.stderr
    assert "FERRY_DEV_PRIVATE" not in done.stderr
