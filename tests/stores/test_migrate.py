"""`ferry migrate` against a real Postgres: idempotent, and safe in parallel."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from ferry.stores.migrate import migrate, schema_files
from tests.conftest import run_ferry
from tests.servers import throwaway_database


@pytest.fixture
def empty_database() -> Iterator[str]:
    with throwaway_database("ferry_migrate") as url:
        yield url


def test_migrate_applies_every_file_once(empty_database: str) -> None:
    versions = [version for version, _ in schema_files()]
    assert versions == sorted(versions)
    assert versions[0] == "001_quota_usage"
    assert migrate(empty_database) == versions
    assert migrate(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        recorded = conn.execute(
            "SELECT version FROM ferry_schema_migrations ORDER BY version"
        ).fetchall()
    assert [row[0] for row in recorded] == versions


def test_two_migrations_at_once_take_turns(empty_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(migrate(empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    applied = sorted(version for result in results for version in result)
    assert applied == sorted(version for version, _ in schema_files())


def test_migrate_command_reports_what_it_applied(
    empty_database: str, ferry_env: dict[str, str]
) -> None:
    env = {**ferry_env, "DATABASE_URL": empty_database}
    first = run_ferry("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"migrate_done applied={len(schema_files())}" in first.stderr
    again = run_ferry("migrate", env=env)
    assert "migrate_done applied=0 versions=-" in again.stderr


def test_migrate_against_a_dead_server_says_so_in_one_line(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    done = run_ferry("migrate", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("ferry: cannot connect to Postgres:")
    assert len(done.stderr.strip().splitlines()) == 1
