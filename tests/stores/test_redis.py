"""The SCAN + MGET walk against a real Redis."""

from __future__ import annotations

import redis

from ferry.stores.redis import walk


def test_walk_returns_every_key_with_its_value(rclient: redis.Redis) -> None:
    rclient.mset({f"quota:a{i}:m": i for i in range(1234)})
    rclient.set("other:key", 1)
    seen: dict[bytes, bytes | None] = {}
    for keys, values in walk(rclient, "quota:*", 100):
        assert len(keys) == len(values)
        seen.update(zip(keys, values, strict=True))
    assert len(seen) == 1234
    assert seen[b"quota:a7:m"] == b"7"


def test_walk_of_an_empty_keyspace_yields_nothing(rclient: redis.Redis) -> None:
    assert list(walk(rclient, "quota:*", 500)) == []


def test_keys_of_other_types_are_marked_not_missing(rclient: redis.Redis) -> None:
    rclient.hset("quota:h:m", "f", "1")
    rclient.set("quota:s:m", "2")
    (page,) = list(walk(rclient, "quota:*", 500))
    found = dict(zip(*page, strict=True))
    assert found == {b"quota:h:m": b"WRONGTYPE hash", b"quota:s:m": b"2"}
