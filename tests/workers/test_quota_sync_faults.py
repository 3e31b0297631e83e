"""quota-sync under hostile input and failing stores: a reviewer's fault tests.

Each test states one rule of the counter sync (or of the runtime, where the
worker meets it) and tries to break it against real Redis and Postgres.
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from ferry.config import CommonSettings, load
from ferry.runtime import EXIT_OK, Runner
from ferry.workers import quota_sync
from ferry.workers.counter_sync import CounterSync
from tests.conftest import REPO, ferry_cmd, run_ferry
from tests.servers import PrivateRedis
from tests.workers.helpers import RepeatingSync, quota_rows, quota_sync_as, run

Conn = psycopg.Connection[tuple[object, ...]]


def backend_pids(db: Conn) -> list[int]:
    found = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'ferry-quota-sync'"
        " AND datname = current_database()"
    ).fetchall()
    return [int(str(row[0])) for row in found]


# -- values and keys of odd shapes ------------------------------------------


def test_key_of_another_type_is_invalid_and_never_zeroes_a_good_row(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", 10)
    run(worker)
    rclient.delete("quota:a:uploads")
    rclient.hset("quota:a:uploads", "field", "11")
    figures = run(worker)
    assert quota_rows(db) == {("a", "uploads"): 10}
    assert figures["missing"] == 0
    assert figures["invalid"] == 1


def test_key_of_another_type_never_creates_a_row(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.hset("quota:h:uploads", "f", "1")
    rclient.rpush("quota:l:uploads", "1")
    rclient.set("quota:good:uploads", 3)
    figures = run(worker)
    assert quota_rows(db) == {("good", "uploads"): 3}
    assert figures["missing"] == 0


def _random_text(length: int) -> str:
    rng = random.Random(7)
    return "".join(
        rng.choice(string.ascii_letters + string.digits) for _ in range(length)
    )


def test_one_very_long_key_never_fails_its_batch(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set(f"quota:{_random_text(10_000)}:uploads", 1)
    rclient.mset({f"quota:good{i}:uploads": i for i in range(20)})
    figures = run(worker)
    assert len([k for k in quota_rows(db) if k[0].startswith("good")]) == 20
    assert figures["synced"] == 20
    assert figures["malformed"] == 1


def test_the_longest_accepted_key_is_written(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    # 2048 bytes in all is the documented limit; incompressible text, and
    # multi-byte characters so that bytes, not characters, are what counts.
    account = _random_text(2048 - len("quota::uploads") - 4) + "éé"
    key = f"quota:{account}:uploads"
    assert len(key.encode()) == 2048
    rclient.set(key, 7)
    rclient.set(key + "x", 8)
    figures = run(worker)
    assert quota_rows(db) == {(account, "uploads"): 7}
    assert figures["malformed"] == 1


def test_i64_edges_and_odd_but_valid_text_survive_the_round_trip(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:max:uploads", str(2**63 - 1))
    rclient.set("quota:min:uploads", str(-(2**63)))
    rclient.set("quota:é€😀:bytes", 1)
    rclient.set("quota:a b\tc:uploads", 2)
    rclient.set("quota:*?[:uploads", 3)
    rclient.set("quota:'\";--:uploads", 4)
    rclient.set("quota:\uffff:uploads", 5)
    run(worker)
    assert quota_rows(db) == {
        ("max", "uploads"): 2**63 - 1,
        ("min", "uploads"): -(2**63),
        ("é€😀", "bytes"): 1,
        ("a b\tc", "uploads"): 2,
        ("*?[", "uploads"): 3,
        ("'\";--", "uploads"): 4,
        ("\uffff", "uploads"): 5,
    }


def test_binary_garbage_keys_and_values_are_counted_not_fatal(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rng = random.Random(3)
    pipe = rclient.pipeline(transaction=False)
    for i in range(300):
        key = b"quota:" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        pipe.set(key, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30))))
        pipe.set(f"quota:g{i}:uploads", i)
    pipe.execute()
    figures = run(worker)
    good = {k: v for k, v in quota_rows(db).items() if k[0].startswith("g")}
    assert len(good) >= 300
    assert all(good[(f"g{i}", "uploads")] == i for i in range(300))
    assert int(str(figures["malformed"])) + int(str(figures["invalid"])) > 0


def test_many_bad_keys_log_a_few_examples_only(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    pipe = rclient.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"quota:bad{i}", 1)
        pipe.set(f"quota:inv{i}:m", "x")
    pipe.set("quota:good:m", 1)
    pipe.execute()
    done = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert done.returncode == EXIT_OK, done.stderr
    assert "malformed=20000" in done.stderr
    assert "invalid=20000" in done.stderr
    assert len(done.stderr) < 5000
    assert quota_rows(db) == {("good", "m"): 1}


# -- time: one clock per run, and rows declined by the age guard --------------


def test_value_declined_for_a_future_stamp_is_written_once_that_time_passes(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    db.execute("INSERT INTO quota_usage VALUES ('a', 'uploads', 99, %s)", (soon,))
    rclient.set("quota:a:uploads", 5)
    first = run(worker)
    assert first["synced"] == 0
    assert quota_rows(db) == {("a", "uploads"): 99}
    time.sleep(max((soon - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    second = run(worker)
    assert quota_rows(db) == {("a", "uploads"): 5}
    assert second["synced"] == 1


def test_rows_declined_by_the_age_guard_are_not_reported_unchanged(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    db.execute("INSERT INTO quota_usage VALUES ('a', 'uploads', 99, %s)", (future,))
    rclient.set("quota:a:uploads", 5)
    figures = run(worker)
    assert figures["synced"] == 0
    assert figures["unchanged"] == 0


# -- what the table holds ------------------------------------------------------


def test_an_odd_row_in_the_table_does_not_fail_every_run(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    db.execute("INSERT INTO quota_usage VALUES ('a:b', 'uploads', 1, now())")
    rclient.set("quota:good:uploads", 3)
    run(worker)
    assert quota_rows(db)[("good", "uploads")] == 3


# -- connections ---------------------------------------------------------------


def test_postgres_connection_dropped_between_runs_next_run_succeeds(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", 1)
    run(worker)
    pids = backend_pids(db)
    assert pids
    for pid in pids:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    rclient.set("quota:a:uploads", 2)
    figures = run(worker)
    assert figures["synced"] == 1
    assert quota_rows(db) == {("a", "uploads"): 2}


def test_redis_connection_dropped_between_runs_next_run_succeeds(
    worker: CounterSync, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:a:uploads", 1)
    run(worker)
    rclient.client_kill_filter(_type="normal", skipme=True)
    rclient.set("quota:a:uploads", 2)
    assert run(worker)["synced"] == 1
    assert quota_rows(db) == {("a", "uploads"): 2}


# -- the worker under the runtime -----------------------------------------------


def test_heartbeat_during_a_big_page_does_not_crash_the_runner(
    ferry_env: dict[str, str],
    rclient: redis.Redis,
    db: Conn,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = rclient.pipeline(transaction=False)
    for i in range(300_000):
        pipe.set(f"quota:acct{i}:uploads", i)
    pipe.execute()
    monkeypatch.setenv("FERRY_HEARTBEAT_S", "0.001")
    monkeypatch.setenv("FERRY_QUOTA_SYNC_SCAN_COUNT", "100000")
    common = load(CommonSettings)
    sync = quota_sync.build(common)
    try:
        code = Runner(sync, common).serve(once=True)
    finally:
        sync.close()
    assert code == EXIT_OK
    stats = json.loads((state_dir / "quota-sync.json").read_text())
    assert stats["runs_completed"] == 1


# -- crashes -------------------------------------------------------------------


def _ferry_query(db: Conn) -> str:
    found = db.execute(
        "SELECT query FROM pg_stat_activity WHERE application_name = 'ferry-quota-sync'"
        " AND datname = current_database() AND state = 'active'"
    ).fetchall()
    return " ".join(str(row[0]) for row in found)


@pytest.mark.parametrize("phase", ["COPY", "INSERT INTO"], ids=["copy", "upsert"])
def test_kill_9_mid_run_then_a_clean_run_leaves_every_row_right(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn, phase: str
) -> None:
    total = 150_000
    pipe = rclient.pipeline(transaction=False)
    for i in range(total):
        pipe.set(f"quota:acct{i}:uploads", i)
    pipe.execute()
    db.execute(
        "INSERT INTO quota_usage SELECT 'acct' || i, 'uploads', -1,"
        " now() - interval '1 day' FROM generate_series(0, 999) AS i"
    )
    env = {**ferry_env, "FERRY_QUOTA_SYNC_SCAN_COUNT": "200"}
    proc = subprocess.Popen(
        ferry_cmd("run", "quota-sync", "--once"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while phase not in _ferry_query(db):
        assert proc.poll() is None, "the run ended before the phase was reached"
        assert time.monotonic() < deadline, f"never saw {phase}"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    # Nothing of the killed run is visible: the old rows are untouched.
    assert quota_rows(db)[("acct5", "uploads")] == -1
    assert len(quota_rows(db)) == 1000
    # The orphaned backend may hold the lock until it notices; the next
    # clean run may be skipped for that long, but must then finish the job.
    for _ in range(50):
        done = run_ferry("run", "quota-sync", "--once", env=ferry_env)
        assert done.returncode == EXIT_OK, done.stderr
        if "run_done" in done.stderr:
            break
        time.sleep(0.2)
    found = quota_rows(db)
    assert len(found) == total
    assert all(found[(f"acct{i}", "uploads")] == i for i in range(total))


# -- repeats and interleaving ----------------------------------------------------


def test_a_bad_key_returned_twice_by_scan_is_counted_once(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    rclient.set("quota:too:many:parts", 1)
    rclient.set("quota:ok:uploads", 1)
    sync = quota_sync_as(RepeatingSync)
    try:
        figures = run(sync)
    finally:
        sync.close()
    # Both keys came back a second time; the bad one is still one bad key.
    assert figures["duplicates"] == 2
    assert figures["malformed"] == 1


def test_two_processes_interleaving_always_leave_the_table_equal_to_redis(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    common = load(CommonSettings)
    hosts = [quota_sync.build(common), quota_sync.build(common)]
    rng = random.Random(11)
    try:
        for step in range(40):
            for i in range(8):
                choice = rng.randrange(4)
                key = f"quota:a{i}:uploads"
                if choice == 0:
                    rclient.delete(key)
                else:
                    rclient.set(key, rng.randrange(3))
            run(hosts[rng.randrange(2)])
            expected = {
                (f"a{i}", "uploads"): int(rclient.get(f"quota:a{i}:uploads") or 0)
                for i in range(8)
            }
            found = quota_rows(db)
            assert {k: found.get(k, 0) for k in expected} == expected, step
    finally:
        for host in hosts:
            host.close()


def test_redis_restarted_between_runs_next_run_reconnects(
    ferry_env: dict[str, str], db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis().start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        sync = quota_sync.build(load(CommonSettings))
        client = redis.Redis.from_url(server.url)
        client.set("quota:a:uploads", 4)
        assert run(sync)["synced"] == 1
        client.close()
        server.kill()
        server.start()
        client = redis.Redis.from_url(server.url)
        client.set("quota:b:uploads", 6)
        figures = run(sync)
        sync.close()
        client.close()
        # The restarted server lost quota:a:uploads: a complete walk zeroes it.
        assert figures["zeroed"] == 1
        assert quota_rows(db) == {("a", "uploads"): 0, ("b", "uploads"): 6}
    finally:
        server.stop()
