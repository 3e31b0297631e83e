"""`python -m ferry.demo.seed` against the test Redis, and quota-sync over it."""

from __future__ import annotations

import re
import subprocess
import sys

import redis

from ferry.demo.seed import BAD_KEYS, BAD_VALUES, key_count
from tests.cli.terminal import run_on_terminal
from tests.conftest import REPO, run_ferry

ACCOUNTS = 500


def seed(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.demo.seed"],
        env={**env, "FERRY_DEMO_ACCOUNTS": str(ACCOUNTS)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_seed_fills_an_empty_keyspace_once_and_quietly(
    ferry_env: dict[str, str], rclient: redis.Redis
) -> None:
    first = seed(ferry_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    # Not a terminal: the summary line and nothing else.
    assert re.fullmatch(
        r"\S+ \S+ INFO ferry.demo.seed seed_done accounts=500 keys=2413"
        r" bad_keys=6 bad_values=7 duration_ms=\d+\n",
        first.stderr,
    ), first.stderr
    assert rclient.dbsize() == key_count(ACCOUNTS) == 2413
    quota = list(rclient.scan_iter(match="quota:acct_000*", count=1000))
    assert len(quota) == ACCOUNTS * 4
    values = sorted(int(v) for v in rclient.mget(quota))  # type: ignore[arg-type]
    # Skewed: the largest counters dwarf the median one.
    assert values[-1] > 50 * values[len(values) // 2]

    again = seed(ferry_env)
    assert again.returncode == 0
    assert "seed_skipped reason=keyspace_not_empty" in again.stderr
    assert rclient.dbsize() == 2413


def test_quota_sync_skips_and_counts_every_bad_key_and_value_of_the_seed(
    ferry_env: dict[str, str], rclient: redis.Redis
) -> None:
    assert seed(ferry_env).returncode == 0
    done = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if "run_done" in x)
    assert f" synced={ACCOUNTS * 4} " in line
    assert f" invalid={len(BAD_VALUES)} " in line
    assert f" malformed={len(BAD_KEYS)} " in line


def test_seed_draws_a_progress_bar_on_a_terminal(
    ferry_env: dict[str, str], rclient: redis.Redis
) -> None:
    code, text = run_on_terminal(
        [sys.executable, "-m", "ferry.demo.seed"],
        {**ferry_env, "FERRY_DEMO_ACCOUNTS": "20000"},
    )
    assert code == 0
    assert "seeding" in text
    assert "96013/96013" in text
    assert "seed_done accounts=20000" in text
