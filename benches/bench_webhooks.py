"""Webhook deliveries per second for one worker process.

    python -m benches.bench_webhooks [--webhooks 5000] [--endpoints 100]

Uses a throwaway database on DATABASE_URL's server and a loopback receiver
in its own process (so that its CPU is not the worker's), and prints one
key=value line per scenario:

- `all_ok`: every endpoint answers 200 at once;
- `tenth_hanging`: one endpoint in ten accepts the connection and never
  answers, so each attempt to it lasts the whole attempt deadline.

For each: the deliveries per second to the answering endpoints (counted up
to the last of their deliveries), and the wall time of the run, which for
`tenth_hanging` includes the hanging attempts running out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from ferry.config import CommonSettings
from ferry.runtime import RunContext
from ferry.stores.migrate import migrate
from ferry.workers.webhooks import WebhooksSettings, WebhooksWorker
from tests.servers import throwaway_database
from tests.workers.webhooks.helpers import SECRET
from tests.workers.webhooks.receiver import Receiver

ADMIN_URL = os.environ.get(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEADLINE_S = 2.0


def serve(pipe: Connection) -> None:
    """Child process: run a receiver, send its port, serve until told."""
    receiver = Receiver().start()
    pipe.send(receiver.port)
    pipe.recv()
    receiver.stop()


def fill(url: str, port: int, webhooks: int, endpoints: int, hanging: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_attempts, upload_webhooks, webhook_endpoints")
        for n in range(endpoints):
            path = "/hang" if n < hanging else "/ok"
            conn.execute(
                "INSERT INTO webhook_endpoints (id, account_id, url, secret)"
                " VALUES (%s, 'bench', %s, %s)",
                (n + 1, f"http://127.0.0.1:{port}{path}?e={n}", SECRET),
            )
        # Interleave endpoints in due order, as a real backlog would be.
        conn.execute(
            "INSERT INTO upload_webhooks"
            " (endpoint_id, event_type, payload, next_attempt_at)"
            " SELECT i %% %s + 1, 'upload.completed',"
            " jsonb_build_object('upload', 'u' || i, 'size', i * 1000),"
            " now() - interval '1 hour' + i * interval '1 ms'"
            " FROM generate_series(1, %s) AS i",
            (endpoints, webhooks),
        )


def scenario(
    name: str, url: str, port: int, webhooks: int, endpoints: int, hanging: int
) -> None:
    fill(url, port, webhooks, endpoints, hanging)
    common_values: dict[str, Any] = {"database_url": url}
    common = CommonSettings(**common_values)
    overrides: dict[str, Any] = {
        "allow_networks": "127.0.0.0/8",
        "wakeup_key": "",
        "attempt_deadline_s": DEADLINE_S,
    }
    settings = WebhooksSettings(**overrides)
    worker = WebhooksWorker(common, settings)
    started = time.monotonic()
    outcome = worker.run_once(RunContext(threading.Event()))
    wall_s = time.monotonic() - started

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*),"
            " extract(epoch FROM max(delivered_at) - min(first_attempt_at))"
            " FROM upload_webhooks WHERE status = 'delivered'"
        ).fetchone()
    assert row is not None
    delivered, span_s = int(row[0]), float(row[1] or 0.0)
    print(
        f"bench=webhooks scenario={name} webhooks={webhooks} endpoints={endpoints}"
        f" hanging_endpoints={hanging} deadline_s={DEADLINE_S:g}"
        f" delivered={delivered} claimed={outcome.fields['claimed']}"
        f" deliveries_per_s={delivered / span_s if span_s else 0:.0f}"
        f" run_wall_s={wall_s:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=100)
    args = parser.parse_args()

    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(target=serve, args=(theirs,))
    child.start()
    try:
        with throwaway_database("ferry_bench") as url:
            migrate(url)
            port = ours.recv()
            scenario("all_ok", url, port, args.webhooks, args.endpoints, 0)
            scenario(
                "tenth_hanging",
                url,
                port,
                args.webhooks,
                args.endpoints,
                args.endpoints // 10,
            )
    finally:
        ours.send("stop")
        child.join(10)


if __name__ == "__main__":
    main()
