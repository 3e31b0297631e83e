"""Redis connections and the SCAN + MGET walk of a keyspace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ferry.errors import StoreError

# A reply slower than this means Redis is stuck; the run fails and is retried.
SOCKET_TIMEOUT_S = 30
# redis-py retries a dropped connection this many times, backing off, before
# the error reaches the run.
RETRIES = 3

Client = redis.Redis


def connect(url: str) -> Client:
    """A client returning bytes, retrying dropped connections with backoff.

    Raises `StoreError` when the URL cannot be used.
    """
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise StoreError(f"REDIS_URL cannot be used: {exc}") from exc


Page = tuple[list[bytes], list[bytes | None]]


def walk(client: Client, match: str, count: int) -> Iterator[Page]:
    """Yield (keys, values) per SCAN page until the cursor comes back to 0.

    Each page's MGET is sent in one pipeline with the next SCAN, so Redis
    answers both in one round trip. Keys may repeat across pages (SCAN's
    documented guarantee is only that keys present throughout are returned at
    least once); the caller deduplicates. Redis errors propagate as
    `StoreError`.
    """
    try:
        cursor, keys = client.scan(0, match=match, count=count)
        while True:
            if not keys:
                if cursor == 0:
                    return
                cursor, keys = client.scan(cursor, match=match, count=count)
                continue
            if cursor == 0:
                yield _page(keys, client.mget(keys))
                return
            pipe = client.pipeline(transaction=False)
            pipe.mget(keys)
            pipe.scan(cursor, match=match, count=count)
            values, (next_cursor, next_keys) = pipe.execute()
            yield _page(keys, values)
            cursor, keys = next_cursor, next_keys
    except redis.RedisError as exc:
        raise StoreError(f"redis walk of {match!r} failed: {exc}") from exc


def _page(keys: list[Any], values: list[Any]) -> Page:
    # decode_responses=False makes every key and value bytes (or None for a
    # missing value); redis-py's annotations cannot express that.
    return keys, values
