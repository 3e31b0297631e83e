"""The demo receiver verifies every signature and answers by its path."""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from ferry.demo import receiver as receiver_module
from ferry.demo.receiver import ReceiverServer, SecretBook

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def receiver(database_url: str) -> Iterator[ReceiverServer]:
    server = ReceiverServer(0, SecretBook(database_url))
    # Seeded so that the ok endpoint's 2% failures do not strike here.
    server.rng = random.Random(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def endpoint(db: Conn, server: ReceiverServer, path: str) -> tuple[str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, secret) VALUES (%s, %s, %s)",
        ("acct_000001", url, secret),
    )
    return url, secret


def deliver(url: str, secret: str, msg_id: str = "msg_1") -> httpx.Response:
    body = json.dumps({"type": "upload.created", "data": {"upload_id": "u1"}})
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, body)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return httpx.post(url, content=body, headers=headers)


def test_a_signed_delivery_to_an_ok_endpoint_gets_200(
    receiver: ReceiverServer, db: Conn
) -> None:
    url, secret = endpoint(db, receiver, "/hooks/ok/1")
    assert deliver(url, secret).status_code == 200
    assert receiver.answered == {"msg_1"}


def test_a_delivery_signed_with_another_secret_gets_401(
    receiver: ReceiverServer, db: Conn
) -> None:
    url, _ = endpoint(db, receiver, "/hooks/ok/2")
    other = "whsec_" + base64.b64encode(b"not the endpoint's secret").decode()
    assert deliver(url, other).status_code == 401
    unsigned = httpx.post(url, content=b"{}")
    assert unsigned.status_code == 401
    assert receiver.answered == set()


def test_the_gone_endpoint_answers_410_and_unknown_paths_404(
    receiver: ReceiverServer, db: Conn
) -> None:
    url, secret = endpoint(db, receiver, "/hooks/gone/3")
    assert deliver(url, secret).status_code == 410
    unknown = f"http://127.0.0.1:{receiver.port}/hooks/ok/999"
    assert deliver(unknown, secret).status_code == 404


def test_an_old_secret_still_verifies_while_it_rotates(
    receiver: ReceiverServer, db: Conn
) -> None:
    url, old = endpoint(db, receiver, "/hooks/ok/4")
    new = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    db.execute(
        "UPDATE webhook_endpoints SET secret = %s, old_secrets = ARRAY[%s]"
        " WHERE url = %s",
        (new, old, url),
    )
    assert deliver(url, old).status_code == 200


def test_a_client_that_hangs_up_on_a_slow_answer_is_logged_not_raised(
    receiver: ReceiverServer,
    db: Conn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(receiver_module, "SLOW_MIN_S", 0.5)
    monkeypatch.setattr(receiver_module, "SLOW_MAX_S", 0.5)
    url, secret = endpoint(db, receiver, "/hooks/slow/5")
    request = deliver_request(url, secret)
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.sendall(request)
        time.sleep(0.1)
        # Linger 0: close with a reset, as a client whose deadline passed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    caplog.set_level(logging.INFO, logger="ferry.demo.receiver")
    deadline = time.monotonic() + 5
    while "client_gone=True" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "receiver_request path=/hooks/slow/5" in caplog.text
    assert "client_gone=True" in caplog.text
    assert "Traceback" not in capsys.readouterr().err


def deliver_request(url: str, secret: str) -> bytes:
    """The raw HTTP request `deliver` would send, for a socket of our own."""
    body = json.dumps({"type": "upload.created", "data": {"upload_id": "u1"}})
    now = datetime.now(UTC)
    signature = Webhook(secret).sign("msg_slow", now, body)
    path = "/" + url.split("/", 3)[3]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"webhook-id: msg_slow\r\nwebhook-timestamp: {int(now.timestamp())}\r\n"
        f"webhook-signature: {signature}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body.encode()
