"""Fixtures: a private Redis per test session, a throwaway Postgres database
on the machine's server, and the environment a worker process needs.

Each test gets an empty Redis and empty Ferry tables. The database is created
on the server named by `DATABASE_URL` (default: the local one) and dropped at
the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import settings

from ferry.stores.migrate import migrate
from tests.servers import PrivateRedis, throwaway_database

settings.register_profile("ferry", deadline=None, print_blob=True)
settings.load_profile("ferry")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: PrivateRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with throwaway_database("ferry_test") as url:
        migrate(url)
        yield url


@pytest.fixture
def database_url(pg_database: str) -> str:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'ferry_schema_migrations'"
        ).fetchall()
        if rows:
            tables = ", ".join(f'"{row[0]}"' for row in rows)
            conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return pg_database


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def ferry_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, database_url: str, state_dir: Path
) -> dict[str, str]:
    """Point this process and child `ferry` processes at the test servers."""
    values = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "FERRY_STATE_DIR": str(state_dir),
        "PYTHONUNBUFFERED": "1",
    }
    for key in list(os.environ):
        if key.startswith("FERRY_") or key == "SUPERVISOR_PROCESS_NAME":
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


def ferry_cmd(*args: str) -> list[str]:
    """The command line that runs `ferry ARGS` with this interpreter."""
    return [sys.executable, "-m", "ferry", *args]


def run_ferry(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `ferry ARGS` to completion and capture its output."""
    return subprocess.run(
        ferry_cmd(*args),
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
