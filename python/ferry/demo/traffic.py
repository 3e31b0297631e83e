"""Behave like the web application: `python -m ferry.demo.traffic`.

Several times a second it does what the application does as customers use
it: increments `quota:{account}:{metric}` and today's
`usage:{day}:{account}:{metric}` (most of it for a hot few accounts),
appends events to the `audit:events` stream, and now and then records an
upload with two webhooks: a manual one (`upload.created`, pending at once)
and an auto one (`upload.verified`, in `verifying` until the upload is
verified a few seconds later, as the application's scanner would). Each
new webhook is announced on the webhooks worker's wake-up list.

At start it makes sure the demo's endpoints exist, pointing at the demo
receiver; their paths choose how the receiver answers (see
`ferry.demo.receiver`). One summary line is logged every
`SUMMARY_EVERY_S`; TERM or INT stops it at the end of the current tick.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg
import redis

from ferry.config import CommonSettings, load
from ferry.demo.data import METRICS, DemoSettings, account_id, pick_account
from ferry.errors import ConfigError, StoreError
from ferry.logs import configure, kv
from ferry.stores import postgres
from ferry.stores import redis as redis_store

TICK_S = 0.25
SUMMARY_EVERY_S = 30.0
# A third of the increments are actions worth an audit event.
AUDIT_SHARE = 0.33
# Every twentieth upload is never verified, so its auto webhook waits on.
NEVER_VERIFIED_SHARE = 0.05
# The audit stream takes both time formats the application writes.
EPOCH_MS_SHARE = 0.5
SECRET_BYTES = 24
# The webhooks worker's default wake-up list (FERRY_WEBHOOKS_WAKEUP_KEY).
WAKEUP_KEY = "ferry:webhooks:wakeup"
AUDIT_STREAM = "audit:events"
ACTIONS = ("upload.create", "upload.delete", "share.create", "login", "key.rotate")

# The demo's customers: how many endpoints answer each way. The receiver
# reads the behaviour from the path.
ENDPOINTS = {"ok": 16, "flaky": 2, "slow": 1, "gone": 1}

logger = logging.getLogger("ferry.demo.traffic")


def endpoint_url(port: int, behaviour: str, number: int) -> str:
    """The URL of one demo endpoint on the receiver."""
    return f"http://127.0.0.1:{port}/hooks/{behaviour}/{number}"


def ensure_endpoints(
    conn: psycopg.Connection[tuple[Any, ...]], port: int
) -> list[tuple[int, str]]:
    """Create the demo endpoints that are missing; return (id, account) of each."""
    endpoints = []
    number = 0
    for behaviour, count in ENDPOINTS.items():
        for _ in range(count):
            number += 1
            url = endpoint_url(port, behaviour, number)
            account = account_id(number)
            row = conn.execute(
                "SELECT id FROM webhook_endpoints WHERE url = %s", (url,)
            ).fetchone()
            if row is None:
                secret = (
                    "whsec_"
                    + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
                )
                row = conn.execute(
                    "INSERT INTO webhook_endpoints (account_id, url, secret)"
                    " VALUES (%s, %s, %s) RETURNING id",
                    (account, url, secret),
                ).fetchone()
            if row is None:
                raise StoreError(f"endpoint {url} was neither found nor created")
            endpoints.append((int(row[0]), account))
    return endpoints


class Traffic:
    """One tick at a time of application-like writes."""

    def __init__(
        self,
        client: redis.Redis,
        conn: psycopg.Connection[tuple[Any, ...]],
        demo: DemoSettings,
        rng: random.Random,
    ) -> None:
        self.client = client
        self.conn = conn
        self.demo = demo
        self.rng = rng
        self.endpoints = ensure_endpoints(conn, demo.receiver_port)
        self.totals = {"increments": 0, "events": 0, "uploads": 0, "verified": 0}

    def tick(self) -> None:
        """One tick's worth of writes."""
        self._counters_and_events()
        if self.rng.random() < self.demo.uploads_per_s * TICK_S:
            self._upload()
        self._verify()

    def _counters_and_events(self) -> None:
        today = datetime.now(UTC).date().isoformat()
        pipe = self.client.pipeline(transaction=False)
        for _ in range(self._count(self.demo.events_per_s)):
            account = pick_account(self.rng, self.demo.accounts)
            metric = self.rng.choice(METRICS)
            amount = self.rng.randint(1, 5)
            pipe.incrby(f"quota:{account}:{metric}", amount)
            pipe.incrby(f"usage:{today}:{account}:{metric}", amount)
            self.totals["increments"] += 1
            if self.rng.random() < AUDIT_SHARE:
                pipe.xadd(AUDIT_STREAM, self._event(account))
                self.totals["events"] += 1
        pipe.execute()

    def _event(self, account: str) -> dict[Any, Any]:
        now = datetime.now(UTC)
        occurred = (
            str(int(now.timestamp() * 1000))
            if self.rng.random() < EPOCH_MS_SHARE
            else now.isoformat()
        )
        event = {
            "actor_id": f"user_{self.rng.randint(1, 5000)}",
            "action": self.rng.choice(ACTIONS),
            "target_type": "account",
            "target_id": account,
            "ip": f"203.0.113.{self.rng.randint(1, 254)}",
            "occurred_at": occurred,
        }
        if self.rng.random() < AUDIT_SHARE:
            event["metadata"] = json.dumps({"agent": "demo", "n": self.rng.random()})
        return event

    def _upload(self) -> None:
        endpoint_id, account = self.rng.choice(self.endpoints)
        never = self.rng.random() < NEVER_VERIFIED_SHARE
        upload = f"upl_{'stuck_' if never else ''}{uuid.uuid4().hex[:16]}"
        size = self.rng.randint(1_000, 50_000_000)
        data = {"upload_id": upload, "account_id": account, "size_bytes": size}
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO uploads (id, account_id) VALUES (%s, %s)",
                (upload, account),
            )
            for kind, event, status in (
                ("manual", "upload.created", "pending"),
                ("auto", "upload.verified", "verifying"),
            ):
                payload = {"type": event, "timestamp": _now_iso(), "data": data}
                self.conn.execute(
                    "INSERT INTO upload_webhooks"
                    " (endpoint_id, upload_id, kind, event_type, payload, status)"
                    " SELECT %s, %s, %s, %s, %s, %s FROM webhook_endpoints"
                    " WHERE id = %s AND disabled_at IS NULL",
                    (
                        endpoint_id,
                        upload,
                        kind,
                        event,
                        json.dumps(payload),
                        status,
                        endpoint_id,
                    ),
                )
        self.client.lpush(WAKEUP_KEY, upload)
        self.totals["uploads"] += 1

    def _verify(self) -> None:
        cur = self.conn.execute(
            "UPDATE uploads SET verified_at = now()"
            " WHERE verified_at IS NULL AND id NOT LIKE 'upl\\_stuck\\_%%'"
            " AND created_at < now() - make_interval(secs => %s)",
            (self.demo.verify_after_s,),
        )
        self.totals["verified"] += max(cur.rowcount, 0)

    def _count(self, per_s: float) -> int:
        expected = per_s * TICK_S
        whole = int(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main() -> int:
    """Run until TERM or INT; returns the exit code."""
    try:
        common = load(CommonSettings)
        demo = load(DemoSettings)
    except ConfigError as exc:
        sys.stderr.write(f"ferry demo traffic: configuration error: {exc}\n")
        return 2
    configure(common.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        client = redis_store.connect(common.redis_url)
        conn = postgres.connect(common.database_url, application="demo-traffic")
        conn.autocommit = True
        traffic = Traffic(client, conn, demo, random.Random())
    except (StoreError, psycopg.Error, redis.RedisError) as exc:
        logger.error("traffic_failed %s", kv({"error": exc}))
        return 1
    logger.info(
        "traffic_start %s",
        kv({"endpoints": len(traffic.endpoints), "events_per_s": demo.events_per_s}),
    )
    last_summary = time.monotonic()
    while not stop.is_set():
        try:
            traffic.tick()
        except (psycopg.Error, redis.RedisError) as exc:
            # The application keeps serving through a store outage; so does
            # the demo, and says so.
            logger.warning("traffic_tick_failed %s", kv({"error": exc}))
        if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
            logger.info("traffic_summary %s", kv(dict(traffic.totals)))
            last_summary = time.monotonic()
        stop.wait(TICK_S)
    logger.info("traffic_stop %s", kv(dict(traffic.totals)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
