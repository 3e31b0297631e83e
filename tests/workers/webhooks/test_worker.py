"""The worker end to end in this process: real Postgres, real receivers."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
import standardwebhooks

from ferry.runtime.worker import RunContext, RunOutcome
from tests.servers import free_port
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver

WAIT_S = 10.0


def make_due(db: h.Conn) -> None:
    db.execute(
        "UPDATE upload_webhooks SET next_attempt_at = now() WHERE status = 'pending'"
    )


def test_2xx_is_delivered_once_with_stats(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    ids = h.add_webhooks(db, endpoint_id, 3)
    worker = h.worker()

    outcome = h.run(worker)

    assert outcome.synced == 3
    assert outcome.fields["claimed"] == 3
    assert outcome.fields["delivered"] == 3
    for webhook_id in ids:
        row = h.webhook(db, webhook_id)
        assert (row["status"], row["attempts"], row["last_status_code"]) == (
            "delivered",
            1,
            200,
        )
        assert row["delivered_at"] is not None
        assert row["claim_token"] is None
    counters = worker.counters()
    assert {k: counters[k] for k in ("claimed", "delivered", "in_flight")} == {
        "claimed": 3,
        "delivered": 3,
        "in_flight": 0,
    }
    assert set(counters) >= {
        "claimed",
        "delivered",
        "retried",
        "failed",
        "refused",
        "in_flight",
        "promoted",
        "endpoints_disabled",
    }
    assert h.run(worker).fields["claimed"] == 0
    assert len(receiver.requests()) == 3


def test_500_then_200_retries_with_the_same_webhook_id(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/flaky/1"))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    worker = h.worker()

    before = datetime.now(UTC)
    first = h.run(worker)
    assert (first.fields["retried"], first.fields["delivered"]) == (1, 0)
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == (
        "pending",
        1,
        500,
    )
    assert row["last_error"] == "http 500"
    # The schedule's first delay is 60 s without jitter in these settings.
    assert row["next_attempt_at"] - before > timedelta(seconds=59)

    make_due(db)
    assert h.run(worker).fields["delivered"] == 1
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
    sent = receiver.requests()
    assert len({r.headers["webhook-id"] for r in sent}) == 1
    assert sent[0].headers["webhook-id"] == row["message_id"]
    for request in sent:
        standardwebhooks.Webhook(h.SECRET).verify(request.body, request.headers)


def test_410_disables_the_endpoint_and_fails_its_other_webhooks_unsent(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/status/410"))
    [gone] = h.add_webhooks(db, endpoint_id)
    worker = h.worker()

    outcome = h.run(worker)
    assert (outcome.fields["failed"], outcome.fields["endpoints_disabled"]) == (1, 1)
    assert h.webhook(db, gone)["status"] == "failed"
    row = h.endpoint(db, endpoint_id)
    assert row["disabled_reason"] == "answered 410 Gone"

    [later] = h.add_webhooks(db, endpoint_id)
    assert h.run(worker).fields["failed"] == 1
    row = h.webhook(db, later)
    assert (row["status"], row["last_error"], row["attempts"]) == (
        "failed",
        "endpoint disabled",
        0,
    )
    assert len(receiver.requests()) == 1
    assert worker.counters()["endpoints_disabled"] == 1


@pytest.mark.parametrize(
    ("retry_after", "expected_s"), [("120", 120.0), ("999999", 300.0)]
)
def test_429_retry_after_is_honoured_and_bounded(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    retry_after: str,
    expected_s: float,
) -> None:
    endpoint_id = h.add_endpoint(
        db, receiver.url(f"/status/429?retry_after={retry_after}")
    )
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    worker = h.worker(retry_schedule_s="5", retry_after_max_s=300)

    before = datetime.now(UTC)
    assert h.run(worker).fields["retried"] == 1
    after = datetime.now(UTC)
    row = h.webhook(db, webhook_id)
    assert row["last_status_code"] == 429
    due = row["next_attempt_at"]
    assert before + timedelta(seconds=expected_s) <= due
    assert due <= after + timedelta(seconds=expected_s)


def test_redirect_is_a_failure_and_is_not_followed(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/redirect"))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    assert h.run(h.worker()).fields["retried"] == 1
    [attempt] = h.attempts(db, webhook_id)
    assert (attempt["status_code"], attempt["error"]) == (302, "redirect")
    assert [r.path for r in receiver.requests()] == ["/redirect"]


def test_attempts_run_out_then_the_webhook_fails(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/status/503"))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    worker = h.worker(max_attempts=3, retry_schedule_s="0")

    results = [h.run(worker).fields for _ in range(3)]

    assert [(r["retried"], r["failed"]) for r in results] == [(1, 0), (1, 0), (0, 1)]
    row = h.webhook(db, webhook_id)
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "failed",
        3,
        "http 503",
    )
    assert [a["attempt"] for a in h.attempts(db, webhook_id)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("path", "error"),
    [("/hang", "timeout"), ("/drip?interval=0.05", "timeout")],
)
def test_hanging_and_dripping_servers_are_retried_as_timeouts(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver, path: str, error: str
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url(path))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    assert h.run(h.worker(attempt_deadline_s=0.5)).fields["retried"] == 1
    [attempt] = h.attempts(db, webhook_id)
    assert (attempt["status_code"], attempt["error"]) == (None, error)
    assert 450 <= attempt["duration_ms"] < 5000


def test_connection_refused_is_retried(ferry_env: dict[str, str], db: h.Conn) -> None:
    endpoint_id = h.add_endpoint(db, f"http://127.0.0.1:{free_port()}/hook")
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    assert h.run(h.worker()).fields["retried"] == 1
    [attempt] = h.attempts(db, webhook_id)
    assert (attempt["status_code"], attempt["error"]) == (None, "connect")
    assert h.webhook(db, webhook_id)["last_error"].startswith("connect: ")


def test_huge_answer_is_delivered_with_the_overrun_noted(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url(f"/huge?bytes={256 * 1024 * 1024}"))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    assert h.run(h.worker(body_cap_bytes=4096)).fields["delivered"] == 1
    [attempt] = h.attempts(db, webhook_id)
    assert (attempt["status_code"], attempt["error"]) == (200, "body_too_large")
    assert len(attempt["response_excerpt"]) == 500
    with receiver.record.lock:
        assert receiver.record.huge_bytes_sent < 32 * 1024 * 1024


def test_endpoint_failing_long_enough_without_success_is_disabled(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/status/500"))
    h.add_webhooks(db, endpoint_id, 2)
    worker = h.worker(endpoint_disable_after_s=0.5, retry_schedule_s="0")

    assert h.run(worker).fields["endpoints_disabled"] == 0
    assert h.endpoint(db, endpoint_id)["failing_since"] is not None
    time.sleep(0.6)
    make_due(db)
    assert h.run(worker).fields["endpoints_disabled"] == 1
    row = h.endpoint(db, endpoint_id)
    assert row["disabled_reason"] == "failing without a success for 0.5 s"


def test_a_success_resets_the_failing_clock(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/flaky/1"))
    h.add_webhooks(db, endpoint_id)
    worker = h.worker(retry_schedule_s="0")
    h.run(worker)
    assert h.endpoint(db, endpoint_id)["failing_since"] is not None
    make_due(db)
    h.run(worker)
    row = h.endpoint(db, endpoint_id)
    assert row["failing_since"] is None
    assert row["last_success_at"] is not None


def test_auto_webhooks_are_delivered_once_their_upload_is_verified(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    db.execute("INSERT INTO uploads (id, account_id) VALUES ('u1', 'acct1')")
    [webhook_id] = h.add_webhooks(db, endpoint_id, status="verifying", upload_id="u1")
    worker = h.worker(auto_interval_s=0.01)

    assert h.run(worker).fields["promoted"] == 0
    assert h.webhook(db, webhook_id)["status"] == "verifying"
    db.execute("UPDATE uploads SET verified_at = now() WHERE id = 'u1'")
    time.sleep(0.02)
    outcome = h.run(worker)
    assert (outcome.fields["promoted"], outcome.fields["delivered"]) == (1, 1)
    assert worker.counters()["promoted"] == 1


def test_one_dead_endpoint_does_not_hold_up_the_others(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    dead = h.add_endpoint(db, receiver.url("/hang"))
    live = h.add_endpoint(db, receiver.url("/ok"))
    dead_ids = h.add_webhooks(db, dead, 12)
    live_ids = h.add_webhooks(db, live, 20)
    worker = h.worker(
        max_in_flight=6,
        max_in_flight_per_endpoint=2,
        attempt_deadline_s=2.0,
        lease_s=10.0,
    )
    stopping = threading.Event()
    runs: list[RunOutcome] = []
    thread = threading.Thread(target=lambda: runs.append(h.run(worker, stopping)))

    started = time.monotonic()
    thread.start()
    deadline = started + WAIT_S
    while len(receiver.requests("/ok")) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Every live webhook went out while the first dead attempts still hung.
    assert time.monotonic() - started < 2.0
    with receiver.record.lock:
        assert receiver.record.path_in_flight["/hang"] == 2
    stopping.set()
    thread.join(WAIT_S)

    [outcome] = runs
    assert outcome.fields["delivered"] == 20
    # The 10 dead rows queued behind the 2 hanging ones were released at the
    # stop, and the 2 hanging ones finished as timeouts.
    assert outcome.fields["released"] == 10
    assert outcome.fields["retried"] == 2
    with receiver.record.lock:
        assert receiver.record.path_max_in_flight["/hang"] == 2
    assert {h.webhook(db, i)["status"] for i in live_ids} == {"delivered"}
    assert {h.webhook(db, i)["status"] for i in dead_ids} == {"pending"}


def test_rows_for_an_endpoint_seen_to_be_slow_are_deferred(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FERRY_SHUTDOWN_DEADLINE_S", "1.0")
    dead = h.add_endpoint(db, receiver.url("/hang"))
    first = h.add_webhooks(db, dead, 4)
    worker = h.worker(
        max_in_flight_per_endpoint=2, attempt_deadline_s=3.0, lease_s=30.0
    )
    stopping = threading.Event()
    runs: list[RunOutcome] = []
    thread = threading.Thread(target=lambda: runs.append(h.run(worker, stopping)))

    thread.start()
    # Two attempts hang past the 1 s mark that makes the endpoint slow; two
    # rows wait behind them, which is the two rounds of backlog allowed.
    time.sleep(1.2)
    later = h.add_webhooks(db, dead, 6)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) FROM upload_webhooks WHERE id = ANY(%s)"
            " AND status = 'pending' AND next_attempt_at > now() + interval '4 s'",
            (later,),
        ).fetchone()
        if row and row[0] == 6:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the rows claimed for a slow endpoint were not deferred")
    stopping.set()
    thread.join(WAIT_S)

    [outcome] = runs
    assert outcome.fields["claimed"] == 10
    # 6 deferred by twice the deadline; at the stop 2 waiting and 2 in flight.
    assert outcome.fields["released"] == 10
    assert {h.webhook(db, i)["status"] for i in first} == {"pending"}
    assert len(receiver.requests()) == 2


def test_a_row_that_cannot_finish_within_its_lease_is_released_unattempted(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/slow?s=0.8"))
    ids = h.add_webhooks(db, endpoint_id, 3)
    # A 3 s lease leaves 1 s to start in (the deadline and the write margin
    # take the rest); one slot at 0.8 s an attempt starts two in time.
    worker = h.worker(max_in_flight_per_endpoint=1, attempt_deadline_s=1.0, lease_s=3)

    outcome = h.run(worker)

    assert (outcome.fields["delivered"], outcome.fields["released"]) == (2, 1)
    assert len(receiver.requests()) == 2
    row = h.webhook(db, ids[2])
    assert (row["status"], row["attempts"], row["claim_token"]) == ("pending", 0, None)


def test_secrets_never_reach_logs_attempts_or_errors(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad_secret = "whsec_not-base64-" + "S3CR3T" * 4
    good = h.add_endpoint(db, receiver.url("/status/500"), old_secrets=(h.OLD_SECRET,))
    bad = h.add_endpoint(db, receiver.url("/ok"), secret=bad_secret)
    h.add_webhooks(db, good)
    [bad_id] = h.add_webhooks(db, bad)

    with caplog.at_level(logging.DEBUG):
        outcome = h.run(h.worker())

    assert outcome.fields["retried"] == 2
    row = h.webhook(db, bad_id)
    assert row["last_error"] == (
        "bad_secret: signing secret after whsec_ must be padded base64"
    )
    stored = " ".join(
        str(v)
        for table in ("upload_webhooks", "webhook_attempts")
        for r in db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608
        for v in r
    )
    for secret in (h.SECRET, h.OLD_SECRET, bad_secret):
        body = secret.removeprefix("whsec_")
        assert body not in caplog.text
        assert body not in stored
        assert body not in str(outcome)
    assert "S3CR3T" not in caplog.text


def test_wakeup_push_asks_for_a_run(
    ferry_env: dict[str, str], rclient: redis.Redis
) -> None:
    worker = h.worker(wakeup_key="ferry:test:wakeup")
    woken = threading.Event()
    worker.attach(woken.set)
    try:
        rclient.rpush("ferry:test:wakeup", "42")
        assert woken.wait(WAIT_S)
        assert rclient.llen("ferry:test:wakeup") == 0
    finally:
        worker.close()


def test_wakeup_survives_redis_being_down(
    ferry_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    db: h.Conn,
    receiver: Receiver,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    worker = h.worker(wakeup_key="ferry:test:wakeup")
    with caplog.at_level(logging.INFO, logger="ferry.webhooks.wakeup"):
        worker.attach(lambda: None)
        try:
            time.sleep(2.0)
            # Postgres is still polled: a run delivers without Redis.
            endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
            h.add_webhooks(db, endpoint_id)
            assert h.run(worker).fields["delivered"] == 1
        finally:
            worker.close()
    warnings = [r for r in caplog.records if r.getMessage().startswith("wakeup_")]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .startswith(
            "wakeup_unavailable worker=webhooks key=ferry:test:wakeup"
            " error=ConnectionError action="
        )
    )


def test_stop_during_a_batch_finishes_in_flight_and_releases_the_rest(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/slow?s=0.5"))
    ids = h.add_webhooks(db, endpoint_id, 10)
    worker = h.worker(max_in_flight_per_endpoint=2)
    stopping = threading.Event()
    done: list[object] = []
    thread = threading.Thread(
        target=lambda: done.append(worker.run_once(RunContext(stopping)))
    )

    thread.start()
    deadline = time.monotonic() + WAIT_S
    while len(receiver.requests()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopping.set()
    thread.join(WAIT_S)

    assert not thread.is_alive()
    statuses = [h.webhook(db, i)["status"] for i in ids]
    assert statuses.count("delivered") == len(receiver.requests()) == 2
    assert statuses.count("pending") == 8
    for webhook_id in ids:
        row = h.webhook(db, webhook_id)
        assert row["claim_token"] is None
        assert row["locked_until"] is None
    assert worker.counters()["in_flight"] == 0


def test_stop_past_the_deadline_cancels_and_releases_in_flight(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FERRY_SHUTDOWN_DEADLINE_S", "1.0")
    endpoint_id = h.add_endpoint(db, receiver.url("/hang"))
    ids = h.add_webhooks(db, endpoint_id, 3)
    worker = h.worker(attempt_deadline_s=30.0, lease_s=120.0)
    stopping = threading.Event()
    thread = threading.Thread(target=lambda: worker.run_once(RunContext(stopping)))

    thread.start()
    deadline = time.monotonic() + WAIT_S
    while len(receiver.requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = time.monotonic()
    stopping.set()
    thread.join(WAIT_S)

    assert not thread.is_alive()
    assert time.monotonic() - stopped < 1.0 + 0.5
    for webhook_id in ids:
        row = h.webhook(db, webhook_id)
        assert (row["status"], row["claim_token"], row["attempts"]) == (
            "pending",
            None,
            0,
        )
        assert row["next_attempt_at"] <= datetime.now(UTC)


def test_a_bug_in_delivery_fails_the_run_and_keeps_the_lease(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("delivery bug")

    monkeypatch.setattr("ferry.workers.webhooks.worker.attempt", broken)
    [webhook_id] = h.add_webhooks(db, h.add_endpoint(db, receiver.url("/ok")))

    with pytest.raises(RuntimeError, match=r"^delivery bug$"):
        h.run(h.worker())
    row = h.webhook(db, webhook_id)
    assert row["status"] == "delivering"
    assert row["locked_until"] > datetime.now(UTC)
