"""`ferry`: migrate, run a worker, and read health.

Each subcommand module adds its parser with `add_parser(subparsers)` and
sets a `handler(args) -> int` default; `main` dispatches to it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ferry import __version__
from ferry.cli import health
from ferry.cli import webhooks as webhooks_cli
from ferry.cli.progress import terminal_progress
from ferry.config import (
    CommonSettings,
    all_settings_classes,
    load,
    unknown_variables,
)
from ferry.errors import ConfigError, FerryError
from ferry.logs import configure, kv
from ferry.runtime import EXIT_CONFIG, EXIT_FAILED, Runner
from ferry.stores.migrate import migrate
from ferry.workers import WORKERS, build

logger = logging.getLogger("ferry.cli")

DESCRIPTION = (
    "Ferry's background workers: move counters and audit events from Redis"
    " into Postgres, and deliver signed webhooks. Settings come from the"
    " environment (REDIS_URL, DATABASE_URL, FERRY_*) or the TOML file named"
    " by FERRY_CONFIG."
)

# Modules beside the workers that declare FERRY_ settings.
SETTINGS_MODULES = ("ferry.health.settings", "ferry.demo.data")


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
    parser = argparse.ArgumentParser(prog="ferry", description=DESCRIPTION)
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
    _warn_unknown_variables()
    if not args.once:
        return Runner(worker, common).serve()
    # A manual run can take minutes over millions of keys: show it moving.
    with terminal_progress(args.worker, unit="steps") as advance:
        return Runner(worker, common, on_progress=advance).serve(once=True)


def _warn_unknown_variables() -> None:
    # Every module that declares settings, so that each FERRY_ name is known.
    for module in (*WORKERS.values(), *SETTINGS_MODULES):
        importlib.import_module(module)
    for name, guess in unknown_variables(all_settings_classes()):
        logger.warning(
            "config_unknown_variable %s",
            kv({"name": name, "did_you_mean": guess or "-", "action": "ignored"}),
        )


def _migrate(args: argparse.Namespace, common: CommonSettings) -> int:
    applied = migrate(common.database_url)
    logger.info(
        "migrate_done applied=%d versions=%s", len(applied), ",".join(applied) or "-"
    )
    return 0
