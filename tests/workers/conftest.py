"""Fixtures the worker tests share: workers built from the environment, as
`ferry run` builds them, and closed when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ferry.config import CommonSettings, load
from ferry.workers import daily_rollup, quota_sync
from ferry.workers.counter_sync import CounterSync
from ferry.workers.daily_rollup import DailyRollup

RollupFactory = Callable[[], DailyRollup]


@pytest.fixture
def worker(ferry_env: dict[str, str]) -> Iterator[CounterSync]:
    """A quota-sync worker on the test servers."""
    sync = quota_sync.build(load(CommonSettings))
    yield sync
    sync.close()


@pytest.fixture
def make_rollup(ferry_env: dict[str, str]) -> Iterator[RollupFactory]:
    """Builds daily-rollup workers on the test servers; closes them all."""
    built: list[DailyRollup] = []

    def make() -> DailyRollup:
        rollup = daily_rollup.build(load(CommonSettings))
        built.append(rollup)
        return rollup

    yield make
    for rollup in built:
        rollup.close()
