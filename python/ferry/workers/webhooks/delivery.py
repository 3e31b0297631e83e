"""One HTTP attempt: POST the signed body, read a bounded answer, classify it.

httpx's timeouts are per operation (a read timeout restarts with each
chunk), so a server that drips one byte at a time would never trip them.
Each attempt therefore runs under one overall deadline that covers
resolution, connection, sending, the status line and the body. The body is
streamed and read only up to a cap; past it the connection is dropped, so a
huge answer costs the cap in memory, not its size. Redirects are not
followed.

Once the status line has arrived it decides the outcome: a 200 whose body
overruns the cap or the deadline is still delivered, with the overrun noted
as the attempt's error kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import httpx

from ferry import __version__
from ferry.runtime.stats import utc_now
from ferry.workers.webhooks.errors import WebhookError
from ferry.workers.webhooks.schedule import parse_retry_after
from ferry.workers.webhooks.targets import parse_url
from ferry.workers.webhooks.transport import POOL_EXTENSION

USER_AGENT = f"ferry-webhooks/{__version__}"
# Kept per attempt: enough for an error page's title or a JSON error, small
# enough that millions of attempt rows stay cheap.
EXCERPT_CHARS = 500
# The longest `detail` kept; it lands in upload_webhooks.last_error.
DETAIL_MAX_CHARS = 300
REDIRECT_STATUSES = range(300, 400)


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt came to.

    `status_code` is None when no response arrived; `error` is then the
    kind of failure (timeout, connect, dns, refused_target, protocol,
    network, bad_url, bad_secret). Beside a status code, `error` notes
    redirect, body_too_large or body_timeout. `detail` is a one-line
    explanation for operators; neither carries a secret nor the URL.
    """

    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    retry_after_s: float | None = None
    detail: str | None = None

    def describe(self) -> str:
        """A short text for `last_error`: the status or kind, and the detail."""
        head = f"http {self.status_code}" if self.status_code is not None else ""
        if self.error is not None:
            head = f"{head} {self.error}".strip()
        if self.detail:
            head = f"{head}: {self.detail}"
        return head[:DETAIL_MAX_CHARS]


def request_headers(signature_headers: Mapping[str, str]) -> dict[str, str]:
    """Every header of an attempt: content type, identity, and the signature."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Compressed answers would have to be inflated to be excerpted, and a
        # small compressed body can inflate to any size.
        "accept-encoding": "identity",
        **signature_headers,
    }


def failed_before_sending(error: WebhookError) -> AttemptResult:
    """The result of an attempt that could not be made (bad secret or URL)."""
    return AttemptResult(
        started_at=utc_now(),
        duration_ms=0,
        error=error.kind,
        detail=str(error),
    )


async def attempt(
    client: httpx.AsyncClient,
    *,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    deadline_s: float,
    body_cap_bytes: int,
    pool: object = None,
) -> AttemptResult:
    """POST `body` to `url` once, within `deadline_s`, and say what happened.

    `pool` names the connection pool to use (see `CheckedTransport`). Never
    raises for anything the receiver or the network does; the result carries
    it. Cancellation (shutdown) propagates to the caller.
    """
    started_at = utc_now()
    started = time.monotonic()
    response: httpx.Response | None = None
    received = bytearray()
    error: str | None = None
    detail: str | None = None

    try:
        async with asyncio.timeout(deadline_s):
            target = parse_url(url)
            request = client.build_request(
                "POST",
                target,
                content=body,
                headers=headers,
                extensions={POOL_EXTENSION: pool},
            )
            response = await client.send(request, stream=True)
            try:
                overflow = await _read_capped(response, received, body_cap_bytes)
            finally:
                await response.aclose()
            if overflow:
                error = "body_too_large"
    except TimeoutError:
        error = "timeout" if response is None else "body_timeout"
        detail = f"no complete answer within the {deadline_s:g} s deadline"
    except WebhookError as exc:
        error, detail = exc.kind, str(exc)
    except httpx.HTTPError as exc:
        error, detail = _kind(exc), _first_line(exc)

    status = response.status_code if response is not None else None
    if status in REDIRECT_STATUSES:
        error = "redirect"
        detail = "redirects are not followed"
    retry_after = None
    if response is not None:
        retry_after = parse_retry_after(response.headers.get("retry-after"), utc_now())
    return AttemptResult(
        started_at=started_at,
        duration_ms=round((time.monotonic() - started) * 1000),
        status_code=status,
        error=error,
        excerpt=response_excerpt(received) if response is not None else None,
        retry_after_s=retry_after,
        detail=detail,
    )


async def _read_capped(
    response: httpx.Response, into: bytearray, cap_bytes: int
) -> bool:
    """Read the raw body into `into` up to `cap_bytes`; True if there was more."""
    async for chunk in response.aiter_raw():
        room = cap_bytes - len(into)
        if len(chunk) > room:
            into += chunk[:room]
            return True
        into += chunk
    return False


def response_excerpt(body: bytearray) -> str:
    """The first EXCERPT_CHARS characters of `body`, fit for a text column.

    Bytes that are not UTF-8 and NUL (which Postgres text cannot hold)
    become U+FFFD.
    """
    text = bytes(body[: EXCERPT_CHARS * 4]).decode("utf-8", "replace")
    return text[:EXCERPT_CHARS].replace("\x00", "\ufffd")


def _kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "bad_url"
    if isinstance(exc, httpx.ProtocolError):
        return "protocol"
    return "network"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:DETAIL_MAX_CHARS]
