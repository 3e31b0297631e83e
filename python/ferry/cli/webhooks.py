"""`ferry webhooks replay` and `ferry webhooks stats`.

`replay ID` re-queues one failed webhook; `replay --endpoint ID --since TIME`
re-queues every failure of that endpoint since TIME (ISO 8601, or a span
back from now such as 90m, 6h, 2d). A replayed webhook keeps its webhook-id,
so receivers can still drop it if they had it, and starts a new round of
attempts and a new retry window. Only failed webhooks are replayed. Workers
are woken through the Redis wake-up list when it is reachable.

`stats` counts webhooks by status, with the due backlog and disabled
endpoints; `--json` for machines.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
import redis
from rich.console import Console
from rich.table import Table

from ferry.config import CommonSettings, load
from ferry.errors import StoreError
from ferry.stores import postgres
from ferry.stores import redis as redis_store
from ferry.workers.webhooks.settings import WebhooksSettings

STATUSES = ("verifying", "pending", "delivering", "delivered", "failed")
SPAN_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SPAN = re.compile(r"^(\d+)([smhd])$")
EXIT_NOTHING = 1

Conn = psycopg.Connection[tuple[object, ...]]
Rows = list[tuple[Any, ...]]

REPLAY_SET = """
SET status = 'pending', next_attempt_at = now(), attempt_base = attempts,
    first_attempt_at = NULL, updated_at = now()
"""
REPLAY_ONE_SQL = (
    "UPDATE upload_webhooks"
    + REPLAY_SET
    + "WHERE id = %s AND status = 'failed' RETURNING id, endpoint_id"
)
REPLAY_SINCE_SQL = (
    "UPDATE upload_webhooks"
    + REPLAY_SET
    + "WHERE endpoint_id = %s AND status = 'failed' AND updated_at >= %s"
    " RETURNING id, endpoint_id"
)
STATS_SQL = """
SELECT status, count(*),
       count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()),
       count(*) FILTER (WHERE status = 'delivering' AND locked_until <= now()),
       min(next_attempt_at) FILTER (WHERE status = 'pending')
FROM upload_webhooks GROUP BY status
"""


def add_parser(sub: Any) -> None:
    """Add `webhooks replay` and `webhooks stats` to the `ferry` subparsers."""
    hooks = sub.add_parser("webhooks", help="replay failed webhooks; count by status")
    commands = hooks.add_subparsers(dest="webhooks_command", required=True)

    replay = commands.add_parser(
        "replay",
        help="re-queue one failed webhook, or an endpoint's failures since a time",
    )
    replay.add_argument("id", nargs="?", type=int, help="the webhook to replay")
    replay.add_argument("--endpoint", type=int, help="replay this endpoint's failures")
    replay.add_argument(
        "--since",
        type=parse_since,
        help="with --endpoint: failures since TIME (ISO 8601, or 90m, 6h, 2d ago)",
    )
    replay.add_argument(
        "--enable-endpoint",
        action="store_true",
        help="also re-enable the endpoint if it was disabled",
    )
    replay.set_defaults(handler=_replay, parser=replay)

    stats = commands.add_parser("stats", help="webhooks by status, backlog, endpoints")
    stats.add_argument("--json", action="store_true", help="print JSON instead")
    stats.set_defaults(handler=_stats)


def parse_since(text: str) -> datetime:
    """A point in time from ISO 8601 (UTC when no offset) or a span before now.

    Raises `argparse.ArgumentTypeError` naming the accepted forms.
    """
    span = SPAN.match(text.strip())
    if span is not None:
        try:
            seconds = int(span.group(1)) * SPAN_UNITS_S[span.group(2)]
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise argparse.ArgumentTypeError(
                f"--since {text} reaches before year 1; give a shorter span"
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes ISO 8601 (2026-03-01T12:00:00Z) or a span such as"
            f" 90m, 6h, 2d; got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _replay(args: argparse.Namespace, common: CommonSettings) -> int:
    if (args.id is None) == (args.endpoint is None):
        args.parser.error("give either a webhook ID or --endpoint ID with --since")
    if args.endpoint is not None and args.since is None:
        args.parser.error("--endpoint needs --since TIME")
    if args.id is not None and args.since is not None:
        args.parser.error("--since goes with --endpoint, not with a webhook ID")

    with postgres.connect(common.database_url, application="webhooks-cli") as conn:
        rows: Rows
        with conn.transaction():
            if args.id is not None:
                rows = conn.execute(REPLAY_ONE_SQL, (args.id,)).fetchall()
            else:
                rows = conn.execute(
                    REPLAY_SINCE_SQL, (args.endpoint, args.since)
                ).fetchall()
            endpoints = sorted({int(row[1]) for row in cast(Rows, rows)})
            disabled = _disabled(conn, endpoints, enable=args.enable_endpoint)
        if args.id is not None and not rows:
            return _not_replayed(conn, args.id)

    if args.id is not None:
        print(f"replayed webhook {args.id}")
    else:
        print(
            f"replayed {len(rows)} failed webhooks of endpoint {args.endpoint}"
            f" since {args.since.isoformat()}"
        )
    for endpoint_id, reason in disabled:
        if args.enable_endpoint:
            print(f"re-enabled endpoint {endpoint_id} (was disabled: {reason})")
        else:
            print(
                f"endpoint {endpoint_id} is disabled ({reason}); its webhooks will"
                " fail again unless it is re-enabled with --enable-endpoint",
                file=sys.stderr,
            )
    if rows:
        _wake(common)
    return 0 if rows else EXIT_NOTHING


def _disabled(
    conn: Conn, endpoints: list[int], *, enable: bool
) -> list[tuple[int, str]]:
    found = conn.execute(
        "SELECT id, coalesce(disabled_reason, 'no reason recorded')"
        " FROM webhook_endpoints WHERE id = ANY(%s) AND disabled_at IS NOT NULL"
        " ORDER BY id",
        (endpoints,),
    ).fetchall()
    if enable and found:
        conn.execute(
            "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,"
            " failing_since = NULL, updated_at = now() WHERE id = ANY(%s)",
            ([row[0] for row in found],),
        )
    return [(int(row[0]), str(row[1])) for row in cast(Rows, found)]


def _not_replayed(conn: Conn, webhook_id: int) -> int:
    row = conn.execute(
        "SELECT status FROM upload_webhooks WHERE id = %s", (webhook_id,)
    ).fetchone()
    if row is None:
        print(f"ferry: webhook {webhook_id} does not exist", file=sys.stderr)
    else:
        print(
            f"ferry: webhook {webhook_id} is {row[0]}, not failed;"
            " only failed webhooks are replayed",
            file=sys.stderr,
        )
    return EXIT_NOTHING


def _wake(common: CommonSettings) -> None:
    # Best effort: the workers poll Postgres anyway, the push only saves
    # them the wait.
    key = load(WebhooksSettings).wakeup_key
    if not key:
        return
    try:
        client = redis_store.connect(common.redis_url)
        try:
            client.rpush(key, "replay")
        finally:
            client.close()
    except (redis.RedisError, StoreError):
        return


def _stats(args: argparse.Namespace, common: CommonSettings) -> int:
    with postgres.connect(common.database_url, application="webhooks-cli") as conn:
        rows: Rows = conn.execute(STATS_SQL).fetchall()
        endpoints: tuple[Any, ...] | None = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE disabled_at IS NOT NULL)"
            " FROM webhook_endpoints"
        ).fetchone()
        conn.rollback()
    counts = dict.fromkeys(STATUSES, 0)
    due = expired = 0
    next_at: datetime | None = None
    for status, count, due_here, expired_here, next_here in rows:
        counts[str(status)] = int(count)
        due += int(due_here)
        expired += int(expired_here)
        if next_here is not None:
            next_at = next_here
    total, disabled = endpoints if endpoints else (0, 0)
    report: dict[str, Any] = {
        "by_status": counts,
        "due_now": due,
        "leases_expired": expired,
        "next_attempt_at": next_at.isoformat() if next_at else None,
        "endpoints": int(total),
        "endpoints_disabled": int(disabled),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    table = Table(title="webhooks by status")
    table.add_column("status")
    table.add_column("webhooks", justify="right")
    for status, count in counts.items():
        table.add_row(status, str(count))
    console = Console()
    console.print(table)
    console.print(
        f"due now: {due}  leases expired: {expired}  "
        f"endpoints: {total} ({disabled} disabled)",
        highlight=False,
    )
    return 0
