"""`ferry status`, `ferry health` and `ferry health-listener`.

`status` prints one row per process (supervisord's state beside the stats
file's figures) and exits 0 even when supervisord is unreachable, saying so.
`health` prints one line per problem and exits 1 if there is any, 0 if not.
`health-listener` is the supervisord event listener; supervisord runs it.
"""

from __future__ import annotations

import argparse
from typing import Any

from ferry.config import CommonSettings, load
from ferry.health import listener
from ferry.health.report import Report, collect, problems
from ferry.health.settings import HealthSettings
from ferry.health.status import console, render_json, render_table
from ferry.health.supervisor import Supervisor

HEALTHY = 0
UNHEALTHY = 1


def add_parser(sub: Any) -> None:
    """Add the three commands to the `ferry` parser's subparsers."""
    status = sub.add_parser(
        "status", help="one row per process: supervisord state and stats figures"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead")
    status.set_defaults(handler=_status)

    health = sub.add_parser(
        "health",
        help="exit 1 with one line per problem: not RUNNING, stale heartbeat,"
        " error budget nearly spent",
    )
    health.set_defaults(handler=_health)

    watch = sub.add_parser(
        "health-listener",
        help="supervisord event listener restarting workers whose heartbeat is"
        " stale (supervisord runs it)",
    )
    watch.set_defaults(handler=_listener)


def _report(common: CommonSettings, settings: HealthSettings) -> Report:
    supervisor = Supervisor(settings.socket_path, timeout_s=settings.rpc_timeout_s)
    try:
        return collect(
            supervisor, common.state_dir, stale_limit_s=common.heartbeat_stale_s
        )
    finally:
        supervisor.close()


def _status(args: argparse.Namespace, common: CommonSettings) -> int:
    report = _report(common, load(HealthSettings))
    if args.json:
        print(render_json(report))
    else:
        render_table(report, console())
    return 0


def _health(args: argparse.Namespace, common: CommonSettings) -> int:
    settings = load(HealthSettings)
    report = _report(common, settings)
    lines = problems(report, budget_margin_failures=settings.budget_margin_failures)
    for line in lines:
        print(line)
    if lines:
        return UNHEALTHY
    print(f"healthy: {len(report.rows)} processes")
    return HEALTHY


def _listener(args: argparse.Namespace, common: CommonSettings) -> int:
    return listener.run(common, load(HealthSettings))
