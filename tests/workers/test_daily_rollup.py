"""daily-rollup against real Redis and Postgres: closing days, late increments,
key removal and the counter-sync rules it shares with quota-sync."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
import redis

from ferry.config import CommonSettings, load
from ferry.errors import ConfigError
from ferry.runtime import EXIT_CONFIG, EXIT_OK
from ferry.workers import daily_rollup
from tests.conftest import run_ferry
from tests.workers.conftest import RollupFactory
from tests.workers.helpers import run

Conn = psycopg.Connection[tuple[object, ...]]
Row = tuple[int, bool, int]

TODAY = datetime.now(UTC).date()
# Far enough back to be closed with the default grace period, whatever the
# time of day the suite runs.
PAST = TODAY - timedelta(days=3)
# A grace period that keeps every day of these tests open.
OPEN_GRACE_S = str(30 * 86400)


def key(day: date, account: str, metric: str = "bytes") -> str:
    return f"usage:{day.isoformat()}:{account}:{metric}"


def rows(db: Conn) -> dict[tuple[date, str, str], Row]:
    """(day, account, metric) -> (value, closed, carried)."""
    found = db.execute(
        "SELECT day, account_id, metric, value, closed, carried FROM daily_usage"
    ).fetchall()
    return {
        (d, a, m): (v, c, k)  # type: ignore[misc]
        for d, a, m, v, c, k in found
    }


def stamps(db: Conn) -> list[datetime]:
    found = db.execute(
        "SELECT DISTINCT synced_at FROM daily_usage ORDER BY synced_at"
    ).fetchall()
    return [row[0] for row in found]  # type: ignore[misc]


def set_acl(client: redis.Redis, rule: str) -> None:
    """Change what the default user (every client here) may run."""
    client.execute_command("ACL", "SETUSER", "default", rule)  # type: ignore[no-untyped-call]


def test_impossible_dates_are_malformed_keys_counted_and_skipped(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rclient.mset(
        {
            "usage:2026-02-30:acct:bytes": 5,
            "usage:2025-02-29:acct:bytes": 6,
            "usage:2026-04-31:acct:bytes": 7,
            "usage:2026-4-30:acct:bytes": 8,
            "usage:2024-02-29:acct:bytes": 9,
            key(TODAY, "acct"): 3,
        }
    )
    with caplog.at_level(logging.WARNING, logger="ferry.workers.counter_sync"):
        figures = run(make_rollup())
    assert figures["synced"] == 2
    assert figures["malformed"] == 4
    assert rows(db) == {
        (date(2024, 2, 29), "acct", "bytes"): (9, True, 0),
        (TODAY, "acct", "bytes"): (3, False, 0),
    }
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "malformed=4" in warning
    assert "malformed key b'usage:2026-02-30:acct:bytes'" in warning


def test_two_runs_of_one_day_give_one_set_of_rows(
    make_rollup: RollupFactory, rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({key(TODAY, f"a{i}", m): i for i in range(300) for m in "xy"})
    worker = make_rollup()
    first = run(worker)
    after_first = rows(db)
    second = run(worker)
    # A new process (memory reloaded from the table) writes nothing either.
    third = run(make_rollup())
    assert first["synced"] == 600
    assert second["synced"] == 0 and second["unchanged"] == 600
    assert third["synced"] == 0 and third["unchanged"] == 600
    assert rows(db) == after_first
    assert len(after_first) == 600
    assert after_first[(TODAY, "a299", "y")] == (299, False, 0)


def test_every_row_of_a_run_carries_the_runs_one_synced_at(
    make_rollup: RollupFactory, rclient: redis.Redis, db: Conn
) -> None:
    rclient.mset({key(TODAY, f"a{i}"): i for i in range(3000)})
    worker = make_rollup()
    before = datetime.now(UTC)
    run(worker)
    (first,) = stamps(db)
    assert before <= first <= datetime.now(UTC)

    for i in range(10):
        rclient.incrby(key(TODAY, f"a{i}"), 1)
    assert run(worker)["synced"] == 10
    old, new = stamps(db)
    assert old == first < new
    moved = db.execute(
        "SELECT count(*) FROM daily_usage WHERE synced_at = %s", (new,)
    ).fetchone()
    assert moved == (10,)


@pytest.mark.parametrize("delete_keys", [False, True], ids=["keep_keys", "delete"])
def test_a_day_closing_while_increments_arrive_loses_none_of_them(
    make_rollup: RollupFactory,
    redis_url: str,
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    delete_keys: bool,
) -> None:
    accounts = [f"a{i}" for i in range(50)]
    issued: Counter[str] = Counter()
    stop = threading.Event()

    def write() -> None:
        client = redis.Redis.from_url(redis_url)
        n = 0
        while not stop.is_set():
            name = accounts[n % len(accounts)]
            client.incrby(key(PAST, name), 1)
            issued[name] += 1
            n += 1
        client.close()

    monkeypatch.setenv("FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS", str(delete_keys))
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_CLOSE_GRACE_S", OPEN_GRACE_S)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(issued) < len(accounts):
            stop.wait(0.01)
        opening = run(make_rollup())
        assert opening["closed_days"] == 0

        # The grace period ends: the next process closes the day while the
        # writer keeps incrementing its keys.
        monkeypatch.setenv("FERRY_DAILY_ROLLUP_CLOSE_GRACE_S", "0")
        worker = make_rollup()
        with caplog.at_level(logging.INFO, logger="ferry.workers.daily_rollup"):
            closing = run(worker)
            assert closing["closed_days"] == 1
            assert closing["closed_rows"] == len(accounts)
            late = 0
            for _ in range(3):
                stop.wait(0.05)
                late += int(str(run(worker)["late_increments"]))
    finally:
        stop.set()
        writer.join()
    late += int(str(run(worker)["late_increments"]))

    # Increments that land after everything else are late too.
    for name in accounts[:5]:
        rclient.incrby(key(PAST, name), 2)
        issued[name] += 2
    final = run(worker)
    late += int(str(final["late_increments"]))
    assert late >= 5
    assert int(str(final["late_increments"])) == 5
    if delete_keys:
        # The final run's removal took the keys the late increments made.
        assert final["keys_removed"] == 5
        assert rclient.keys(f"usage:{PAST.isoformat()}:*") == []

    found = rows(db)
    assert {k[1]: v[0] for k, v in found.items()} == dict(issued)
    assert all(closed for _, closed, _ in found.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[-1] == (
        "late_increments worker=daily-rollup count=5"
        ' action="added to the closed days\' totals" examples="'
        + "; ".join(
            f"{key(PAST, name)} {issued[name] - 2}->{issued[name]}"
            for name in accounts[:5]
        )
        + '"'
    )
    assert (
        f"days_closed worker=daily-rollup days={PAST.isoformat()} rows=50"
        in caplog.messages
    )


def test_removal_failing_after_the_closing_commit_is_finished_by_the_next_run(
    make_rollup: RollupFactory,
    ferry_env: dict[str, str],
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS", "true")
    rclient.mset({key(PAST, f"a{i}"): i + 1 for i in range(20)})
    rclient.set(key(TODAY, "a0"), 7)

    # Redis refuses DEL from here on: the day is committed closed, and the
    # removal that follows the commit fails as a crash there would leave it.
    set_acl(rclient, "-del")
    try:
        with caplog.at_level(logging.WARNING, logger="ferry.workers.daily_rollup"):
            closing = run(make_rollup())
    finally:
        set_acl(rclient, "+del")
    assert closing["closed_days"] == 1
    assert closing["keys_removed"] == 0
    assert closing["removal_failed"] == 1
    (warning,) = caplog.messages
    assert warning.startswith("key_removal_failed worker=daily-rollup removed=0")
    assert 'action="rows stay closed; the next run removes the rest"' in warning
    assert len(rclient.keys(f"usage:{PAST.isoformat()}:*")) == 20
    closed = {k: v for k, v in rows(db).items() if k[0] == PAST}
    assert closed == {(PAST, f"a{i}", "bytes"): (i + 1, True, 0) for i in range(20)}

    # A new process finishes the job; the rows keep their totals.
    env = {**ferry_env, "FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS": "true"}
    done = run_ferry("run", "daily-rollup", "--once", env=env)
    assert done.returncode == EXIT_OK, done.stderr
    assert "keys_removed=20 keys_left=0 removal_failed=0" in done.stderr
    assert rclient.keys(f"usage:{PAST.isoformat()}:*") == []
    assert rclient.get(key(TODAY, "a0")) == b"7"
    closed = {k: v for k, v in rows(db).items() if k[0] == PAST}
    assert closed == {(PAST, f"a{i}", "bytes"): (i + 1, True, i + 1) for i in range(20)}

    # With the keys gone, later runs leave the closed rows alone.
    again = run(make_rollup())
    assert again["synced"] == 0 and again["zeroed"] == 0
    assert {k: v for k, v in rows(db).items() if k[0] == PAST} == closed


@pytest.mark.parametrize("delete_keys", [False, True], ids=["keep_keys", "delete"])
def test_closed_rows_whose_keys_vanish_are_not_zeroed(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    delete_keys: bool,
) -> None:
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS", str(delete_keys))
    rclient.mset({key(PAST, f"a{i}"): 10 for i in range(5)})
    rclient.set(key(TODAY, "a0"), 4)
    worker = make_rollup()
    # With removal configured, the first removal fails (DEL refused) and the
    # keys are then deleted as by a process that died before recording it;
    # without removal, they expire.
    set_acl(rclient, "-del")
    try:
        run(worker)
    finally:
        set_acl(rclient, "+del")
    rclient.delete(*[key(PAST, f"a{i}") for i in range(5)], key(TODAY, "a0"))

    figures = run(worker)
    found = rows(db)
    assert figures["zeroed"] == 6
    assert found[(TODAY, "a0", "bytes")] == (0, False, 0)
    for i in range(5):
        assert found[(PAST, f"a{i}", "bytes")] == (10, True, 10)
    assert run(make_rollup())["synced"] == 0
    assert rows(db) == found


def test_a_late_increment_to_a_removed_key_adds_to_the_closed_total(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS", "true")
    rclient.set(key(PAST, "small"), 10)
    worker = make_rollup()
    assert run(worker)["keys_removed"] == 1
    assert rows(db)[(PAST, "small", "bytes")] == (10, True, 10)

    # More than the whole total arrives late, on a key that starts again
    # from nothing; a new key of the closed day arrives too.
    rclient.incrby(key(PAST, "small"), 15)
    rclient.incrby(key(PAST, "newcomer"), 4)
    with caplog.at_level(logging.WARNING, logger="ferry.workers.daily_rollup"):
        figures = run(worker)
    assert figures["late_increments"] == 2
    assert figures["keys_removed"] == 2
    assert rows(db)[(PAST, "small", "bytes")] == (25, True, 25)
    assert rows(db)[(PAST, "newcomer", "bytes")] == (4, True, 4)
    (warning,) = caplog.messages
    assert warning == (
        "late_increments worker=daily-rollup count=2"
        ' action="added to the closed days\' totals"'
        f' examples="{key(PAST, "small")} 10->25; {key(PAST, "newcomer")} new=4"'
    )


def test_a_late_increment_to_a_kept_key_follows_its_value(
    make_rollup: RollupFactory, rclient: redis.Redis, db: Conn
) -> None:
    rclient.set(key(PAST, "acct"), 10)
    worker = make_rollup()
    run(worker)
    rclient.incrby(key(PAST, "acct"), 3)
    figures = run(worker)
    assert figures["synced"] == 1 and figures["late_increments"] == 1
    assert rows(db)[(PAST, "acct", "bytes")] == (13, True, 0)
    # Unchanged since: nothing to write, in this process or a new one.
    assert run(worker)["synced"] == 0
    assert run(make_rollup())["synced"] == 0


def test_a_pattern_without_a_date_segment_stops_start_up(
    ferry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "FERRY_DAILY_ROLLUP_KEY_PATTERN", "usage:{day}:{account}:{metric}"
    )
    with pytest.raises(ConfigError) as caught:
        daily_rollup.build(load(CommonSettings))
    assert str(caught.value) == (
        "FERRY_DAILY_ROLLUP_KEY_PATTERN must declare the day segment as"
        " {day:date}, got 'usage:{day}:{account}:{metric}'"
    )
    env = {**ferry_env, "FERRY_DAILY_ROLLUP_KEY_PATTERN": "usage:{account}:{metric}"}
    done = run_ferry("run", "daily-rollup", "--once", env=env)
    assert done.returncode == EXIT_CONFIG
    assert (
        "FERRY_DAILY_ROLLUP_KEY_PATTERN must name the segments {day:date},"
        " {account} and {metric}, in order" in done.stderr
    )
