"""`ferry webhooks replay` and `ferry webhooks stats`, run as the operator would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis

from tests.conftest import run_ferry
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver

WAKEUP_KEY = "ferry:webhooks:wakeup"


def fail(db: h.Conn, webhook_id: int, attempts: int = 3, age_s: float = 0) -> None:
    db.execute(
        "UPDATE upload_webhooks SET status = 'failed', attempts = %s,"
        " first_attempt_at = now() - interval '1 day', last_error = 'http 500',"
        " updated_at = now() - %s * interval '1 second' WHERE id = %s",
        (attempts, age_s, webhook_id),
    )


def test_replay_requeues_a_failed_webhook_for_a_new_round(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver, rclient: redis.Redis
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    fail(db, webhook_id)
    message_id = h.webhook(db, webhook_id)["message_id"]

    done = run_ferry("webhooks", "replay", str(webhook_id), env=ferry_env)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"replayed webhook {webhook_id}\n"
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["attempt_base"]) == ("pending", 3, 3)
    assert row["first_attempt_at"] is None
    assert row["next_attempt_at"] <= datetime.now(UTC)
    assert rclient.llen(WAKEUP_KEY) == 1

    # The new round's first attempt is attempt 4, with the same webhook-id.
    assert h.run(h.worker(max_attempts=1)).fields["delivered"] == 1
    assert [a["attempt"] for a in h.attempts(db, webhook_id)] == [4]
    assert receiver.requests()[0].headers["webhook-id"] == message_id


def test_replay_refuses_what_is_not_failed(
    ferry_env: dict[str, str], db: h.Conn
) -> None:
    [webhook_id] = h.add_webhooks(db, h.add_endpoint(db, "https://example.com/"))
    db.execute("UPDATE upload_webhooks SET status = 'delivered'")

    done = run_ferry("webhooks", "replay", str(webhook_id), env=ferry_env)
    assert done.returncode == 1
    assert done.stderr.endswith(
        f"ferry: webhook {webhook_id} is delivered, not failed;"
        " only failed webhooks are replayed\n"
    )
    assert h.webhook(db, webhook_id)["status"] == "delivered"

    done = run_ferry("webhooks", "replay", "999999", env=ferry_env)
    assert done.returncode == 1
    assert done.stderr.endswith("ferry: webhook 999999 does not exist\n")


def test_replay_of_an_endpoint_since_a_time(
    ferry_env: dict[str, str], db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/")
    other_id = h.add_endpoint(db, "https://example.org/")
    recent = h.add_webhooks(db, endpoint_id, 3)
    [old] = h.add_webhooks(db, endpoint_id)
    [elsewhere] = h.add_webhooks(db, other_id)
    [pending] = h.add_webhooks(db, endpoint_id)
    for webhook_id in [*recent, elsewhere]:
        fail(db, webhook_id, age_s=600)
    fail(db, old, age_s=3 * 3600)

    done = run_ferry(
        "webhooks",
        "replay",
        "--endpoint",
        str(endpoint_id),
        "--since",
        "2h",
        env=ferry_env,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"replayed 3 failed webhooks of endpoint {endpoint_id} since "
    )
    assert {h.webhook(db, i)["status"] for i in recent} == {"pending"}
    assert h.webhook(db, old)["status"] == "failed"
    assert h.webhook(db, elsewhere)["status"] == "failed"
    assert h.webhook(db, pending)["attempts"] == 0

    since = (datetime.now(UTC) - timedelta(hours=4)).isoformat()
    done = run_ferry(
        "webhooks",
        "replay",
        "--endpoint",
        str(endpoint_id),
        "--since",
        since,
        env=ferry_env,
    )
    assert done.stdout.startswith(
        f"replayed 1 failed webhooks of endpoint {endpoint_id}"
    )
    assert h.webhook(db, old)["status"] == "pending"


def test_replay_warns_about_a_disabled_endpoint_or_re_enables_it(
    ferry_env: dict[str, str], db: h.Conn
) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/")
    first, second = h.add_webhooks(db, endpoint_id, 2)
    fail(db, first)
    fail(db, second)
    db.execute(
        "UPDATE webhook_endpoints SET disabled_at = now(),"
        " disabled_reason = 'answered 410 Gone', failing_since = now()"
    )

    done = run_ferry("webhooks", "replay", str(first), env=ferry_env)
    assert done.returncode == 0
    assert done.stderr.endswith(
        f"endpoint {endpoint_id} is disabled (answered 410 Gone); its webhooks will"
        " fail again unless it is re-enabled with --enable-endpoint\n"
    )
    assert h.endpoint(db, endpoint_id)["disabled_at"] is not None

    done = run_ferry(
        "webhooks", "replay", str(second), "--enable-endpoint", env=ferry_env
    )
    assert done.returncode == 0
    assert done.stdout.endswith(
        f"re-enabled endpoint {endpoint_id} (was disabled: answered 410 Gone)\n"
    )
    row = h.endpoint(db, endpoint_id)
    assert (row["disabled_at"], row["disabled_reason"], row["failing_since"]) == (
        None,
        None,
        None,
    )


def test_replay_arguments_are_checked(ferry_env: dict[str, str]) -> None:
    cases = [
        (["replay"], "give either a webhook ID or --endpoint ID with --since"),
        (["replay", "1", "--endpoint", "2"], "give either a webhook ID or"),
        (["replay", "--endpoint", "2"], "--endpoint needs --since TIME"),
        (
            ["replay", "--endpoint", "2", "--since", "yesterday"],
            "--since takes ISO 8601 (2026-03-01T12:00:00Z) or a span such as"
            " 90m, 6h, 2d; got 'yesterday'",
        ),
    ]
    for args, message in cases:
        done = run_ferry("webhooks", *args, env=ferry_env)
        assert done.returncode == 2, args
        assert message in done.stderr, done.stderr


def test_stats_counts_by_status(ferry_env: dict[str, str], db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, "https://example.com/")
    h.add_endpoint(db, "https://example.org/")
    db.execute(
        "UPDATE webhook_endpoints SET disabled_at = now() WHERE id = %s", (endpoint_id,)
    )
    h.add_webhooks(db, endpoint_id, 3)
    h.add_webhooks(db, endpoint_id, 2, status="verifying")
    for status in ("delivered", "failed", "failed"):
        h.add_webhooks(db, endpoint_id, status=status)

    done = run_ferry("webhooks", "stats", "--json", env=ferry_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["by_status"] == {
        "verifying": 2,
        "pending": 3,
        "delivering": 0,
        "delivered": 1,
        "failed": 2,
    }
    assert (report["due_now"], report["leases_expired"]) == (3, 0)
    assert (report["endpoints"], report["endpoints_disabled"]) == (2, 1)

    done = run_ferry("webhooks", "stats", env=ferry_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split() == ["│", "pending", "│", "3", "│"] for line in lines)
    assert lines[-1] == "due now: 3  leases expired: 0  endpoints: 2 (1 disabled)"
