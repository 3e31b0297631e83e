"""Standard Webhooks signatures, checked as receivers check them.

The receivers here are the published `standardwebhooks` and `svix` libraries,
fed the exact bytes and headers a real receiver got from the worker.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import svix.webhooks

from ferry.workers.webhooks.errors import SecretError
from ferry.workers.webhooks.signing import Signer, parse_secret, signature
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver

# The signing vectors published with the Standard Webhooks libraries.
VECTORS = json.loads(Path(__file__).with_name("standard-webhooks.json").read_text())


def verify_both(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Raise unless both libraries accept the signature."""
    standardwebhooks.Webhook(secret).verify(body, headers)
    svix.webhooks.Webhook(secret).verify(body, headers)


@pytest.mark.parametrize("vector", VECTORS["valid"])
def test_published_vectors_are_reproduced(vector: dict[str, Any]) -> None:
    key = parse_secret(vector["secret"])
    made = signature(key, vector["id"], vector["timestamp"], vector["payload"].encode())
    assert made == vector["signature"]


@pytest.mark.parametrize("vector", VECTORS["not_matching"])
def test_not_matching_vectors_differ(vector: dict[str, Any]) -> None:
    valid = next(v for v in VECTORS["valid"] if v["secret"] == vector["secret"])
    key = parse_secret(vector["secret"])
    made = signature(key, valid["id"], valid["timestamp"], valid["payload"].encode())
    assert made != vector["signature"]


def test_signature_verifies_with_both_libraries() -> None:
    body = b'{"type":"upload.completed","id":"u1"}'
    signer = Signer.from_secrets(h.SECRET)
    headers = dict(signer.headers("msg_abc", int(time.time()), body))
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]
    verify_both(h.SECRET, body, headers)


def test_rotation_signs_with_every_secret_and_each_verifies() -> None:
    body = b'{"n":1}'
    signer = Signer.from_secrets(h.SECRET, [h.OLD_SECRET])
    headers = dict(signer.headers("msg_rot", int(time.time()), body))
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify_both(h.SECRET, body, headers)
    verify_both(h.OLD_SECRET, body, headers)

    stranger = "whsec_" + base64.b64encode(b"x" * 24).decode()
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(stranger).verify(body, headers)
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(stranger).verify(body, headers)


def test_a_repeated_secret_signs_once() -> None:
    signer = Signer.from_secrets(h.SECRET, [h.SECRET, h.OLD_SECRET])
    assert len(signer.keys) == 2


def test_signer_repr_shows_no_key() -> None:
    signer = Signer.from_secrets(h.SECRET)
    assert h.SECRET.removeprefix("whsec_") not in repr(signer)
    assert repr(signer.keys[0]) not in repr(signer)


SECRET_BODY = base64.b64encode(b"k" * 24).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SECRET_BODY, "signing secret must start with whsec_"),
        ("whsec " + SECRET_BODY, "signing secret must start with whsec_"),
        ("WHSEC_" + SECRET_BODY, "signing secret must start with whsec_"),
        (
            "whsec_" + SECRET_BODY + "\n",
            "signing secret after whsec_ must be padded base64",
        ),
        (
            "whsec_ " + SECRET_BODY,
            "signing secret after whsec_ must be padded base64",
        ),
        (
            "whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("="),
            "signing secret after whsec_ must be padded base64",
        ),
        (
            "whsec_" + SECRET_BODY.replace("a", "-", 1).replace("r", "*", 1),
            "signing secret after whsec_ must be padded base64",
        ),
        # "aGk=" is "hi"; "aGl=" decodes to the same bytes with non-zero
        # padding bits, which a strict parser rejects.
        (
            "whsec_" + SECRET_BODY[:-4] + "aGl=",
            "signing secret after whsec_ must be canonical base64",
        ),
        (
            "whsec_" + base64.b64encode(b"k" * 23).decode(),
            "signing secret must decode to 24 to 64 bytes, got 23 bytes",
        ),
        (
            "whsec_" + base64.b64encode(b"k" * 65).decode(),
            "signing secret must decode to 24 to 64 bytes, got 65 bytes",
        ),
        ("whsec_", "signing secret must decode to 24 to 64 bytes, got 0 bytes"),
    ],
)
def test_secrets_are_parsed_strictly(text: str, message: str) -> None:
    with pytest.raises(SecretError) as caught:
        parse_secret(text)
    assert str(caught.value) == message
    assert SECRET_BODY not in str(caught.value)


def test_the_vector_secrets_parse_to_24_bytes() -> None:
    for vector in VECTORS["valid"]:
        assert len(parse_secret(vector["secret"])) == 24


def test_delivered_requests_verify_during_rotation(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver
) -> None:
    rotating = h.add_endpoint(
        db, receiver.url("/ok"), secret=h.SECRET, old_secrets=(h.OLD_SECRET,)
    )
    rotated = h.add_endpoint(
        db, receiver.url("/ok"), secret=h.SECRET, old_secrets=(h.OLD_SECRET,)
    )
    db.execute(
        "UPDATE webhook_endpoints SET old_secrets_expire_at = now() - interval '1 s'"
        " WHERE id = %s",
        (rotated,),
    )
    [during] = h.add_webhooks(db, rotating, payload={"caf\u00e9": "\u00fcml\u00e4ut"})
    [after] = h.add_webhooks(db, rotated)

    assert h.run(h.worker()).synced == 2

    by_id = {r.headers["webhook-id"]: r for r in receiver.requests()}
    sent = by_id[h.webhook(db, during)["message_id"]]
    assert len(sent.headers["webhook-signature"].split(" ")) == 2
    verify_both(h.SECRET, sent.body, sent.headers)
    verify_both(h.OLD_SECRET, sent.body, sent.headers)
    assert json.loads(sent.body) == {"caf\u00e9": "\u00fcml\u00e4ut"}

    sent = by_id[h.webhook(db, after)["message_id"]]
    assert len(sent.headers["webhook-signature"].split(" ")) == 1
    verify_both(h.SECRET, sent.body, sent.headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(h.OLD_SECRET).verify(sent.body, sent.headers)
