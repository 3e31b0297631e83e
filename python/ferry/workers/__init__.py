"""The workers, by the name `ferry run NAME` takes.

Each entry names the module whose `build(common)` returns the worker; modules
are imported only when their worker runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from ferry.config import CommonSettings
from ferry.runtime import Worker

WORKERS: dict[str, str] = {
    "quota-sync": "ferry.workers.quota_sync",
    "daily-rollup": "ferry.workers.daily_rollup",
    "webhooks": "ferry.workers.webhooks",
    "audit": "ferry.workers.audit",
}


def build(name: str, common: CommonSettings) -> Worker:
    """Build the worker `name`; raises KeyError for an unknown name."""
    module = importlib.import_module(WORKERS[name])
    factory = cast(Callable[[CommonSettings], Worker], module.build)
    return factory(common)
