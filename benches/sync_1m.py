"""End-to-end quota-sync over N keys (default 1M): cold, steady, and naive.

    python -m benches.sync_1m [--keys 1000000] [--changed 0.01] [--scan-count 500]

Starts a private Redis, uses a throwaway database on DATABASE_URL's server,
and prints wall times for:

- cold: the first run into an empty table with an empty memory;
- steady: a run after `--changed` of the counters changed;
- naive: a direct port of the original loop (SCAN page, MGET, rows built in
  Python, one `executemany` upsert and commit per page), on the same keys.

The figures are printed as one key=value line each so that they can be
compared between commits.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from datetime import UTC, datetime

import psycopg
import redis

from benches.stores import bench_stores
from ferry.config import CommonSettings
from ferry.runtime import RunContext, Schedule
from ferry.stores import redis as redis_store
from ferry.workers import quota_sync
from ferry.workers.counter_sync import CounterSync

METRICS = ("uploads", "bytes", "downloads", "api_calls")


def fill(client: redis.Redis, keys: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(
            f"quota:acct{i // len(METRICS)}:{METRICS[i % len(METRICS)]}",
            random.randint(0, 10**9),
        )
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def change(client: redis.Redis, keys: int, fraction: float) -> int:
    picked = random.sample(range(keys), int(keys * fraction))
    pipe = client.pipeline(transaction=False)
    for i in picked:
        pipe.incr(f"quota:acct{i // len(METRICS)}:{METRICS[i % len(METRICS)]}")
    pipe.execute()
    return len(picked)


def naive(redis_url: str, db_url: str, scan_count: int) -> float:
    client = redis.Redis.from_url(redis_url)
    started = time.perf_counter()
    with psycopg.connect(db_url) as conn:
        now = datetime.now(UTC)
        for keys, values in redis_store.walk(client, "quota:*", scan_count):
            batch = []
            for key, value in zip(keys, values, strict=True):
                _, account, metric = key.decode().split(":")
                batch.append((account, metric, int(value or 0), now))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO quota_usage (account_id, metric, used, synced_at)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (account_id, metric)"
                    " DO UPDATE SET used = excluded.used,"
                    " synced_at = excluded.synced_at",
                    batch,
                )
            conn.commit()
    client.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--scan-count", type=int, default=500)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    with bench_stores() as (redis_url, db_url):
        client = redis.Redis.from_url(redis_url)
        fill(client, args.keys)
        common = CommonSettings.model_validate(
            {"redis_url": redis_url, "database_url": db_url}
        )
        worker = CounterSync(
            quota_sync.NAME,
            common,
            pattern="quota:{account}:{metric}",
            table=quota_sync.TABLE,
            schedule=Schedule(interval_s=60),
            scan_count=args.scan_count,
        )
        ctx = RunContext(threading.Event())

        started = time.perf_counter()
        cold = worker.run_once(ctx)
        cold_s = time.perf_counter() - started
        changed = change(client, args.keys, args.changed)
        started = time.perf_counter()
        steady = worker.run_once(ctx)
        steady_s = time.perf_counter() - started
        worker.close()
        print(
            f"sync_cold keys={args.keys} synced={cold.synced} "
            f"scan_count={args.scan_count} wall_s={cold_s:.2f}"
        )
        print(
            f"sync_steady keys={args.keys} changed={changed} "
            f"synced={steady.synced} wall_s={steady_s:.2f}"
        )

        if not args.skip_naive:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("TRUNCATE quota_usage")
            naive_s = naive(redis_url, db_url, args.scan_count)
            print(
                f"naive_cold keys={args.keys} wall_s={naive_s:.2f} "
                f"speedup={naive_s / cold_s:.1f}x"
            )
        client.close()


if __name__ == "__main__":
    main()
