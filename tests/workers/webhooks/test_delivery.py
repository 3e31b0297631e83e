"""One attempt against real loopback servers that answer, fail and misbehave."""

from __future__ import annotations

import asyncio
import ipaddress
import tracemalloc

import httpx

from ferry.workers.webhooks.delivery import (
    EXCERPT_CHARS,
    AttemptResult,
    attempt,
    request_headers,
    response_excerpt,
)
from ferry.workers.webhooks.targets import TargetPolicy
from ferry.workers.webhooks.transport import CheckedTransport
from tests.servers import free_port
from tests.workers.webhooks.receiver import Receiver

LOOPBACK = TargetPolicy((ipaddress.ip_network("127.0.0.0/8"),))
DEADLINE_S = 0.5
CAP_BYTES = 1024


async def _post(url: str, deadline_s: float, cap_bytes: int) -> AttemptResult:
    transport = CheckedTransport(LOOPBACK, max_connections=4)
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False
    ) as client:
        return await attempt(
            client,
            url=url,
            body=b'{"n": 1}',
            headers=request_headers({"webhook-id": "msg_1"}),
            deadline_s=deadline_s,
            body_cap_bytes=cap_bytes,
        )


def post(
    url: str, deadline_s: float = DEADLINE_S, cap_bytes: int = CAP_BYTES
) -> AttemptResult:
    return asyncio.run(_post(url, deadline_s, cap_bytes))


def test_2xx_is_read_whole(receiver: Receiver) -> None:
    result = post(receiver.url("/ok"))
    assert (result.status_code, result.error, result.excerpt) == (200, None, "ok")
    assert result.retry_after_s is None
    [seen] = receiver.requests()
    assert seen.body == b'{"n": 1}'
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["webhook-id"] == "msg_1"


def test_410_is_reported_as_its_status(receiver: Receiver) -> None:
    result = post(receiver.url("/status/410"))
    assert (result.status_code, result.error) == (410, None)
    assert result.describe() == "http 410"


def test_429_carries_its_retry_after(receiver: Receiver) -> None:
    result = post(receiver.url("/status/429?retry_after=120"))
    assert (result.status_code, result.retry_after_s) == (429, 120.0)


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    result = post(receiver.url("/redirect"))
    assert (result.status_code, result.error) == (302, "redirect")
    assert result.describe() == "http 302 redirect: redirects are not followed"
    assert [r.path for r in receiver.requests()] == ["/redirect"]


def test_connection_refused_is_a_connect_error() -> None:
    result = post(f"http://127.0.0.1:{free_port()}/")
    assert (result.status_code, result.error) == (None, "connect")
    assert result.excerpt is None


def test_server_that_never_answers_hits_the_deadline(receiver: Receiver) -> None:
    result = post(receiver.url("/hang"))
    assert (result.status_code, result.error) == (None, "timeout")
    assert result.duration_ms >= DEADLINE_S * 1000 - 20
    assert result.describe() == "timeout: no complete answer within the 0.5 s deadline"


def test_dripping_server_is_cut_off_at_the_overall_deadline(
    receiver: Receiver,
) -> None:
    # One byte every 0.05 s: each read succeeds well inside httpx's own read
    # timeout (the deadline, 0.5 s), so only the overall deadline stops it.
    result = post(receiver.url("/drip?interval=0.05"))
    assert (result.status_code, result.error) == (None, "timeout")
    record = receiver.record
    with record.lock:
        assert not record.drip_finished
        # 78 bytes make the response; about 10 can go out in 0.5 s.
        assert record.drip_bytes_sent < 30


def test_huge_body_is_read_only_up_to_the_cap(receiver: Receiver) -> None:
    size = 512 * 1024 * 1024
    tracemalloc.start()
    try:
        result = post(receiver.url(f"/huge?bytes={size}"), deadline_s=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (result.status_code, result.error) == (200, "body_too_large")
    assert result.excerpt == "x" * EXCERPT_CHARS
    # The client stopped after the cap: what the server got out is the cap
    # plus what the two sockets' buffers hold, nowhere near the body's size.
    with receiver.record.lock:
        assert not receiver.record.huge_finished
        assert receiver.record.huge_bytes_sent < 32 * 1024 * 1024
    # Python-side memory stayed flat: a few read chunks, not the body.
    assert peak < 4 * 1024 * 1024


def test_excerpt_is_short_and_safe_for_postgres() -> None:
    assert response_excerpt(bytearray(b"a\x00b\xff" + b"z" * 2000)) == (
        "a\ufffdb\ufffd" + "z" * (EXCERPT_CHARS - 4)
    )


def test_unknown_host_is_a_dns_error() -> None:
    result = post("http://nonexistent.invalid/")
    assert (result.status_code, result.error) == (None, "dns")
