"""Verdicts, the retry schedule with jitter, and bounded Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from ferry.workers.webhooks.schedule import RetryPolicy, Verdict, parse_retry_after

POLICY = RetryPolicy(
    schedule_s=(5.0, 300.0, 1800.0),
    jitter=0.2,
    retry_after_max_s=3600.0,
    max_attempts=4,
)
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "attempt", "verdict"),
    [
        (200, 1, Verdict.DELIVERED),
        (204, 4, Verdict.DELIVERED),
        (299, 9, Verdict.DELIVERED),
        (410, 1, Verdict.GONE),
        (302, 1, Verdict.RETRY),
        (404, 1, Verdict.RETRY),
        (429, 3, Verdict.RETRY),
        (500, 3, Verdict.RETRY),
        (None, 1, Verdict.RETRY),
        (500, 4, Verdict.FAIL),
        (None, 5, Verdict.FAIL),
    ],
)
def test_verdicts(status: int | None, attempt: int, verdict: Verdict) -> None:
    assert POLICY.judge(status, attempt) is verdict


def test_delays_follow_the_schedule_within_the_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 5.0), (2, 300.0), (3, 1800.0), (4, 1800.0), (9, 1800.0)]:
        delays = [POLICY.delay_s(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= base * 0.8
        assert max(delays) <= base * 1.2
        # Spread, not one value: a burst of failures does not return as one.
        assert max(delays) - min(delays) > base * 0.2


def test_retry_after_is_honoured_when_longer_than_the_schedule() -> None:
    rng = random.Random(1)
    assert POLICY.delay_s(1, 120.0, rng) == 120.0
    assert 240.0 <= POLICY.delay_s(2, 10.0, rng) <= 360.0


def test_retry_after_is_bounded() -> None:
    assert POLICY.delay_s(1, 10_000_000.0, random.Random(1)) == 3600.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sun, 01 Mar 2026 12:01:30 GMT", 90.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("\u0661\u0662", None),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds
