"""The runtime every worker shares: schedule, guard, shutdown, budget, stats.

A worker supplies `Worker.run_once` and its own counters; `Runner` does the
rest (see `ferry.runtime.runner`).
"""

from __future__ import annotations

from ferry.runtime.runner import (
    EXIT_BUDGET,
    EXIT_CONFIG,
    EXIT_DEADLINE,
    EXIT_FAILED,
    EXIT_OK,
    Runner,
)
from ferry.runtime.worker import RunContext, RunOutcome, Schedule, Worker

__all__ = [
    "EXIT_BUDGET",
    "EXIT_CONFIG",
    "EXIT_DEADLINE",
    "EXIT_FAILED",
    "EXIT_OK",
    "RunContext",
    "RunOutcome",
    "Runner",
    "Schedule",
    "Worker",
]
