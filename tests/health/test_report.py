"""The report behind `ferry status` and `ferry health`: rows and problems."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from ferry.health.report import FIGURES, Report, assemble, collect, problems
from ferry.health.status import render_json, render_table
from ferry.health.supervisor import ProcessInfo, Supervisor
from ferry.runtime.stats import iso, utc_now

STALE_S = 60.0
NOW = time.time()
SOCKET = Path("/nonexistent/supervisor.sock")


def process(
    name: str,
    state: str = "RUNNING",
    *,
    group: str | None = None,
    pid: int = 4242,
    up_s: float = 600.0,
    description: str = "",
) -> ProcessInfo:
    return ProcessInfo(
        name=name,
        group=group or name,
        state=state,
        pid=pid if state in ("RUNNING", "STARTING", "STOPPING") else 0,
        start=NOW - up_s,
        now=NOW,
        description=description,
        exitstatus=0,
        spawnerr="",
    )


def write_stats(state_dir: Path, name: str, **fields: Any) -> None:
    figures: dict[str, Any] = {
        "worker": name.split("_", maxsplit=1)[0],
        "instance": name,
        "pid": 4242,
        "state": "waiting",
        "heartbeat_at": iso(utc_now()),
        "errors_in_window": 0,
        "error_budget": 5,
        "error_window_runs": 10,
        **fields,
    }
    (state_dir / f"{name}.json").write_text(json.dumps(figures))


def report(state_dir: Path, *processes: ProcessInfo) -> Report:
    return assemble(
        list(processes),
        state_dir,
        socket_path=SOCKET,
        supervisor_error=None,
        stale_limit_s=STALE_S,
        now=time.time(),
    )


def lines(state_dir: Path, *processes: ProcessInfo) -> list[str]:
    return problems(report(state_dir, *processes), budget_margin_failures=1)


def test_running_worker_with_fresh_heartbeat_has_no_problem(tmp_path: Path) -> None:
    write_stats(tmp_path, "quota-sync")
    assert lines(tmp_path, process("quota-sync")) == []


@pytest.mark.parametrize(
    "state",
    ["BACKOFF", "STARTING", "FATAL", "EXITED", "STOPPED", "STOPPING", "UNKNOWN"],
)
def test_every_state_but_running_is_a_problem(tmp_path: Path, state: str) -> None:
    write_stats(tmp_path, "audit_0")
    write_stats(tmp_path, "audit_1")
    found = lines(
        tmp_path,
        process("audit_0", group="audit"),
        process("audit_1", state, group="audit", description="Exited too quickly"),
    )
    assert found == [f"audit_1: {state} (Exited too quickly)"]


def test_stale_heartbeat_is_reported_with_its_age_and_the_limit(
    tmp_path: Path,
) -> None:
    write_stats(tmp_path, "quota-sync", heartbeat_at=iso_ago(125))
    assert lines(tmp_path, process("quota-sync")) == [
        "quota-sync: heartbeat stale, last 125 s ago (limit 60 s)"
    ]


def test_a_restarted_process_is_not_judged_by_its_predecessors_file(
    tmp_path: Path,
) -> None:
    write_stats(tmp_path, "quota-sync", pid=1111, heartbeat_at=iso_ago(900))
    fresh = process("quota-sync", pid=2222, up_s=3)
    assert lines(tmp_path, fresh) == []
    row = report(tmp_path, fresh).rows[0]
    assert row.heartbeat_age_s is not None and row.heartbeat_age_s < 5


def test_a_worker_that_never_writes_stats_goes_stale_after_the_limit(
    tmp_path: Path,
) -> None:
    assert lines(tmp_path, process("quota-sync", up_s=30)) == []
    assert lines(tmp_path, process("quota-sync", up_s=90)) == [
        "quota-sync: heartbeat stale, last 90 s ago (limit 60 s)"
    ]


def test_error_budget_nearly_spent_is_reported_one_failure_before_the_exit(
    tmp_path: Path,
) -> None:
    write_stats(tmp_path, "quota-sync", errors_in_window=3)
    assert lines(tmp_path, process("quota-sync")) == []
    write_stats(tmp_path, "quota-sync", errors_in_window=4)
    assert lines(tmp_path, process("quota-sync")) == [
        "quota-sync: error budget nearly spent, 4 of 5 failures allowed in the"
        " last 10 runs"
    ]


def test_a_predecessors_error_count_is_not_held_against_a_new_process(
    tmp_path: Path,
) -> None:
    write_stats(tmp_path, "quota-sync", pid=1111, errors_in_window=5)
    assert lines(tmp_path, process("quota-sync", pid=2222)) == []


def test_programs_that_are_not_workers_are_judged_by_state_only(
    tmp_path: Path,
) -> None:
    assert lines(tmp_path, process("heartbeat-watch"), process("redis")) == []
    assert lines(tmp_path, process("redis", "FATAL")) == ["redis: FATAL"]


def test_an_unreadable_stats_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "quota-sync.json").write_text("[1, 2]")
    found = lines(tmp_path, process("quota-sync", up_s=3))
    assert len(found) == 1
    assert found[0].startswith("quota-sync: stats file unreadable: ")
    assert "does not hold a JSON object" in found[0]


def test_unreachable_supervisord_is_a_problem_and_rows_come_from_stats_files(
    tmp_path: Path,
) -> None:
    write_stats(tmp_path, "quota-sync")
    write_stats(tmp_path, "audit_0", heartbeat_at=iso_ago(300))
    supervisor = Supervisor(tmp_path / "missing.sock", timeout_s=1)
    built = collect(supervisor, tmp_path, stale_limit_s=STALE_S)

    assert [row.name for row in built.rows] == ["audit_0", "quota-sync"]
    assert all(row.process is None for row in built.rows)
    found = problems(built, budget_margin_failures=1)
    assert found == [
        f"supervisord is not reachable at {tmp_path / 'missing.sock'}: No such file"
        " or directory; judging by stats files only",
        "audit_0: heartbeat stale, last 300 s ago (limit 60 s)",
    ]
    document = built.as_json()
    assert document["supervisor"]["reachable"] is False
    assert document["processes"][1]["state"] is None


def iso_ago(seconds: float) -> str | None:
    return iso(datetime.fromtimestamp(time.time() - seconds, tz=UTC))


def test_a_heartbeat_in_the_future_does_not_hide_a_hung_process(
    tmp_path: Path,
) -> None:
    # A predecessor wrote it before the clock was stepped back an hour; the
    # process running now, up ten minutes, has written nothing since.
    ahead = iso_ago(-3600)
    write_stats(tmp_path, "quota-sync", pid=1111, heartbeat_at=ahead)
    assert lines(tmp_path, process("quota-sync", pid=2222, up_s=600)) == [
        f"quota-sync: heartbeat_at {ahead} is in the future, ignored (was the"
        " clock stepped back?)",
        "quota-sync: heartbeat stale, last 600 s ago (limit 60 s)",
    ]


def test_a_heartbeat_in_the_future_is_stale_without_supervisord(
    tmp_path: Path,
) -> None:
    ahead = iso_ago(-3600)
    write_stats(tmp_path, "quota-sync", heartbeat_at=ahead)
    built = assemble(
        None,
        tmp_path,
        socket_path=SOCKET,
        supervisor_error="supervisord is not reachable",
        stale_limit_s=STALE_S,
        now=time.time(),
    )
    assert problems(built, budget_margin_failures=1)[1:] == [
        f"quota-sync: heartbeat_at {ahead} is in the future, ignored (was the"
        " clock stepped back?)",
        "quota-sync: heartbeat stale, no heartbeat (limit 60 s)",
    ]
    assert built.as_json()["processes"][0]["future_heartbeat"] == ahead


def test_a_heartbeat_a_moment_ahead_still_counts(tmp_path: Path) -> None:
    write_stats(tmp_path, "quota-sync", heartbeat_at=iso_ago(-1))
    assert lines(tmp_path, process("quota-sync", up_s=600)) == []


# Whatever a damaged, foreign or older stats file holds under the names the
# report reads: huge integers, NaN, deep nesting, times that overflow.
EDGE_VALUES = st.sampled_from(
    [
        10**400,
        -(2**63),
        float("nan"),
        float("inf"),
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59",
        "2026-01-02T03:04:05Z",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | EDGE_VALUES
)
JSON_VALUES = EDGE_VALUES | SCALARS | st.lists(SCALARS, max_size=3)
STATS_KEYS = [*FIGURES, "pid", "error_window_runs", "worker", "started_at"]


@given(figures=st.dictionaries(st.sampled_from(STATS_KEYS), JSON_VALUES))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_status_and_health_never_fail_on_what_a_stats_file_holds(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    (tmp_path / "quota-sync.json").write_text(json.dumps(figures))
    for processes in ([process("quota-sync")], None):
        built = assemble(
            processes,
            tmp_path,
            socket_path=SOCKET,
            supervisor_error=None if processes else "unreachable",
            stale_limit_s=STALE_S,
            now=time.time(),
        )
        assert problems(built, budget_margin_failures=1) is not None
        render_table(built, Console(file=io.StringIO(), width=200))
        json.loads(render_json(built).replace("NaN", "null"))


def test_a_stats_file_nested_too_deep_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "quota-sync.json").write_text("[" * 100_000 + "]" * 100_000)
    found = lines(tmp_path, process("quota-sync", up_s=3))
    assert len(found) == 1
    assert found[0].startswith("quota-sync: stats file unreadable: ")
