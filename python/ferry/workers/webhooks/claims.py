"""Postgres side of delivery: claim due rows, record outcomes, release rows.

A claim is one statement: it locks up to `batch` due rows with `FOR UPDATE
SKIP LOCKED` (so processes side by side never take the same row), marks them
`delivering` with a lease and a fresh claim token, and returns only what
delivery needs. Rows whose lease ran out (their process died) are taken
before due rows, and the lost attempt is counted.

Every later write names the claim token, and a row whose token changed
(another process took it over after the lease ran out) is left alone: a
worker that lost its lease cannot overwrite the new owner's outcome. Its
attempt row is still recorded: the new owner counted that attempt and uses
the next number.

An outcome batch is one transaction: the webhooks' new state and next
schedule, their attempt rows, and the endpoints' health. Endpoint rows are
locked in id order first, so two processes recording outcomes for the same
endpoints take turns instead of deadlocking.

Nothing here keeps session state between transactions, so the connection
may go through a transaction-mode pooler.

An attempt lost with a process that died is counted in `attempts` but has
no `webhook_attempts` row (nobody lived to write it), so attempt numbers of
such a webhook have a gap where it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import TupleRow

from ferry.errors import StoreError
from ferry.stores.postgres import CONNECT_TIMEOUT_S
from ferry.workers.webhooks.delivery import AttemptResult
from ferry.workers.webhooks.schedule import Verdict

logger = logging.getLogger("ferry.webhooks.claims")

AsyncConn = psycopg.AsyncConnection[TupleRow]

# A byte budget no claim reaches: Postgres bigint's largest value.
UNBOUNDED_BYTES = 2**63 - 1

CLAIM_SQL = """
WITH expired AS (
    SELECT id FROM upload_webhooks
    WHERE status = 'delivering' AND locked_until <= now()
    ORDER BY locked_until
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM upload_webhooks
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM expired
    UNION ALL
    SELECT id FROM due
    LIMIT %(batch)s
), sized AS (
    SELECT w.id, octet_length(w.payload::text) AS size,
           sum(octet_length(w.payload::text)) OVER (ORDER BY w.id) AS upto
    FROM picked JOIN upload_webhooks AS w ON w.id = picked.id
), kept AS (
    -- Rows up to the byte budget, and always the first: payloads of a few
    -- MB would otherwise make one claim hundreds of MB. The rest stay due.
    SELECT id FROM sized WHERE upto - size < %(max_bytes)s
)
UPDATE upload_webhooks AS w
SET status = 'delivering',
    claim_token = %(token)s,
    locked_until = now() + %(lease_s)s * interval '1 second',
    -- A row still 'delivering' here was claimed by a process that died with
    -- its attempt in flight: that attempt counts.
    attempts = w.attempts + (w.status = 'delivering')::int,
    first_attempt_at = coalesce(w.first_attempt_at, now()),
    updated_at = now()
FROM kept, webhook_endpoints AS e
WHERE w.id = kept.id AND e.id = w.endpoint_id
RETURNING w.id, w.message_id, w.attempts + 1, w.attempts - w.attempt_base + 1,
    w.payload::text, e.id, e.url, e.secret,
    -- A NULL among the old secrets signs nothing; left in, it would fail
    -- every run that claims one of the endpoint's rows.
    CASE WHEN e.old_secrets_expire_at IS NULL OR e.old_secrets_expire_at > now()
         THEN array_remove(e.old_secrets, NULL) ELSE '{}' END,
    e.disabled_at IS NOT NULL, (SELECT count(*) FROM picked)
"""

RECORD_SQL = """
UPDATE upload_webhooks AS w
SET status = CASE
        WHEN o.verdict = 'delivered' THEN 'delivered'
        WHEN o.verdict = 'retry' AND now() + o.delay_s * interval '1 second'
             <= w.first_attempt_at + %(window_s)s * interval '1 second'
        THEN 'pending'
        ELSE 'failed' END,
    attempts = w.attempts + (o.verdict NOT IN ('disabled', 'exhausted'))::int,
    next_attempt_at = CASE WHEN o.verdict = 'retry'
        THEN now() + o.delay_s * interval '1 second'
        ELSE w.next_attempt_at END,
    locked_until = NULL,
    claim_token = NULL,
    last_status_code = CASE WHEN o.verdict IN ('disabled', 'exhausted')
        THEN w.last_status_code ELSE o.status_code END,
    last_error = CASE
        WHEN o.verdict = 'retry' AND now() + o.delay_s * interval '1 second'
             > w.first_attempt_at + %(window_s)s * interval '1 second'
        THEN o.last_error || %(window_note)s
        ELSE o.last_error END,
    delivered_at = CASE WHEN o.verdict = 'delivered' THEN now() END,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(verdicts)s::text[],
            %(delays)s::float8[], %(codes)s::int[], %(errors)s::text[])
     AS o(id, token, verdict, delay_s, status_code, last_error)
WHERE w.id = o.id AND w.claim_token = o.token AND w.status = 'delivering'
RETURNING w.id, w.status
"""

ATTEMPTS_SQL = """
INSERT INTO webhook_attempts
    (webhook_id, attempt, started_at, duration_ms, status_code, error,
     response_excerpt)
SELECT a.webhook_id, a.attempt, a.started_at, a.duration_ms, a.status_code,
       a.error, a.response_excerpt
FROM unnest(%s::bigint[], %s::int[], %s::timestamptz[], %s::int[],
            %s::int[], %s::text[], %s::text[])
     AS a(webhook_id, attempt, started_at, duration_ms, status_code, error,
          response_excerpt)
ON CONFLICT (webhook_id, attempt) DO NOTHING
"""

LOCK_ENDPOINTS_SQL = """
SELECT id FROM webhook_endpoints WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE
"""

ENDPOINTS_SQL = """
UPDATE webhook_endpoints AS e
SET failing_since = CASE WHEN a.action = 'success' THEN NULL
        ELSE coalesce(e.failing_since, now()) END,
    last_success_at = CASE WHEN a.action = 'success' THEN now()
        ELSE e.last_success_at END,
    disabled_at = CASE
        WHEN e.disabled_at IS NOT NULL THEN e.disabled_at
        WHEN a.action = 'gone' THEN now()
        WHEN a.action = 'failure'
             AND e.failing_since <= now() - %(after_s)s * interval '1 second'
        THEN now() END,
    disabled_reason = CASE
        WHEN e.disabled_at IS NOT NULL THEN e.disabled_reason
        WHEN a.action = 'gone' THEN %(gone_reason)s
        WHEN a.action = 'failure'
             AND e.failing_since <= now() - %(after_s)s * interval '1 second'
        THEN %(failing_reason)s END,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(actions)s::text[]) AS a(id, action)
WHERE e.id = a.id
RETURNING e.id, e.disabled_at = now()
"""

RELEASE_SQL = """
UPDATE upload_webhooks AS w
SET status = 'pending',
    claim_token = NULL,
    locked_until = NULL,
    next_attempt_at = now() + r.delay_s * interval '1 second',
    updated_at = now()
FROM unnest(%s::bigint[], %s::uuid[], %s::float8[]) AS r(id, token, delay_s)
WHERE w.id = r.id AND w.claim_token = r.token AND w.status = 'delivering'
"""


@dataclass(frozen=True)
class Claimed:
    """One claimed webhook and its endpoint, as delivery needs them.

    `attempt` numbers the attempt in `webhook_attempts`; `round_attempt`
    counts it against the attempt limit (replays start a new round). The
    secrets are kept out of `repr`.
    """

    webhook_id: int
    message_id: str
    attempt: int
    round_attempt: int
    body: bytes
    endpoint_id: int
    url: str
    secret: str = field(repr=False)
    old_secrets: tuple[str, ...] = field(repr=False)
    endpoint_disabled: bool
    token: uuid.UUID


@dataclass(frozen=True)
class Claim:
    """The rows one claim statement took, and when its lease runs out.

    `lease_ends` is on this process's monotonic clock, measured from before
    the statement was sent, so it is never later than Postgres's lease.
    """

    token: uuid.UUID
    rows: list[Claimed]
    lease_ends: float
    # Due rows the statement found, before the byte budget cut them: fewer
    # than asked means nothing more is due.
    candidates: int = 0


@dataclass(frozen=True)
class Outcome:
    """What to record for one claimed row.

    `result` is None for a row of a disabled endpoint: nothing was sent.
    `last_error` is the text for `upload_webhooks.last_error`.
    """

    row: Claimed
    verdict: Verdict
    result: AttemptResult | None
    delay_s: float = 0.0
    last_error: str | None = None


@dataclass
class Recorded:
    """What one outcome batch changed."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    # Rows whose claim had been taken over; their state was left alone.
    superseded: int = 0
    endpoints_disabled: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    """The limits the outcome write applies with Postgres's clock."""

    max_window_s: float
    endpoint_disable_after_s: float


async def connect(url: str) -> AsyncConn:
    """An autocommit connection with server-side prepared statements off.

    Raises `StoreError` when Postgres cannot be reached.
    """
    try:
        return await psycopg.AsyncConnection.connect(
            url,
            autocommit=True,
            prepare_threshold=None,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="ferry-webhooks",
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to Postgres: {_first_line(exc)}") from exc


class Store:
    """One connection shared by the run's tasks, one statement or transaction
    at a time (psycopg would otherwise interleave them into one transaction).

    Every method raises `StoreError` when Postgres fails.
    """

    def __init__(self, conn: AsyncConn, limits: Limits) -> None:
        self.conn = conn
        self.limits = limits
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def session(self, what: str) -> AsyncIterator[AsyncConn]:
        """Exclusive use of the connection; psycopg errors become StoreError."""
        async with self._lock:
            try:
                yield self.conn
            except psycopg.Error as exc:
                raise StoreError(f"webhooks {what} failed: {_first_line(exc)}") from exc

    async def claim(
        self, batch: int, lease_s: float, max_bytes: int = UNBOUNDED_BYTES
    ) -> Claim:
        """Claim up to `batch` due rows for `lease_s` seconds.

        Payloads past `max_bytes` in total are left due, except the first row,
        which is claimed whatever its size.
        """
        token = uuid.uuid4()
        started = time.monotonic()
        async with self.session("claim") as conn:
            cursor = await conn.execute(
                CLAIM_SQL,
                {
                    "batch": batch,
                    "token": token,
                    "lease_s": lease_s,
                    "max_bytes": max_bytes,
                },
            )
            rows = await cursor.fetchall()
        claimed = [_claimed(row[:-1], token) for row in rows]
        return Claim(
            token=token,
            rows=claimed,
            lease_ends=started + lease_s,
            candidates=int(rows[0][-1]) if rows else 0,
        )

    async def release(self, rows: Sequence[Claimed], delay_s: float = 0.0) -> int:
        """Give rows back unattempted, due after `delay_s`; returns how many."""
        if not rows:
            return 0
        async with self.session("release") as conn:
            cursor = await conn.execute(
                RELEASE_SQL,
                (
                    [row.webhook_id for row in rows],
                    [row.token for row in rows],
                    [delay_s] * len(rows),
                ),
            )
            return cursor.rowcount

    async def record(self, outcomes: Sequence[Outcome]) -> Recorded:
        """Write a batch of outcomes in one transaction."""
        recorded = Recorded()
        if not outcomes:
            return recorded
        async with self.session("outcome write") as conn, conn.transaction():
            cursor = await conn.execute(RECORD_SQL, self._record_params(outcomes))
            states = await cursor.fetchall()
            attempted = [o for o in outcomes if o.result is not None]
            if attempted:
                await conn.execute(ATTEMPTS_SQL, _attempt_columns(attempted))
            actions = _endpoint_actions(attempted)
            if actions:
                ids = sorted(actions)
                await conn.execute(LOCK_ENDPOINTS_SQL, (ids,))
                cursor = await conn.execute(
                    ENDPOINTS_SQL,
                    {
                        "ids": ids,
                        "actions": [actions[i] for i in ids],
                        "after_s": self.limits.endpoint_disable_after_s,
                        "gone_reason": "answered 410 Gone",
                        "failing_reason": (
                            "failing without a success for "
                            f"{self.limits.endpoint_disable_after_s:g} s"
                        ),
                    },
                )
                for endpoint_id, newly in await cursor.fetchall():
                    if newly:
                        recorded.endpoints_disabled.append(endpoint_id)

        for _, status in states:
            if status == "delivered":
                recorded.delivered += 1
            elif status == "pending":
                recorded.retried += 1
            else:
                recorded.failed += 1
        recorded.superseded = len(outcomes) - len(states)
        return recorded

    def _record_params(self, outcomes: Sequence[Outcome]) -> dict[str, object]:
        return {
            "ids": [o.row.webhook_id for o in outcomes],
            "tokens": [o.row.token for o in outcomes],
            "verdicts": [o.verdict.value for o in outcomes],
            "delays": [o.delay_s for o in outcomes],
            "codes": [o.result.status_code if o.result else None for o in outcomes],
            "errors": [o.last_error for o in outcomes],
            "window_s": self.limits.max_window_s,
            "window_note": (f"; retry window of {self.limits.max_window_s:g} s ended"),
        }


def _claimed(row: TupleRow, token: uuid.UUID) -> Claimed:
    (
        webhook_id,
        message_id,
        attempt,
        round_attempt,
        payload,
        endpoint_id,
        url,
        secret,
        old_secrets,
        disabled,
    ) = row
    return Claimed(
        webhook_id=webhook_id,
        message_id=message_id,
        attempt=attempt,
        round_attempt=round_attempt,
        body=payload.encode(),
        endpoint_id=endpoint_id,
        url=url,
        secret=secret,
        old_secrets=tuple(old_secrets),
        endpoint_disabled=disabled,
        token=token,
    )


def _attempt_columns(outcomes: Sequence[Outcome]) -> tuple[list[object], ...]:
    columns: tuple[list[object], ...] = ([], [], [], [], [], [], [])
    for outcome in outcomes:
        result = outcome.result
        assert result is not None, "only attempted outcomes have attempt rows"
        values = (
            outcome.row.webhook_id,
            outcome.row.attempt,
            result.started_at,
            result.duration_ms,
            result.status_code,
            result.error,
            result.excerpt,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _endpoint_actions(outcomes: Sequence[Outcome]) -> dict[int, str]:
    # One action per endpoint: a 410 disables whatever else happened, and one
    # success in the batch resets the failing clock.
    rank = {"failure": 0, "success": 1, "gone": 2}
    actions: dict[int, str] = {}
    for outcome in outcomes:
        if outcome.verdict is Verdict.GONE:
            action = "gone"
        elif outcome.verdict is Verdict.DELIVERED:
            action = "success"
        else:
            action = "failure"
        current = actions.get(outcome.row.endpoint_id)
        if current is None or rank[action] > rank[current]:
            actions[outcome.row.endpoint_id] = action
    return actions


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
