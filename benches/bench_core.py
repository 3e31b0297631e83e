"""pytest-benchmark suite for the Rust core against the plain-Python reference.

    pytest benches/bench_core.py --benchmark-enable

Each case parses and encodes one page of quota keys as quota-sync does: a
page of 500 keys (one SCAN COUNT 500 page) and one of 100k keys (a tenth of
the 1M-key sync that benches/sync_1m.py measures end to end). "new" is a
first run, where every key is written; "unchanged" is the steady state,
where every value equals the remembered one and no row is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ferry import _core
from tests.core import reference

TEMPLATE = "quota:{account}:{metric}"
METRICS = ("uploads", "bytes", "api_calls", "webhooks")
PAGE_SIZES = (500, 100_000)

# Enough rounds for a stable median in a few seconds per case on the 2-core
# machine, where the reference takes about 0.3 s per 100k-key page.
SMALL_PAGE_ROUNDS = 200
LARGE_PAGE_ROUNDS = 8


class Counts(Protocol):
    """The part of a page result these benches check."""

    @property
    def rows(self) -> int: ...
    @property
    def unchanged(self) -> int: ...


class Sync(Protocol):
    """What the core and the reference have in common for these benches."""

    def begin_run(self) -> None: ...
    def commit_run(self) -> None: ...
    def encode_page(self, keys: list[bytes], values: list[bytes | None]) -> Counts: ...


Args = tuple[tuple[Sync, list[bytes], list[bytes | None]], dict[str, object]]


def page(size: int) -> tuple[list[bytes], list[bytes | None]]:
    """`size` distinct keys with integer values, as redis-py returns them."""
    keys = [
        f"quota:acct_{i // len(METRICS):07d}:{METRICS[i % len(METRICS)]}".encode()
        for i in range(size)
    ]
    values: list[bytes | None] = [str(i * 37 % 1_000_003).encode() for i in range(size)]
    return keys, values


def make_sync(implementation: str) -> Sync:
    if implementation == "core":
        return _core.CounterSync(_core.KeyPattern(TEMPLATE))
    return reference.ReferenceSync(TEMPLATE)


def measure(
    benchmark: BenchmarkFixture, setup: Callable[[], Args], size: int
) -> Counts:
    """Time `encode_page` on the arguments `setup` makes fresh for each round."""
    rounds = SMALL_PAGE_ROUNDS if size <= 1_000 else LARGE_PAGE_ROUNDS
    pedantic = cast(Callable[..., Counts], benchmark.pedantic)
    return pedantic(encode, setup=setup, rounds=rounds)


def encode(sync: Sync, keys: list[bytes], values: list[bytes | None]) -> Counts:
    return sync.encode_page(keys, values)


@pytest.mark.parametrize("size", PAGE_SIZES)
@pytest.mark.parametrize("implementation", ["core", "reference"])
def test_encode_new_page(
    benchmark: BenchmarkFixture, implementation: str, size: int
) -> None:
    keys, values = page(size)

    def first_run() -> Args:
        sync = make_sync(implementation)
        sync.begin_run()
        return (sync, keys, values), {}

    assert measure(benchmark, first_run, size).rows == size


@pytest.mark.parametrize("size", PAGE_SIZES)
@pytest.mark.parametrize("implementation", ["core", "reference"])
def test_encode_unchanged_page(
    benchmark: BenchmarkFixture, implementation: str, size: int
) -> None:
    keys, values = page(size)
    sync = make_sync(implementation)
    sync.begin_run()
    sync.encode_page(keys, values)
    sync.commit_run()

    def next_run() -> Args:
        sync.begin_run()
        return (sync, keys, values), {}

    assert measure(benchmark, next_run, size).unchanged == size
