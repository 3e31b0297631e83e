"""The servers a bench runs against: a private Redis and a throwaway database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ferry.stores.migrate import migrate
from tests.servers import PrivateRedis, throwaway_database


@contextlib.contextmanager
def bench_stores() -> Iterator[tuple[str, str]]:
    """Yield (redis_url, database_url): an empty private Redis and a migrated
    database on DATABASE_URL's server; both are gone afterwards."""
    server = PrivateRedis().start()
    try:
        with throwaway_database("ferry_bench") as url:
            migrate(url)
            yield server.url, url
    finally:
        server.stop()
