"""`ferry`: migrate, run a worker, and read health.

Each subcommand module adds its parser with `add_parser(subparsers)` and
sets a `handler(args) -> int` default; `main` dispatches to it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ferry import __version__
from ferry.cli import health
from ferry.cli import webhooks as webhooks_cli
from ferry.cli.progress import terminal_progress
from ferry.config import CommonSettings, load
from ferry.errors import ConfigError, FerryError
from ferry.logs import configure
from ferry.runtime import EXIT_CONFIG, EXIT_FAILED, Runner
from ferry.stores.migrate import migrate
from ferry.workers import WORKERS, build

logger = logging.getLogger("ferry.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        common = load(CommonSettings)
    except ConfigError as exc:
        print(f"ferry: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(common.log_level)
    try:
        code: int = args.handler(args, common)
    except ConfigError as exc:
        print(f"ferry: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FerryError as exc:
        print(f"ferry: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one worker under the shared runtime")
    run.add_argument("worker", choices=sorted(WORKERS))
    run.add_argument(
        "--once",
        action="store_true",
        help="one run now, no startup delay; exit status tells success",
    )
    run.set_defaults(handler=_run)

    mig = sub.add_parser("migrate", help="create or update the schema (idempotent)")
    mig.set_defaults(handler=_migrate)
    health.add_parser(sub)
    webhooks_cli.add_parser(sub)
    return parser


def _run(args: argparse.Namespace, common: CommonSettings) -> int:
    worker = build(args.worker, common)
    if not args.once:
        return Runner(worker, common).serve()
    # A manual run can take minutes over millions of keys: show it moving.
    with terminal_progress(args.worker, unit="steps") as advance:
        return Runner(worker, common, on_progress=advance).serve(once=True)


def _migrate(args: argparse.Namespace, common: CommonSettings) -> int:
    applied = migrate(common.database_url)
    logger.info(
        "migrate_done applied=%d versions=%s", len(applied), ",".join(applied) or "-"
    )
    return 0
