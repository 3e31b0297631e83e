"""daily-rollup over N usage keys (default 1M): cold, steady, and the close.

    python -m benches.bench_rollup [--keys 1000000] [--changed 0.01]
        [--scan-count 500] [--delete]

Starts a private Redis, uses a throwaway database on DATABASE_URL's server,
and prints wall times for:

- cold: the first run into an empty table with an empty memory;
- steady: a run after `--changed` of the counters changed;
- close: the run that closes the day (its grace period over), with the
  removal of its keys after the commit when `--delete` is given.

The keys all belong to one day three days back, kept open by a long grace
period until the closing run. Each figure is one key=value line, so that
runs can be compared between commits.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import redis

from benches.stores import bench_stores
from ferry.config import CommonSettings
from ferry.runtime import RunContext, RunOutcome, Schedule
from ferry.workers.daily_rollup import DailyRollup

METRICS = ("uploads", "bytes", "downloads", "api_calls")
DAY = (datetime.now(UTC) - timedelta(days=3)).date()
# Keeps the bench's day open for the cold and steady runs.
OPEN_GRACE_S = 30 * 86_400.0
FILL_PIPELINE_KEYS = 10_000


def key(i: int) -> str:
    return (
        f"usage:{DAY.isoformat()}:acct{i // len(METRICS)}:{METRICS[i % len(METRICS)]}"
    )


def fill(client: redis.Redis, keys: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(key(i), random.randint(0, 10**9))
        if i % FILL_PIPELINE_KEYS == FILL_PIPELINE_KEYS - 1:
            pipe.execute()
    pipe.execute()


def change(client: redis.Redis, keys: int, fraction: float) -> int:
    picked = random.sample(range(keys), int(keys * fraction))
    pipe = client.pipeline(transaction=False)
    for i in picked:
        pipe.incr(key(i))
    pipe.execute()
    return len(picked)


def timed(worker: DailyRollup) -> tuple[RunOutcome, float]:
    started = time.perf_counter()
    outcome = worker.run_once(RunContext(threading.Event()))
    return outcome, time.perf_counter() - started


def make(
    common: CommonSettings, args: argparse.Namespace, grace_s: float
) -> DailyRollup:
    return DailyRollup(
        common,
        pattern="usage:{day:date}:{account}:{metric}",
        schedule=Schedule(interval_s=300),
        scan_count=args.scan_count,
        close_grace_s=grace_s,
        delete_closed_keys=args.delete,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--scan-count", type=int, default=500)
    parser.add_argument("--delete", action="store_true")
    args = parser.parse_args()

    with bench_stores() as (redis_url, db_url):
        client = redis.Redis.from_url(redis_url)
        fill(client, args.keys)
        common = CommonSettings.model_validate(
            {"redis_url": redis_url, "database_url": db_url}
        )

        worker = make(common, args, OPEN_GRACE_S)
        cold, cold_s = timed(worker)
        changed = change(client, args.keys, args.changed)
        steady, steady_s = timed(worker)
        print(
            f"rollup_cold keys={args.keys} synced={cold.synced} "
            f"scan_count={args.scan_count} wall_s={cold_s:.2f}"
        )
        print(
            f"rollup_steady keys={args.keys} changed={changed} "
            f"synced={steady.synced} wall_s={steady_s:.2f}"
        )

        # The same memory, a grace period now over: the next run closes.
        worker.close_grace = timedelta(0)
        close, close_s = timed(worker)
        worker.close()
        print(
            f"rollup_close keys={args.keys} closed_rows={close.fields['closed_rows']} "
            f"keys_removed={close.fields.get('keys_removed', 0)} wall_s={close_s:.2f}"
        )
        client.close()


if __name__ == "__main__":
    main()
