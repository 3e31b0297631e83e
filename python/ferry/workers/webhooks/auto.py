"""The auto pass: release auto webhooks whose upload is verified.

Auto webhooks wait in `verifying` while their upload is checked. The pass
moves those whose upload has `verified_at` to `pending`, and fails those
still unverified after the limit, with the reason. Each is one statement
whose UPDATE repeats the `status = 'verifying'` condition: the rows are
picked from a snapshot, and when a row is changed by another transaction
between that pick and the update (cancelled, failed by hand, promoted by
another process), Postgres checks the condition again on the row as it now
is, so a row that has moved on is never reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.workers.webhooks.claims import Store

# Rows changed per statement: bounds one statement's locks and time on a
# backlog, and the pass loops until a statement changes fewer.
AUTO_BATCH_ROWS = 1000

PROMOTE_SQL = """
WITH ready AS (
    SELECT w.id FROM upload_webhooks AS w
    JOIN uploads AS u ON u.id = w.upload_id
    WHERE w.status = 'verifying' AND u.verified_at IS NOT NULL
    ORDER BY w.created_at
    LIMIT %(batch)s
)
UPDATE upload_webhooks AS w
SET status = 'pending', next_attempt_at = now(), updated_at = now()
FROM ready
WHERE w.id = ready.id AND w.status = 'verifying'
"""

EXPIRE_SQL = """
WITH stale AS (
    SELECT w.id FROM upload_webhooks AS w
    WHERE w.status = 'verifying'
      AND w.created_at <= now() - %(limit_s)s * interval '1 second'
      AND NOT EXISTS (
          SELECT 1 FROM uploads AS u
          WHERE u.id = w.upload_id AND u.verified_at IS NOT NULL)
    ORDER BY w.created_at
    LIMIT %(batch)s
)
UPDATE upload_webhooks AS w
SET status = 'failed', last_error = %(reason)s, updated_at = now()
FROM stale
WHERE w.id = stale.id AND w.status = 'verifying'
"""


@dataclass
class AutoResult:
    """Rows promoted to pending, and rows failed as never verified."""

    promoted: int = 0
    expired: int = 0


async def auto_pass(
    store: Store, *, verify_limit_s: float, batch: int = AUTO_BATCH_ROWS
) -> AutoResult:
    """Promote verified rows, then fail rows unverified past `verify_limit_s`.

    Raises `StoreError` when Postgres fails; rows changed by statements that
    committed before the failure stay changed, which is correct on its own.
    """
    result = AutoResult()
    while True:
        async with store.session("auto pass") as conn:
            cursor = await conn.execute(PROMOTE_SQL, {"batch": batch})
        result.promoted += cursor.rowcount
        if cursor.rowcount < batch:
            break

    reason = f"upload not verified within {verify_limit_s:g} s"
    while True:
        async with store.session("auto pass") as conn:
            cursor = await conn.execute(
                EXPIRE_SQL,
                {"limit_s": verify_limit_s, "batch": batch, "reason": reason},
            )
        result.expired += cursor.rowcount
        if cursor.rowcount < batch:
            break
    return result
