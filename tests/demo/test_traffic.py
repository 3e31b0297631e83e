"""The demo traffic writes what the web application writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import cast

import psycopg
import redis

from ferry.demo.data import DemoSettings
from ferry.demo.traffic import ENDPOINTS, WAKEUP_KEY, Traffic

Conn = psycopg.Connection[tuple[object, ...]]


def test_ticks_write_counters_events_uploads_and_webhooks(
    ferry_env: dict[str, str], rclient: redis.Redis, db: Conn
) -> None:
    # Four uploads a second over a quarter-second tick: one upload per tick.
    demo = DemoSettings.model_validate(
        {"accounts": 1000, "events_per_s": 400, "uploads_per_s": 4, "verify_after_s": 0}
    )
    traffic = Traffic(rclient, db, demo, random.Random(7))
    traffic.tick()
    traffic.tick()

    today = datetime.now(UTC).date().isoformat()
    quota = list(rclient.scan_iter(match="quota:acct_*"))
    usage = list(rclient.scan_iter(match=f"usage:{today}:acct_*"))
    assert quota and len(quota) == len(usage)
    total = sum(int(cast(bytes, value)) for value in rclient.mget(quota) or [])
    assert total >= traffic.totals["increments"] == 200
    assert rclient.xlen("audit:events") == traffic.totals["events"] > 0
    entries = rclient.xrange("audit:events", count=1)
    assert entries
    fields = set(entries[0][1] or {})
    assert {b"actor_id", b"action", b"target_type", b"target_id", b"ip"} <= fields

    assert db.execute("SELECT count(*) FROM webhook_endpoints").fetchone() == (
        sum(ENDPOINTS.values()),
    )
    kinds = db.execute(
        "SELECT kind, status, count(*) FROM upload_webhooks GROUP BY 1, 2 ORDER BY 1"
    ).fetchall()
    assert kinds == [("auto", "verifying", 2), ("manual", "pending", 2)]
    # The second tick verified the first upload (no wait asked for here).
    assert traffic.totals["verified"] >= 1
    assert rclient.llen(WAKEUP_KEY) == 2

    # A second start finds its endpoints and creates none.
    Traffic(rclient, db, demo, random.Random(8))
    assert db.execute("SELECT count(*) FROM webhook_endpoints").fetchone() == (
        sum(ENDPOINTS.values()),
    )
