"""The repository's supervisord.conf under a real supervisord.

Each test starts supervisord with the file unchanged (plus, where a test
needs it, an override of one program, as an operator would add one) against
the test Redis and Postgres, with short schedules.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import redis

from ferry.runtime.stats import read
from tests.conftest import run_ferry
from tests.supervision.stack import PROCESSES, WORKER_PROCESSES, Stack

StartStack = Callable[..., Stack]

# The listener ticks every 5 s and calls a heartbeat stale after 4 s here;
# a restart also waits for startsecs (5 s) before the new process counts.
RESTART_TIMEOUT_S = 30.0
# supervisord.conf's stopwaitsecs: past this supervisord would SIGKILL.
STOPWAITSECS = 30
# startretries=3 with backoffs of 1, 2 and 3 s, each start failing fast.
FATAL_TIMEOUT_S = 40.0
# How long the stop test keeps quota-sync's run waiting after the stop: well
# inside the shutdown deadline, and short of the heartbeat limit (4 s).
RUN_HELD_S = 1.5
# A run whose heartbeat is this old is waiting on the lock, not walking.
BLOCKED_S = 0.5
# How long `ferry status` waits on a supervisord that does not answer, here.
HUNG_RPC_TIMEOUT_S = 2.0
# Importing Ferry and reading its settings, on a loaded machine.
COMMAND_START_S = 5.0


# One record per line: time, level, logger, event, then key=value fields,
# values quoted when they hold spaces. Printable ASCII only: no glyphs, no
# colour codes, nothing a grep over the files would trip on.
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ferry(\.[\w-]+)+"
    r' [a-z_]+( [\w.-]+=("([^"\\]|\\.)*"|[^\s"]*))*'
)


def assert_plain_log_lines(stack: Stack, *names: str) -> None:
    """Every line of each program's log is one plain key=value record."""
    for name in names:
        text = stack.log(name)
        assert text, f"{name} logged nothing"
        for line in text.splitlines():
            assert line.isascii() and line.isprintable(), (name, line)
            assert LOG_LINE.fullmatch(line), (name, line)


def own_stats(stack: Stack, name: str, pid: int) -> dict[str, Any] | None:
    """The process's stats file, once written by that very process."""
    try:
        figures = read(stack.state_dir / f"{name}.json")
    except (OSError, ValueError):
        return None
    return figures if figures.get("pid") == pid else None


def blocked_run(stack: Stack, pid: int) -> bool:
    """True once quota-sync's run has made no progress for a while."""
    figures = own_stats(stack, "quota-sync", pid)
    if figures is None or figures["state"] != "running":
        return False
    beat = datetime.fromisoformat(figures["heartbeat_at"]).timestamp()
    return time.time() - beat > BLOCKED_S


def wait_all_reporting(stack: Stack) -> dict[str, Any]:
    processes = stack.wait_running()
    for name in WORKER_PROCESSES:
        stack.wait_for(
            lambda name=name: own_stats(stack, name, processes[name].pid),  # type: ignore[misc]
            f"{name} to write its stats",
            30,
        )
    return processes


def test_every_program_runs_and_status_and_health_agree_with_supervisord(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    processes = wait_all_reporting(stack)

    status = stack.ferry("status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["supervisor"]["reachable"] is True
    rows = {row["name"]: row for row in document["processes"]}
    assert sorted(rows) == sorted(PROCESSES)
    for name, info in stack.processes().items():
        assert rows[name]["state"] == info.state == "RUNNING"
        assert rows[name]["pid"] == info.pid
    for name in WORKER_PROCESSES:
        assert rows[name]["stats"]["pid"] == processes[name].pid
        assert rows[name]["stale"] is False

    health = stack.ferry("health")
    assert (health.returncode, health.stdout) == (0, "healthy: 7 processes\n")

    stopped = stack.ctl("stop", "audit:audit_1")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    health = stack.ferry("health")
    assert health.returncode == 1
    assert re.fullmatch(r"audit_1: STOPPED \(.+\)\n", health.stdout), health.stdout
    # supervisorctl itself says nothing is wrong with a stopped program.
    table = stack.ferry("status")
    assert re.search(r"audit_1\s+STOPPED", table.stdout), table.stdout


def test_quota_sync_runs_syncs_and_stops_cleanly_under_supervisord(
    start_stack: StartStack,
    rclient: redis.Redis,
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    rclient.mset({f"quota:acct{n}:uploads": n + 1 for n in range(500)})
    stack = start_stack()
    pid = stack.wait_running("quota-sync")["quota-sync"].pid

    figures = stack.wait_for(
        lambda: (
            (f := own_stats(stack, "quota-sync", pid)) and f["rows_written"] > 0 and f
        ),
        "quota-sync to sync rows",
        30,
    )
    assert figures["rows_written"] == 500
    assert db.execute("SELECT count(*), sum(used) FROM quota_usage").fetchone() == (
        500,
        sum(range(1, 501)),
    )

    stopped = stack.ctl("stop", "quota-sync")
    assert stopped.stdout.strip() == "quota-sync: stopped"
    assert "stopped: quota-sync (exit status 0)" in stack.supervisord_log()
    lines = stack.log("quota-sync").splitlines()
    assert re.search(
        r"worker_stop worker=quota-sync reason=signal .* exit_code=0$", lines[-1]
    )


def test_listener_restarts_a_hung_worker_once_per_cooldown(
    start_stack: StartStack,
) -> None:
    stack = start_stack(FERRY_HEALTH_RESTART_COOLDOWN_S="120")
    first = stack.wait_running()["quota-sync"].pid

    # A stopped process cannot write its heartbeat, though supervisord still
    # sees it RUNNING.
    os.kill(first, signal.SIGSTOP)
    second = stack.wait_for(
        lambda: (
            (p := stack.processes()["quota-sync"]).state == "RUNNING"
            and p.pid != first
            and p.pid
        ),
        "the listener to restart quota-sync",
        RESTART_TIMEOUT_S,
    )
    log = stack.log("heartbeat-watch")
    assert re.search(
        rf"WARNING ferry.health.listener restart_program process=quota-sync"
        rf" pid={first} reason=heartbeat_stale heartbeat_age_s=\d+ limit_s=4.0",
        log,
    ), log
    assert re.search(rf"restart_done process=quota-sync old_pid={first}", log)
    # Continued before the TERM, the hung process stopped cleanly.
    assert "stopped: quota-sync (exit status 0)" in stack.supervisord_log()

    # Hung again within the cooldown: left alone, said once, and reported.
    os.kill(second, signal.SIGSTOP)
    try:
        stack.wait_for(
            lambda: (
                "restart_suppressed process=quota-sync reason=cooldown"
                in stack.log("heartbeat-watch")
            ),
            "the listener to hold back",
            RESTART_TIMEOUT_S,
        )
        assert stack.processes()["quota-sync"].pid == second
        health = stack.ferry("health")
        assert health.returncode == 1
        assert re.fullmatch(
            r"quota-sync: heartbeat stale, last \d+ s ago \(limit 4 s\)\n",
            health.stdout,
        ), health.stdout
    finally:
        os.kill(second, signal.SIGCONT)
    assert stack.log("heartbeat-watch").count("restart_program") == 1


def test_a_crash_looping_worker_is_reported_by_health(
    start_stack: StartStack,
) -> None:
    # An unreachable database fails every run; with a budget of two the
    # worker exits 3 within startsecs, again and again.
    override = (
        "[program:quota-sync]\n"
        'environment=PYTHONUNBUFFERED="1",FERRY_SHUTDOWN_DEADLINE_S="25",'
        'DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres",'
        'FERRY_ERROR_BUDGET_FAILURES="2",FERRY_ERROR_WINDOW_RUNS="2",'
        'FERRY_QUOTA_SYNC_INTERVAL_S="0.2"\n'
    )
    stack = start_stack(override)

    stack.wait_state("quota-sync", {"FATAL"}, FATAL_TIMEOUT_S)
    health = stack.ferry("health")
    assert health.returncode == 1
    assert (
        "quota-sync: FATAL (Exited too quickly (process log may have details))\n"
        in (health.stdout)
    )
    log = stack.supervisord_log()
    assert "exited: quota-sync (exit status 3; not expected)" in log
    assert "gave up: quota-sync entered FATAL state" in log
    assert "error_budget_exhausted worker=quota-sync" in stack.log("quota-sync")


def test_stop_all_during_runs_exits_cleanly_within_stopwaitsecs(
    start_stack: StartStack,
    rclient: redis.Redis,
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    rclient.mset({f"quota:a{n}:m": n for n in range(1000)})
    stack = start_stack()
    processes = wait_all_reporting(stack)

    # Holding the table makes quota-sync's next upsert wait, so the stop
    # arrives with that run in flight; it is released before the deadline.
    with db.transaction():
        db.execute("LOCK TABLE quota_usage IN EXCLUSIVE MODE")
        stack.wait_for(
            lambda: blocked_run(stack, processes["quota-sync"].pid),
            "a quota-sync run waiting on the table",
            30,
        )
        results: list[subprocess.CompletedProcess[str]] = []
        stopping = threading.Thread(
            target=lambda: results.append(stack.ctl("stop", "all"))
        )
        started = time.monotonic()
        stopping.start()
        stack.wait_state("quota-sync", {"STOPPING"}, 10)
        time.sleep(RUN_HELD_S)
    stopping.join(timeout=STOPWAITSECS + 30)
    took_s = time.monotonic() - started

    (stopped,) = results
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert took_s < STOPWAITSECS
    log = stack.supervisord_log()
    for name in PROCESSES:
        assert f"stopped: {name} (exit status 0)" in log, log
    assert "SIGKILL" not in log
    assert all(info.state == "STOPPED" for info in stack.processes().values())
    quota = stack.log("quota-sync").split("shutdown_waiting worker=quota-sync")
    assert len(quota) == 2, "quota-sync had no run in flight to wait for"
    assert "run_done worker=quota-sync" in quota[1]
    assert "exit_code=0" in quota[1]
    assert_plain_log_lines(stack, *PROCESSES)
    # Exactly one line per run, whichever way it ended.
    for name in WORKER_PROCESSES:
        figures = read(stack.state_dir / f"{name}.json")
        runs = sum(figures[key] for key in ("runs_completed", "runs_failed"))
        runs += figures["runs_skipped"]
        logged = re.findall(r" run_(?:done|failed|skipped) ", stack.log(name))
        assert len(logged) == runs > 0, name


def test_status_and_health_give_up_on_a_hung_supervisord_within_the_timeout(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    assert stack.proc is not None
    env = {**stack.env, "FERRY_HEALTH_RPC_TIMEOUT_S": str(HUNG_RPC_TIMEOUT_S)}
    socket_path = stack.run_dir / "supervisor.sock"
    # Stopped, supervisord still holds its socket: connections are accepted
    # by the kernel and never answered.
    os.kill(stack.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status = run_ferry("status", "--json", env=env)
        health = run_ferry("health", env=env)
        took_s = time.monotonic() - started
    finally:
        os.kill(stack.proc.pid, signal.SIGCONT)

    assert status.returncode == 0, status.stderr
    error = json.loads(status.stdout)["supervisor"]["error"]
    assert error == f"supervisord is not reachable at {socket_path}: timed out"
    assert health.returncode == 1
    assert health.stdout.splitlines()[0] == f"{error}; judging by stats files only"
    # Two commands, each one timeout plus start-up.
    assert took_s < 2 * (HUNG_RPC_TIMEOUT_S + COMMAND_START_S)
