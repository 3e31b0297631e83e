"""Rows and workers for webhooks tests: endpoints, webhooks, fast settings."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import psycopg

from ferry.config import CommonSettings, load
from ferry.runtime import RunContext, RunOutcome
from ferry.workers.webhooks import WebhooksSettings, WebhooksWorker

Conn = psycopg.Connection[tuple[Any, ...]]

# Two secrets with the key lengths of the published vectors (24 bytes).
SECRET = "whsec_" + base64.b64encode(b"ferry-test-secret-number-1").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"ferry-test-secret-number-0").decode()

# Short enough to keep each test quick, long enough for a loaded machine.
FAST: dict[str, Any] = {
    "allow_networks": "127.0.0.0/8,::1",
    "attempt_deadline_s": 1.0,
    "lease_s": 5.0,
    "retry_schedule_s": "60",
    "retry_jitter": 0.0,
    "wakeup_key": "",
    "poll_interval_s": 0.2,
    "poll_jitter_s": 0.0,
}


def settings(**overrides: Any) -> WebhooksSettings:
    """Test settings: FAST with `overrides` on top."""
    return WebhooksSettings(**{**FAST, **overrides})


def worker(**overrides: Any) -> WebhooksWorker:
    """A worker on the test servers (the `ferry_env` fixture must be active)."""
    return WebhooksWorker(load(CommonSettings), settings(**overrides))


def run(target: WebhooksWorker, stopping: threading.Event | None = None) -> RunOutcome:
    """One run, as the runtime would do it."""
    return target.run_once(RunContext(stopping or threading.Event()))


def add_endpoint(
    db: Conn,
    url: str,
    *,
    secret: str = SECRET,
    old_secrets: tuple[str, ...] = (),
    account: str = "acct1",
) -> int:
    row = db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, secret, old_secrets)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        (account, url, secret, list(old_secrets)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_webhooks(
    db: Conn,
    endpoint_id: int,
    count: int = 1,
    *,
    status: str = "pending",
    upload_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> list[int]:
    body = json.dumps(payload or {"type": "upload.completed", "upload": "u1"})
    found = db.execute(
        "INSERT INTO upload_webhooks"
        " (endpoint_id, upload_id, kind, event_type, payload, status)"
        " SELECT %s, %s, %s, 'upload.completed', %s::jsonb, %s"
        " FROM generate_series(1, %s) RETURNING id",
        (
            endpoint_id,
            upload_id,
            "auto" if status == "verifying" else "manual",
            body,
            status,
            count,
        ),
    ).fetchall()
    return sorted(int(r[0]) for r in found)


def webhook(db: Conn, webhook_id: int) -> dict[str, Any]:
    cursor = db.execute("SELECT * FROM upload_webhooks WHERE id = %s", (webhook_id,))
    names = [c.name for c in cursor.description or ()]
    row = cursor.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def attempts(db: Conn, webhook_id: int) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT * FROM webhook_attempts WHERE webhook_id = %s ORDER BY attempt",
        (webhook_id,),
    )
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def endpoint(db: Conn, endpoint_id: int) -> dict[str, Any]:
    cursor = db.execute("SELECT * FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
    names = [c.name for c in cursor.description or ()]
    row = cursor.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))
