"""`ferry status` and `ferry health` when supervisord is not there."""

from __future__ import annotations

import json
from pathlib import Path

from ferry.runtime.stats import StatsFile, iso, utc_now
from tests.conftest import run_ferry


def write(state_dir: Path) -> None:
    StatsFile(state_dir, "quota-sync").write(
        {
            "worker": "quota-sync",
            "instance": "quota-sync",
            "pid": 4242,
            "version": "0.1.0",
            "state": "waiting",
            "heartbeat_at": iso(utc_now()),
            "last_success_at": iso(utc_now()),
            "last_run_duration_ms": 812,
            "last_run_synced": 1200,
            "errors_in_window": 1,
            "error_budget": 5,
        }
    )


def test_status_still_shows_the_stats_files_and_says_supervisord_is_missing(
    ferry_env: dict[str, str], state_dir: Path, tmp_path: Path
) -> None:
    write(state_dir)
    env = {**ferry_env, "FERRY_RUN_DIR": str(tmp_path / "run")}
    socket = tmp_path / "run" / "supervisor.sock"

    table = run_ferry("status", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == (
        f"supervisord is not reachable at {socket}: No such file or directory;"
        " showing the stats files only"
    )
    row = next(line for line in lines if line.lstrip().startswith("quota-sync"))
    assert row.split() == [
        "quota-sync",
        "?",
        "waiting",
        "0s",
        "ago",
        "812ms",
        "1200",
        "1/5",
        "0s",
    ]

    machine = run_ferry("status", "--json", env=env)
    document = json.loads(machine.stdout)
    assert document["supervisor"] == {
        "socket": str(socket),
        "reachable": False,
        "error": f"supervisord is not reachable at {socket}: No such file or directory",
    }
    (process,) = document["processes"]
    assert process["name"] == "quota-sync"
    assert process["state"] is None
    assert process["stats_last_run_synced"] == 1200
    assert process["stale"] is False


def test_health_fails_without_supervisord(
    ferry_env: dict[str, str], state_dir: Path, tmp_path: Path
) -> None:
    write(state_dir)
    env = {**ferry_env, "FERRY_RUN_DIR": str(tmp_path / "run")}
    done = run_ferry("health", env=env)
    assert done.returncode == 1
    assert done.stdout == (
        f"supervisord is not reachable at {tmp_path / 'run' / 'supervisor.sock'}:"
        " No such file or directory; judging by stats files only\n"
    )
