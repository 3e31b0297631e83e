"""Faults found by attacking the worker: each test failed before its fix.

Real Postgres and real HTTP receivers on 127.0.0.1, as everywhere else.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import psycopg
import pytest
import standardwebhooks

from ferry.workers.webhooks.claims import Claimed
from ferry.workers.webhooks.delivery import AttemptResult
from ferry.workers.webhooks.worker import DeliveryRun
from tests.conftest import run_ferry
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver


def test_a_retry_after_no_number_or_date_can_hold_does_not_fail_the_run(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    # int() refuses more than 4300 digits, float() overflows at about 309,
    # and a date in year 99999999999 overflows the date parser: each used to
    # escape the attempt and fail the whole run, every run, for every row.
    headers = ("9" * 400, "9" * 5000, "Mon, 01 Jan 99999999999 00:00:00 GMT")
    for header in headers:
        url = receiver.url(f"/status/503?{urlencode({'retry_after': header})}")
        h.add_webhooks(db, h.add_endpoint(db, url))
    h.add_webhooks(db, h.add_endpoint(db, receiver.url("/ok")))

    outcome = h.run(h.worker(retry_after_max_s=120.0))

    assert (outcome.fields["delivered"], outcome.fields["retried"]) == (1, 3)
    rows = db.execute(
        "SELECT extract(epoch FROM next_attempt_at - updated_at)::int"
        " FROM upload_webhooks WHERE status = 'pending' ORDER BY id"
    ).fetchall()
    # A number too long to hold asks for a very long wait: the maximum. A
    # date that cannot be read is ignored: the schedule's 60 s stand.
    assert [r[0] for r in rows] == [120, 120, 60]


def test_a_null_among_the_old_secrets_is_skipped(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    db.execute(
        "UPDATE webhook_endpoints SET old_secrets = ARRAY[NULL, %s]::text[]",
        (h.OLD_SECRET,),
    )
    [webhook_id] = h.add_webhooks(db, endpoint_id)

    outcome = h.run(h.worker())

    assert outcome.fields["delivered"] == 1
    [request] = receiver.requests()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (h.SECRET, h.OLD_SECRET):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert h.webhook(db, webhook_id)["status"] == "delivered"


def test_replay_since_a_span_before_year_one_is_a_usage_error(
    ferry_env: dict[str, str],
) -> None:
    done = run_ferry(
        "webhooks", "replay", "--endpoint", "1", "--since", "99999999d", env=ferry_env
    )

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--since 99999999d reaches before year 1" in done.stderr


def test_an_endpoint_host_that_is_not_valid_punycode_is_a_bad_url(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    # Decoding `xn--` raised idna's error out of the attempt: every run that
    # claimed the row failed, and the row was never judged.
    bad = h.add_endpoint(db, "http://xn--/hook")
    [bad_id] = h.add_webhooks(db, bad)
    h.add_webhooks(db, h.add_endpoint(db, receiver.url("/ok")))

    outcome = h.run(h.worker())

    assert (outcome.fields["delivered"], outcome.fields["retried"]) == (1, 1)
    row = h.webhook(db, bad_id)
    assert row["last_error"].startswith("bad_url: endpoint URL host is not valid IDNA")
    assert [a["error"] for a in h.attempts(db, bad_id)] == ["bad_url"]


@pytest.mark.parametrize("message_id", ["msg_\u00e9", "msg 1", "msg\r\nx: 1", ""])
def test_a_webhook_id_no_header_can_carry_is_refused_at_insert(
    db: h.Conn, message_id: str
) -> None:
    # Non-ASCII could not be encoded by httpx and failed every run that
    # claimed the row; controls and spaces fail in h11 on every attempt.
    endpoint_id = h.add_endpoint(db, "https://example.com/")

    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO upload_webhooks (endpoint_id, event_type, payload,"
            " message_id) VALUES (%s, 'upload.completed', '{}', %s)",
            (endpoint_id, message_id),
        )


def test_attempts_lost_with_dead_processes_count_against_the_limit(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    # A row whose sending kills the process (a crash, the OOM killer) was
    # re-claimed after every lease, forever, and sent once past the limit.
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    spent, alive = h.add_webhooks(db, endpoint_id, 2)
    db.execute(
        "UPDATE upload_webhooks SET status = 'delivering',"
        " locked_until = now() - interval '1 second', claim_token = gen_random_uuid(),"
        " first_attempt_at = now(), attempts = CASE WHEN id = %s THEN 2 ELSE 1 END",
        (spent,),
    )

    outcome = h.run(h.worker(max_attempts=3))

    assert (outcome.fields["delivered"], outcome.fields["failed"]) == (1, 1)
    row = h.webhook(db, spent)
    assert (row["status"], row["attempts"], row["claim_token"]) == ("failed", 3, None)
    assert row["last_error"] == (
        "all 3 attempts made, the last ones lost with processes that stopped"
        " while sending it"
    )
    assert h.attempts(db, spent) == []
    assert [r.headers["webhook-id"] for r in receiver.requests()] == [
        h.webhook(db, alive)["message_id"]
    ]
    assert h.webhook(db, alive)["attempts"] == 3


def test_large_payloads_are_claimed_within_a_byte_budget(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    # Claims were bounded by rows only: 200 rows of a few MB each made one
    # claim hundreds of MB, held in memory until every row was done.
    endpoint_id = h.add_endpoint(db, receiver.url("/slow?s=0.3"))
    payload = {"type": "upload.completed", "blob": "x" * 3_000_000}
    ids = h.add_webhooks(db, endpoint_id, 8, payload=payload)

    outcome = h.run(
        h.worker(claim_max_bytes=8_000_000, attempt_deadline_s=3.0, lease_s=30.0)
    )

    assert outcome.fields["delivered"] == 8
    assert [h.webhook(db, i)["status"] for i in ids] == ["delivered"] * 8
    # 3 MB rows within 8 MB: a claim takes three (the third starts below
    # the budget), then waits for them before taking more.
    assert receiver.record.path_max_in_flight["/slow"] == 3
    assert len(receiver.requests()) == 8


def test_a_run_failing_on_a_bug_gives_back_the_rows_it_had_not_sent(
    ferry_env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"))
    ids = h.add_webhooks(db, endpoint_id, 5)
    calls: list[int] = []

    async def broken_then_slow(self: DeliveryRun, row: Claimed) -> AttemptResult:
        calls.append(row.webhook_id)
        if len(calls) == 1:
            raise RuntimeError("a bug of ours")
        await asyncio.sleep(30)
        raise AssertionError("the run should have ended long before")

    monkeypatch.setattr(DeliveryRun, "_attempt", broken_then_slow)
    worker = h.worker(max_in_flight_per_endpoint=1)

    with pytest.raises(RuntimeError, match="a bug of ours"):
        h.run(worker)

    rows = {i: h.webhook(db, i) for i in ids}
    leased = [i for i, row in rows.items() if row["status"] == "delivering"]
    # Only the row whose attempt broke keeps its lease; the rest are due now.
    assert leased == [calls[0]]
    for i in set(ids) - {calls[0]}:
        assert (rows[i]["status"], rows[i]["claim_token"]) == ("pending", None)
        assert rows[i]["attempts"] == 0
