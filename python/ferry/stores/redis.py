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

# Stands in for the value of a key that holds another Redis type, so that
# the log's examples read "invalid value b'WRONGTYPE hash' for key ...".
WRONG_TYPE_PREFIX = b"WRONGTYPE "


def walk(client: Client, match: str, count: int) -> Iterator[Page]:
    """Yield (keys, values) per SCAN page until the cursor comes back to 0.

    Each page's MGET is sent in one pipeline with the next SCAN, so Redis
    answers both in one round trip. Keys may repeat across pages (SCAN's
    documented guarantee is only that keys present throughout are returned at
    least once); the caller deduplicates. Redis errors propagate as
    `StoreError`, and so does a server restart during the walk: a SCAN cursor
    means nothing to a new server, so that walk cannot be called complete.
    """
    try:
        server = _server_run_id(client)
        cursor, keys = client.scan(0, match=match, count=count)
        while True:
            if not keys:
                if cursor == 0:
                    _check_same_server(client, server)
                    return
                cursor, keys = client.scan(cursor, match=match, count=count)
                continue
            if cursor == 0:
                page = _page(keys, client.mget(keys))
                _check_same_server(client, server)
                yield _mark_other_types(client, page)
                return
            pipe = client.pipeline(transaction=False)
            pipe.mget(keys)
            pipe.scan(cursor, match=match, count=count)
            values, (next_cursor, next_keys) = pipe.execute()
            yield _mark_other_types(client, _page(keys, values))
            cursor, keys = next_cursor, next_keys
    except redis.RedisError as exc:
        raise StoreError(f"redis walk of {match!r} failed: {exc}") from exc


def _mark_other_types(client: Client, page: Page) -> Page:
    # MGET answers nil both for a key that vanished and for one that holds a
    # hash, list or other type. Only the first is a missing counter (0); the
    # second is not a counter at all, so it is handed on as a value no
    # counter can have, which the core counts invalid and never writes.
    keys, values = page
    nils = [i for i, value in enumerate(values) if value is None]
    if not nils:
        return page
    pipe = client.pipeline(transaction=False)
    for i in nils:
        pipe.type(keys[i])
    kinds = pipe.execute()
    marked = list(values)
    for i, kind in zip(nils, kinds, strict=True):
        if kind not in (b"none", b"string"):
            marked[i] = WRONG_TYPE_PREFIX + bytes(kind)
    return keys, marked


def _server_run_id(client: Client) -> str:
    info: dict[str, Any] = client.info("server")
    return str(info.get("run_id", ""))


def _check_same_server(client: Client, run_id: str) -> None:
    now = _server_run_id(client)
    if now != run_id:
        raise StoreError(
            f"redis restarted during the walk (run_id {run_id} became {now});"
            " the walk is incomplete and its rows were not written"
        )


def _page(keys: list[Any], values: list[Any]) -> Page:
    # decode_responses=False makes every key and value bytes (or None for a
    # missing value); redis-py's annotations cannot express that.
    return keys, values
