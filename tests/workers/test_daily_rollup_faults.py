"""daily-rollup under hostile conditions, against real Redis and Postgres: a
database session in another time zone, totals at the edge of 64 bits, and a
grace period changed after a day closed."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
import redis

from tests.workers.conftest import RollupFactory
from tests.workers.helpers import run

Conn = psycopg.Connection[tuple[object, ...]]

I64_MAX = 2**63 - 1
# Margin on either side of a computed closing boundary, far more than a test
# takes to run.
BOUNDARY_MARGIN_S = 1800


def key(day: date, account: str) -> str:
    return f"usage:{day.isoformat()}:{account}:bytes"


def closed(db: Conn) -> dict[tuple[date, str], tuple[int, bool]]:
    found = db.execute("SELECT day, account_id, value, closed FROM daily_usage")
    return {(d, a): (v, c) for d, a, v, c in found.fetchall()}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "boundary_s"),
    [("Pacific/Kiritimati", BOUNDARY_MARGIN_S), ("Pacific/Pago_Pago", -1)],
    ids=["utc+14", "utc-11"],
)
def test_days_close_on_utc_midnight_whatever_the_sessions_time_zone(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    zone: str,
    boundary_s: int,
) -> None:
    now = datetime.now(UTC)
    today = now.date()
    yesterday = today - timedelta(days=1)
    since_midnight_s = int(
        (now - datetime.combine(today, datetime.min.time(), UTC)).total_seconds()
    )
    if boundary_s > 0:
        # Grace ends half an hour from now: yesterday must stay open.
        grace_s = since_midnight_s + boundary_s
        expect_closed = False
    else:
        # Grace ended (up to) half an hour ago: yesterday must close.
        grace_s = max(since_midnight_s - BOUNDARY_MARGIN_S, 0)
        expect_closed = True
    # libpq sends PGTZ as the session's TimeZone, as a server configured with
    # a local zone would set it.
    monkeypatch.setenv("PGTZ", zone)
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_CLOSE_GRACE_S", str(grace_s))
    rclient.set(key(yesterday, "acct"), 5)

    figures = run(make_rollup())
    assert figures["closed_days"] == int(expect_closed)
    assert closed(db) == {(yesterday, "acct"): (5, expect_closed)}


def test_a_late_total_beyond_64_bits_is_reported_and_the_run_goes_on(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    past = datetime.now(UTC).date() - timedelta(days=3)
    rclient.set(key(past, "huge"), I64_MAX - 10)
    rclient.set(key(past, "small"), 1)
    worker = make_rollup()
    assert run(worker)["closed_days"] == 1

    # The huge key starts again from nothing: its row's total would pass
    # 2^63 - 1. The small key moves on as usual.
    rclient.set(key(past, "huge"), 100)
    rclient.set(key(past, "small"), 2)
    with caplog.at_level(logging.WARNING, logger="ferry.workers.daily_rollup"):
        figures = run(worker)
    assert figures["late_increments"] == 1
    assert figures["late_overflowed"] == 1
    assert closed(db) == {
        (past, "huge"): (I64_MAX - 10, True),
        (past, "small"): (2, True),
    }
    overflow = [m for m in caplog.messages if m.startswith("late_overflowed")]
    assert overflow == [
        "late_overflowed worker=daily-rollup count=1"
        ' action="row kept; the key\'s value is not counted"'
        f' examples="{key(past, "huge")} {I64_MAX - 10}+100"'
    ]

    # A fresh process, reloading its memory, does not fail on it either.
    again = run(make_rollup())
    assert again["late_overflowed"] == 1
    assert closed(db)[(past, "huge")] == (I64_MAX - 10, True)


def test_a_new_key_of_a_closed_day_is_closed_even_after_the_grace_grew(
    make_rollup: RollupFactory,
    rclient: redis.Redis,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    past = datetime.now(UTC).date() - timedelta(days=3)
    rclient.set(key(past, "a"), 1)
    assert run(make_rollup())["closed_days"] == 1

    # The operator lengthens the grace period past that day; a key of the
    # closed day appears. It is late once, not again in every run.
    monkeypatch.setenv("FERRY_DAILY_ROLLUP_CLOSE_GRACE_S", str(30 * 86_400))
    rclient.set(key(past, "b"), 4)
    worker = make_rollup()
    assert run(worker)["late_increments"] == 1
    assert closed(db) == {(past, "a"): (1, True), (past, "b"): (4, True)}
    assert run(worker)["late_increments"] == 0
    assert run(make_rollup())["late_increments"] == 0
