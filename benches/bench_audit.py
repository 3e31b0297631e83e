"""Audit events per second into Postgres: the worker against a naive loop.

    python -m benches.bench_audit [--events 200000] [--batch 1000]

Starts a private Redis, uses a throwaway database on DATABASE_URL's server,
fills `audit:events` with `--events` good events, and prints, as key=value
lines:

- ferry: one audit worker process's session (XREADGROUP, the core's checks
  and COPY encoding, staging + insert, XACK after commit), timed until every
  event is acknowledged;
- naive: XREAD over the same stream, each entry checked and turned into a
  row in Python (JSON, address and time parsed), one `executemany` insert
  and commit per batch, on an emptied table.

Both are measured in the same run on the same machine, so their ratio is
the figure to compare between commits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import redis

from benches.stores import bench_stores
from ferry.config import CommonSettings
from ferry.runtime import RunContext
from ferry.workers.audit import AuditSettings, AuditWorker

STREAM = "audit:events"
FILL_PIPELINE_EVENTS = 5_000
# How often the watcher checks whether the worker has acknowledged all.
WATCH_S = 0.01

INSERT_SQL = (
    "INSERT INTO audit_log (stream_id, actor_id, action, target_type, target_id,"
    " ip, occurred_at, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
    " ON CONFLICT (stream_id) DO NOTHING"
)


def fill(client: redis.Redis, events: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        fields = {
            "actor_id": f"user{i % 5000}",
            "action": "upload.create",
            "target_type": "upload",
            "target_id": f"up{i}",
            "ip": f"10.{i % 256}.{i // 256 % 256}.7",
            "occurred_at": "2026-03-05T10:00:00.250+01:00",
            "metadata": json.dumps({"size": i * 31, "name": f"file{i}.bin"}),
        }
        pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
        if i % FILL_PIPELINE_EVENTS == FILL_PIPELINE_EVENTS - 1:
            pipe.execute()
    pipe.execute()


def ferry_run(common: CommonSettings, events: int, batch: int) -> float:
    settings = AuditSettings.model_validate(
        {"batch_size": batch, "block_ms": 100, "session_s": 3600}
    )
    worker = AuditWorker(common, settings, consumer="bench-0")
    watcher = redis.Redis.from_url(common.redis_url)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            groups = watcher.xinfo_groups(STREAM)
            done = groups and groups[0]["entries-read"] == events
            if done and groups[0]["pending"] == 0:
                stop.set()
            stop.wait(WATCH_S)

    started = time.perf_counter()
    thread = threading.Thread(target=watch)
    thread.start()
    worker.run_once(RunContext(stop))
    elapsed = time.perf_counter() - started
    thread.join()
    worker.close()
    watcher.close()
    return elapsed


def naive_run(redis_url: str, db_url: str, batch: int) -> float:
    client = redis.Redis.from_url(redis_url)
    started = time.perf_counter()
    last = "0"
    with psycopg.connect(db_url) as conn:
        while True:
            reply = cast(Any, client.xread({STREAM: last}, count=batch))
            if not reply:
                break
            entries = (
                reply[0][1] if isinstance(reply, list) else reply[STREAM.encode()][0]
            )
            rows = [row for entry in entries if (row := naive_row(*entry))]
            with conn.cursor() as cur:
                cur.executemany(INSERT_SQL, rows)
            conn.commit()
            last = entries[-1][0]
    client.close()
    return time.perf_counter() - started


def naive_row(entry_id: bytes, raw: dict[bytes, bytes]) -> tuple[object, ...] | None:
    try:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        metadata = fields.get("metadata") or None
        if metadata is not None and not isinstance(json.loads(metadata), dict):
            return None
        ip = fields.get("ip") or None
        return (
            entry_id.decode(),
            fields["actor_id"],
            fields["action"],
            fields["target_type"],
            fields["target_id"],
            str(ipaddress.ip_address(ip)) if ip else None,
            datetime.fromisoformat(fields["occurred_at"]).astimezone(UTC),
            metadata,
        )
    except (KeyError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    with bench_stores() as (redis_url, db_url):
        client = redis.Redis.from_url(redis_url)
        fill(client, args.events)
        common = CommonSettings.model_validate(
            {"redis_url": redis_url, "database_url": db_url}
        )

        ferry_s = ferry_run(common, args.events, args.batch)
        with psycopg.connect(db_url) as conn:
            stored = conn.execute("SELECT count(*) FROM audit_log").fetchone()
            conn.execute("TRUNCATE audit_log")
        naive_s = naive_run(redis_url, db_url, args.batch)
        ferry_rate = args.events / ferry_s
        naive_rate = args.events / naive_s
        print(
            f"audit_ferry events={args.events} stored={stored[0] if stored else 0}"
            f" batch={args.batch} wall_s={ferry_s:.2f} events_per_s={ferry_rate:.0f}"
        )
        print(
            f"audit_naive events={args.events} batch={args.batch}"
            f" wall_s={naive_s:.2f} events_per_s={naive_rate:.0f}"
            f" speedup={ferry_rate / naive_rate:.1f}x"
        )
        client.close()


if __name__ == "__main__":
    main()
