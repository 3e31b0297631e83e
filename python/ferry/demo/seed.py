"""Fill an empty keyspace with the demo: `python -m ferry.demo.seed`.

Writes `quota:{account}:{metric}` for every demo account and metric
(100,000 by 4 by default, `FERRY_DEMO_ACCOUNTS`), skewed values, daily usage
for today and yesterday for a tenth of the accounts, and a handful of keys
and values that quota-sync must skip and count: too many or empty segments,
bytes that are not UTF-8, a NUL byte; values with a sign, spaces, leading
zeros, a fraction, letters, or beyond 64 bits.

A keyspace that already holds `quota:*` keys is left alone (exit 0, one log
line) unless `--force` is given. Keys go out with MSET in pipelines of many
commands, so 400,000 keys take a couple of seconds. A progress bar is drawn
when stderr is a terminal; otherwise the only output is the summary line.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice

import redis

from ferry.cli.progress import terminal_progress
from ferry.config import CommonSettings, load
from ferry.demo.data import METRICS, DemoSettings, account_id, counter_value
from ferry.errors import ConfigError, StoreError
from ferry.logs import configure, kv
from ferry.stores import redis as redis_store

# Keys per MSET, and MSETs per pipeline round trip: 1,000 keys is a command
# of tens of kilobytes, and 20 of them keep Redis busy without a huge reply.
KEYS_PER_MSET = 1000
MSETS_PER_ROUND_TRIP = 20
# Daily usage is seeded for this share of the accounts, today and yesterday.
USAGE_SHARE = 0.1
USAGE_DAYS = 2

# Keys quota-sync must count as malformed, one per rule.
BAD_KEYS: dict[bytes, bytes] = {
    b"quota:acct_bad:uploads:extra": b"1",
    b"quota::uploads": b"2",
    b"quota:acct_bad:": b"3",
    b"quota:only-one-segment": b"4",
    b"quota:acct_\xff\xfe:uploads": b"5",
    b"quota:acct_\x00nul:uploads": b"6",
}
# Values quota-sync must count as invalid, each on a key of its own.
BAD_VALUES: dict[bytes, bytes] = {
    b"quota:acct_badval01:uploads": b"+7",
    b"quota:acct_badval02:uploads": b" 42",
    b"quota:acct_badval03:uploads": b"007",
    b"quota:acct_badval04:uploads": b"1.5",
    b"quota:acct_badval05:uploads": b"12abc",
    b"quota:acct_badval06:uploads": b"9223372036854775808",
    b"quota:acct_badval07:uploads": b"-",
}

logger = logging.getLogger("ferry.demo.seed")


def demo_pairs(
    rng: random.Random, accounts: int, today: datetime
) -> Iterator[tuple[str, int]]:
    """Every good key of the demo with its value."""
    for number in range(1, accounts + 1):
        account = account_id(number)
        for metric in METRICS:
            yield f"quota:{account}:{metric}", counter_value(rng, metric)
    days = [(today - timedelta(days=back)).date() for back in range(USAGE_DAYS)]
    for number in range(1, int(accounts * USAGE_SHARE) + 1):
        account = account_id(number)
        for day in days:
            for metric in METRICS:
                value = counter_value(rng, metric) // 30
                yield f"usage:{day.isoformat()}:{account}:{metric}", value


def is_empty(client: redis.Redis) -> bool:
    """True when no `quota:*` key exists."""
    return next(client.scan_iter(match="quota:*", count=1000), None) is None


def key_count(accounts: int) -> int:
    """How many keys `seed` writes for `accounts` accounts."""
    usage_accounts = int(accounts * USAGE_SHARE)
    good = (accounts + usage_accounts * USAGE_DAYS) * len(METRICS)
    return good + len(BAD_KEYS) + len(BAD_VALUES)


def seed(client: redis.Redis, accounts: int, *, rng: random.Random) -> int:
    """Write the demo keyspace; return the number of keys written."""
    pairs = demo_pairs(rng, accounts, datetime.now(UTC))
    with terminal_progress("seeding", total=key_count(accounts)) as advance:
        pipe = client.pipeline(transaction=False)
        pending = 0
        while chunk := dict(islice(pairs, KEYS_PER_MSET)):
            pipe.mset(chunk)
            pending += len(chunk)
            if len(pipe) == MSETS_PER_ROUND_TRIP:
                pipe.execute()
                advance(pending)
                pending = 0
        pipe.mset({**BAD_KEYS, **BAD_VALUES})
        pipe.execute()
        advance(pending + len(BAD_KEYS) + len(BAD_VALUES))
    return key_count(accounts)


def main(argv: list[str] | None = None) -> int:
    """Seed if empty (or with --force); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m ferry.demo.seed")
    parser.add_argument("--force", action="store_true", help="seed even if not empty")
    parser.add_argument(
        "--random-seed", type=int, default=1, help="for repeatable values"
    )
    args = parser.parse_args(argv)
    try:
        common = load(CommonSettings)
        demo = load(DemoSettings)
    except ConfigError as exc:
        sys.stderr.write(f"ferry demo seed: configuration error: {exc}\n")
        return 2
    configure(common.log_level)

    client = redis_store.connect(common.redis_url)
    try:
        if not args.force and not is_empty(client):
            logger.info("seed_skipped %s", kv({"reason": "keyspace_not_empty"}))
            return 0
        started = time.monotonic()
        keys = seed(client, demo.accounts, rng=random.Random(args.random_seed))
    except (redis.RedisError, StoreError) as exc:
        logger.error("seed_failed %s", kv({"error": exc}))
        return 1
    finally:
        client.close()
    logger.info(
        "seed_done %s",
        kv(
            {
                "accounts": demo.accounts,
                "keys": keys,
                "bad_keys": len(BAD_KEYS),
                "bad_values": len(BAD_VALUES),
                "duration_ms": round((time.monotonic() - started) * 1000),
            }
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
