"""Standard Webhooks signatures.

Each attempt carries `webhook-id` (the same on every attempt),
`webhook-timestamp` (Unix seconds, fresh per attempt) and
`webhook-signature`: space-separated `v1,<base64>` values, the HMAC-SHA256
of `{id}.{timestamp}.{body}` under each secret in force. While a secret
rotates the old ones sign too, so a receiver holding any of them verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ferry.workers.webhooks.errors import SecretError

# The marker every Standard Webhooks secret starts with; not itself a secret.
SECRET_PREFIX = "whsec_"  # noqa: S105
# The Standard Webhooks specification asks for keys of 24 to 64 bytes; a
# shorter key is a truncated secret, a longer one a pasted wrong value.
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64
SIGNATURE_VERSION = "v1"


def parse_secret(text: str) -> bytes:
    """The key of a `whsec_<base64>` secret.

    Strict: the prefix is required, the rest must be canonical padded base64
    (no whitespace, no stray characters, no non-zero padding bits) of 24 to
    64 bytes. Raises `SecretError`, whose message never contains the secret.
    """
    if not text.startswith(SECRET_PREFIX):
        raise SecretError(f"signing secret must start with {SECRET_PREFIX}")
    body = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            f"signing secret after {SECRET_PREFIX} must be padded base64"
        ) from None
    if base64.b64encode(key).decode("ascii") != body:
        raise SecretError(
            f"signing secret after {SECRET_PREFIX} must be canonical base64"
        )
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise SecretError(
            f"signing secret must decode to {SECRET_MIN_BYTES} to "
            f"{SECRET_MAX_BYTES} bytes, got {len(key)} bytes"
        )
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `body` under `key`."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


@dataclass(frozen=True)
class Signer:
    """Signs with the current secret first, then each old one still in force.

    The keys are kept out of `repr`, so a signer in a log line or traceback
    shows no secret.
    """

    keys: tuple[bytes, ...] = field(repr=False)

    @classmethod
    def from_secrets(cls, current: str, old: Iterable[str] = ()) -> Signer:
        """Parse every secret; raises `SecretError` on the first bad one."""
        keys = [parse_secret(current)]
        for secret in old:
            key = parse_secret(secret)
            if key not in keys:
                keys.append(key)
        return cls(tuple(keys))

    def headers(
        self, message_id: str, timestamp: int, body: bytes
    ) -> Mapping[str, str]:
        """The three Standard Webhooks headers for one attempt."""
        signatures = " ".join(
            signature(key, message_id, timestamp, body) for key in self.keys
        )
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
        }
