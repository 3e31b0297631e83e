"""The auto pass: verified uploads release their webhooks, stale ones fail,
and a row another step moved on is never reset."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from ferry.workers.webhooks.auto import AutoResult, auto_pass
from ferry.workers.webhooks.claims import Limits, Store, connect
from tests.workers.webhooks import helpers as h

LIMITS = Limits(max_window_s=3600.0, endpoint_disable_after_s=3600.0)
# How long the test waits for the pass to be seen blocked on the row lock.
LOCK_WAIT_TIMEOUT_S = 10.0


def run_pass(url: str, verify_limit_s: float = 3600.0, batch: int = 1000) -> AutoResult:
    async def main() -> AutoResult:
        conn = await connect(url)
        try:
            store = Store(conn, LIMITS)
            return await auto_pass(store, verify_limit_s=verify_limit_s, batch=batch)
        finally:
            await conn.close()

    return asyncio.run(main())


def add_upload(db: h.Conn, upload_id: str, verified: bool) -> None:
    db.execute(
        "INSERT INTO uploads (id, account_id, verified_at)"
        " VALUES (%s, 'acct1', CASE WHEN %s THEN now() END)",
        (upload_id, verified),
    )


def test_verified_uploads_release_their_webhooks(database_url: str, db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    add_upload(db, "u-ok", verified=True)
    add_upload(db, "u-wait", verified=False)
    ready = h.add_webhooks(db, endpoint_id, 3, status="verifying", upload_id="u-ok")
    [waiting] = h.add_webhooks(db, endpoint_id, status="verifying", upload_id="u-wait")
    [orphan] = h.add_webhooks(db, endpoint_id, status="verifying", upload_id="u-none")

    # A batch of 2 makes the pass loop until a statement changes fewer.
    assert run_pass(database_url, batch=2) == AutoResult(promoted=3, expired=0)
    for webhook_id in ready:
        row = h.webhook(db, webhook_id)
        assert row["status"] == "pending"
    assert h.webhook(db, waiting)["status"] == "verifying"
    assert h.webhook(db, orphan)["status"] == "verifying"
    assert run_pass(database_url) == AutoResult(promoted=0, expired=0)


def test_rows_unverified_past_the_limit_fail_with_the_reason(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    add_upload(db, "u-old", verified=False)
    add_upload(db, "u-new", verified=False)
    [old] = h.add_webhooks(db, endpoint_id, status="verifying", upload_id="u-old")
    [new] = h.add_webhooks(db, endpoint_id, status="verifying", upload_id="u-new")
    db.execute(
        "UPDATE upload_webhooks SET created_at = now() - interval '2 hours'"
        " WHERE id = %s",
        (old,),
    )

    assert run_pass(database_url, verify_limit_s=3600) == AutoResult(0, 1)
    row = h.webhook(db, old)
    assert (row["status"], row["last_error"]) == (
        "failed",
        "upload not verified within 3600 s",
    )
    assert h.webhook(db, new)["status"] == "verifying"


def test_a_row_moved_on_between_select_and_update_is_not_reset(
    database_url: str, db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/hook")
    add_upload(db, "u1", verified=True)
    [moved, other] = h.add_webhooks(
        db, endpoint_id, 2, status="verifying", upload_id="u1"
    )

    # Another step takes the row on and holds it, uncommitted, while the pass
    # runs: the pass picks it from its snapshot, then waits for the lock.
    with psycopg.connect(database_url) as step:
        step.execute(
            "UPDATE upload_webhooks SET status = 'failed', last_error = 'cancelled'"
            " WHERE id = %s",
            (moved,),
        )
        outcome: list[AutoResult] = []
        thread = threading.Thread(target=lambda: outcome.append(run_pass(database_url)))
        thread.start()
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
        while time.monotonic() < deadline:
            waiting = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND application_name = 'ferry-webhooks'"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the auto pass never waited for the row lock")
        step.commit()
        thread.join(LOCK_WAIT_TIMEOUT_S)

    assert outcome == [AutoResult(promoted=1, expired=0)]
    row = h.webhook(db, moved)
    assert (row["status"], row["last_error"]) == ("failed", "cancelled")
    assert h.webhook(db, other)["status"] == "pending"
