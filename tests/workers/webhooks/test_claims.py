"""Claims, leases, claim-token fencing and outcome writes on real Postgres."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from ferry.errors import StoreError
from ferry.workers.webhooks.claims import (
    Claimed,
    Limits,
    Outcome,
    Recorded,
    Store,
    connect,
)
from ferry.workers.webhooks.delivery import AttemptResult
from ferry.workers.webhooks.schedule import Verdict
from tests.workers.webhooks import helpers as h

T = TypeVar("T")
LIMITS = Limits(max_window_s=3600.0, endpoint_disable_after_s=3600.0)


def with_store(
    url: str, body: Callable[[Store], Awaitable[T]], limits: Limits = LIMITS
) -> T:
    async def main() -> T:
        conn = await connect(url)
        try:
            return await body(Store(conn, limits))
        finally:
            await conn.close()

    return asyncio.run(main())


def result(status: int | None = 200, error: str | None = None) -> AttemptResult:
    return AttemptResult(
        started_at=datetime.now(UTC),
        duration_ms=12,
        status_code=status,
        error=error,
        excerpt="answer",
    )


def outcome(
    row: Claimed,
    verdict: Verdict,
    attempt: AttemptResult | None = None,
    delay_s: float = 60.0,
) -> Outcome:
    if attempt is None and verdict is not Verdict.DISABLED:
        attempt = result(200 if verdict is Verdict.DELIVERED else 500)
    text = None if verdict is Verdict.DELIVERED else "http 500"
    return Outcome(row, verdict, attempt, delay_s=delay_s, last_error=text)


def test_claim_takes_only_due_pending_rows(database_url: str, db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    due = h.add_webhooks(db, endpoint_id, 2, payload={"k": "v"})
    later = h.add_webhooks(db, endpoint_id)
    db.execute(
        "UPDATE upload_webhooks SET next_attempt_at = now() + interval '1 hour'"
        " WHERE id = %s",
        (later[0],),
    )
    for status in ("verifying", "delivered", "failed"):
        h.add_webhooks(db, endpoint_id, status=status)

    before = datetime.now(UTC)
    claim = with_store(database_url, lambda s: s.claim(10, 60.0))

    assert sorted(r.webhook_id for r in claim.rows) == due
    first = claim.rows[0]
    assert (first.attempt, first.round_attempt) == (1, 1)
    assert first.body == b'{"k": "v"}'
    assert (first.url, first.secret, first.old_secrets) == (
        "https://example.com/hook",
        h.SECRET,
        (),
    )
    assert not first.endpoint_disabled
    assert h.SECRET not in repr(first)
    row = h.webhook(db, first.webhook_id)
    assert row["status"] == "delivering"
    assert row["claim_token"] == claim.token
    assert row["attempts"] == 0
    lease = row["locked_until"] - before
    assert timedelta(seconds=59) < lease < timedelta(seconds=62)


def test_claim_honours_the_batch_and_takes_the_oldest_first(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    ids = h.add_webhooks(db, endpoint_id, 5)
    for age, webhook_id in enumerate(ids):
        db.execute(
            "UPDATE upload_webhooks SET next_attempt_at = now() - %s * interval '1 s'"
            " WHERE id = %s",
            (age, webhook_id),
        )
    claim = with_store(database_url, lambda s: s.claim(3, 60.0))
    assert sorted(r.webhook_id for r in claim.rows) == ids[2:]


def test_concurrent_claims_never_share_a_row(database_url: str, db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    ids = h.add_webhooks(db, endpoint_id, 400)

    async def claim_many() -> list[list[int]]:
        conns = [await connect(database_url) for _ in range(4)]
        try:
            stores = [Store(c, LIMITS) for c in conns]
            claims = await asyncio.gather(*(s.claim(150, 60.0) for s in stores))
            rest = await stores[0].claim(400, 60.0)
            return [[r.webhook_id for r in c.rows] for c in [*claims, rest]]
        finally:
            for conn in conns:
                await conn.close()

    taken = with_store(database_url, lambda s: claim_many())
    flat = [i for part in taken for i in part]
    assert len(flat) == len(set(flat))
    assert sorted(flat) == ids


def test_expired_lease_makes_the_row_due_again_and_counts_the_lost_attempt(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)

    async def body(store: Store) -> tuple[list[int], list[int], list[int]]:
        first = await store.claim(10, 0.2)
        early = await store.claim(10, 60.0)
        await asyncio.sleep(0.3)
        second = await store.claim(10, 60.0)
        assert second.token != first.token
        return (
            [r.attempt for r in first.rows],
            [r.attempt for r in early.rows],
            [r.attempt for r in second.rows],
        )

    assert with_store(database_url, body) == ([1], [], [2])
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"]) == ("delivering", 1)


@pytest.mark.parametrize("late_writes_first", [True, False])
def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_owner(
    database_url: str, db: h.Conn, late_writes_first: bool
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)

    async def body(store: Store) -> tuple[Recorded, Recorded]:
        old = await store.claim(10, 0.2)
        await asyncio.sleep(0.3)
        new = await store.claim(10, 60.0)
        stale = outcome(old.rows[0], Verdict.RETRY)
        fresh = outcome(new.rows[0], Verdict.DELIVERED)
        if late_writes_first:
            late = await store.record([stale])
            owner = await store.record([fresh])
        else:
            owner = await store.record([fresh])
            late = await store.record([stale])
        return late, owner

    late, owner = with_store(database_url, body)
    assert (late.superseded, late.retried) == (1, 0)
    assert (owner.superseded, owner.delivered) == (0, 1)
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == (
        "delivered",
        2,
        200,
    )
    assert [(a["attempt"], a["status_code"]) for a in h.attempts(db, webhook_id)] == [
        (1, 500),
        (2, 200),
    ]


def test_retry_writes_the_attempt_and_the_next_schedule(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)

    async def body(store: Store) -> Recorded:
        claim = await store.claim(10, 60.0)
        return await store.record([outcome(claim.rows[0], Verdict.RETRY, delay_s=90)])

    before = datetime.now(UTC)
    assert with_store(database_url, body).retried == 1
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["claim_token"]) == ("pending", 1, None)
    assert (row["last_status_code"], row["last_error"]) == (500, "http 500")
    delay = row["next_attempt_at"] - before
    assert timedelta(seconds=89) < delay < timedelta(seconds=92)
    [attempt] = h.attempts(db, webhook_id)
    assert (attempt["attempt"], attempt["status_code"]) == (1, 500)
    assert (attempt["duration_ms"], attempt["response_excerpt"]) == (12, "answer")


def test_attempt_and_schedule_commit_together_or_not_at_all(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    # Postgres refuses NUL in text, so the attempt row cannot be written.
    broken = AttemptResult(
        started_at=datetime.now(UTC), duration_ms=1, status_code=500, excerpt="a\x00"
    )

    async def body(store: Store) -> None:
        claim = await store.claim(10, 60.0)
        await store.record([outcome(claim.rows[0], Verdict.RETRY, broken)])

    with pytest.raises(StoreError, match=r"^webhooks outcome write failed: "):
        with_store(database_url, body)
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"]) == ("delivering", 0)
    assert h.attempts(db, webhook_id) == []


def test_retry_past_the_window_fails_with_the_reason(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    limits = Limits(max_window_s=30.0, endpoint_disable_after_s=3600.0)

    async def body(store: Store) -> Recorded:
        claim = await store.claim(10, 60.0)
        return await store.record([outcome(claim.rows[0], Verdict.RETRY, delay_s=60)])

    assert with_store(database_url, body, limits).failed == 1
    row = h.webhook(db, webhook_id)
    assert row["status"] == "failed"
    assert row["last_error"] == "http 500; retry window of 30 s ended"


def test_endpoint_failing_clock_resets_on_success_and_disables(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    h.add_webhooks(db, endpoint_id, 4)
    limits = Limits(max_window_s=3600.0, endpoint_disable_after_s=0.3)

    async def once(store: Store, verdict: Verdict) -> Recorded:
        claim = await store.claim(1, 60.0)
        return await store.record([outcome(claim.rows[0], verdict, delay_s=0)])

    async def body(store: Store) -> list[Recorded]:
        done = [await once(store, Verdict.RETRY)]
        await asyncio.sleep(0.4)
        done.append(await once(store, Verdict.DELIVERED))
        done.append(await once(store, Verdict.RETRY))
        await asyncio.sleep(0.4)
        done.append(await once(store, Verdict.RETRY))
        return done

    failing_since = datetime.now(UTC)
    steps = with_store(database_url, body, limits)
    assert [s.endpoints_disabled for s in steps] == [[], [], [], [endpoint_id]]
    row = h.endpoint(db, endpoint_id)
    assert row["disabled_reason"] == "failing without a success for 0.3 s"
    # The clock restarted at the failure after the success, not the first one.
    assert row["failing_since"] > failing_since + timedelta(seconds=0.4)
    assert row["last_success_at"] < row["failing_since"]


def test_410_fails_the_webhook_and_disables_the_endpoint(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)

    async def body(store: Store) -> Recorded:
        claim = await store.claim(10, 60.0)
        return await store.record([outcome(claim.rows[0], Verdict.GONE, result(410))])

    recorded = with_store(database_url, body)
    assert (recorded.failed, recorded.endpoints_disabled) == (1, [endpoint_id])
    assert h.webhook(db, webhook_id)["status"] == "failed"
    row = h.endpoint(db, endpoint_id)
    assert row["disabled_at"] is not None
    assert row["disabled_reason"] == "answered 410 Gone"


def test_rows_of_a_disabled_endpoint_fail_without_an_attempt(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    db.execute("UPDATE webhook_endpoints SET disabled_at = now()")

    async def body(store: Store) -> Recorded:
        claim = await store.claim(10, 60.0)
        assert claim.rows[0].endpoint_disabled
        row = claim.rows[0]
        return await store.record(
            [Outcome(row, Verdict.DISABLED, None, last_error="endpoint disabled")]
        )

    assert with_store(database_url, body).failed == 1
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "failed",
        0,
        "endpoint disabled",
    )
    assert h.attempts(db, webhook_id) == []


def test_release_gives_rows_back_unattempted(database_url: str, db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    ids = h.add_webhooks(db, endpoint_id, 2)

    async def body(store: Store) -> tuple[int, int]:
        claim = await store.claim(10, 60.0)
        stale = await store.claim(10, 0.01)
        assert stale.rows == []
        released = await store.release(claim.rows, 0.0)
        again = await store.release(claim.rows, 0.0)
        return released, again

    started = time.time()
    assert with_store(database_url, body) == (2, 0)
    for webhook_id in ids:
        row = h.webhook(db, webhook_id)
        assert (row["status"], row["attempts"], row["claim_token"]) == (
            "pending",
            0,
            None,
        )
        assert row["locked_until"] is None
        assert row["next_attempt_at"].timestamp() <= time.time()
        assert row["next_attempt_at"].timestamp() >= started - 1
        assert h.attempts(db, webhook_id) == []
