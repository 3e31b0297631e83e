"""One row per process: supervisord's view beside the process's stats file.

`collect` asks supervisord for its processes and reads the stats file each
one writes (`<state_dir>/<process name>.json`, the name supervisord gives it
in `SUPERVISOR_PROCESS_NAME`). When supervisord cannot be reached it says
so and builds the rows from the stats files alone. `problems` turns a report
into the lines `ferry health` prints.

A heartbeat's age is judged by the newest evidence of life: the stats file's
`heartbeat_at`, or the moment supervisord started the process, whichever is
later. So a process that has just been restarted is not judged by the file
its predecessor left, and one that never writes a stats file at all goes
stale once it has been up longer than the limit. A `heartbeat_at` in the
future is no evidence at all: the runtime writes the current time, so a
later one means the clock was stepped back since, or the file is not this
host's, and trusting it would hide a hung process until that moment came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ferry.errors import SupervisorError
from ferry.health.supervisor import ProcessInfo, Supervisor
from ferry.runtime import stats
from ferry.workers import WORKERS

# The stats figures a row shows, in the order the table shows them.
FIGURES = (
    "state",
    "last_success_at",
    "last_run_duration_ms",
    "last_run_synced",
    "errors_in_window",
    "error_budget",
    "heartbeat_at",
)
# How far ahead of this host's clock a heartbeat may be and still count:
# writer and reader share the clock, so only a stepped clock (NTP, a resumed
# VM) or a file from elsewhere puts one ahead, and a second or two of
# stepping is ordinary.
FUTURE_HEARTBEAT_TOLERANCE_S = 5.0


@dataclass(frozen=True)
class Row:
    """One process: supervisord's record (None if unreachable) and its stats.

    `worker` is true for processes of a Ferry worker program (the program is
    named after the worker), which are the ones expected to write stats.
    """

    name: str
    worker: bool
    process: ProcessInfo | None
    stats: dict[str, Any] | None
    stats_error: str | None
    heartbeat_age_s: float | None
    stale: bool
    future_heartbeat: str | None = None

    @property
    def state(self) -> str | None:
        """supervisord's state name, or None when it was not reachable."""
        return self.process.state if self.process is not None else None

    @property
    def own_stats(self) -> bool:
        """True when the stats file was written by the process running now."""
        if self.stats is None:
            return False
        if self.process is None:
            return True
        return bool(self.stats.get("pid") == self.process.pid)

    def as_json(self) -> dict[str, Any]:
        """The row as `ferry status --json` prints it."""
        figures = self.stats or {}
        process = self.process
        return {
            "name": self.name,
            "group": process.group if process else None,
            "worker": self.worker,
            "state": self.state,
            "pid": process.pid if process and process.pid else None,
            "uptime_s": process.uptime_s if process else None,
            "description": process.description if process else None,
            **{f"stats_{key}": figures.get(key) for key in FIGURES},
            "heartbeat_age_s": _round(self.heartbeat_age_s),
            "stale": self.stale,
            "future_heartbeat": self.future_heartbeat,
            "stats_error": self.stats_error,
            "stats": self.stats,
        }


@dataclass(frozen=True)
class Report:
    """Every row, and why supervisord's side is missing if it is."""

    rows: list[Row]
    socket_path: Path
    supervisor_error: str | None
    stale_limit_s: float

    def as_json(self) -> dict[str, Any]:
        """The report as `ferry status --json` prints it."""
        return {
            "supervisor": {
                "socket": str(self.socket_path),
                "reachable": self.supervisor_error is None,
                "error": self.supervisor_error,
            },
            "heartbeat_stale_s": self.stale_limit_s,
            "processes": [row.as_json() for row in self.rows],
        }


def collect(supervisor: Supervisor, state_dir: Path, *, stale_limit_s: float) -> Report:
    """Ask supervisord and read the stats files; never raises for supervisord."""
    try:
        processes: list[ProcessInfo] | None = supervisor.processes()
        error = None
    except SupervisorError as exc:
        processes = None
        error = str(exc)
    return assemble(
        processes,
        state_dir,
        socket_path=supervisor.socket_path,
        supervisor_error=error,
        stale_limit_s=stale_limit_s,
        now=time.time(),
    )


def assemble(
    processes: list[ProcessInfo] | None,
    state_dir: Path,
    *,
    socket_path: Path,
    supervisor_error: str | None,
    stale_limit_s: float,
    now: float,
) -> Report:
    """Build the report from supervisord's processes, or None if unreachable.

    Without processes the rows come from the stats files in `state_dir`,
    each taken for a worker's process.
    """
    rows = []
    if processes is not None:
        for info in processes:
            worker = info.group in WORKERS
            rows.append(_row(info.name, worker, info, state_dir, now, stale_limit_s))
    else:
        for path in sorted(state_dir.glob("*.json")):
            rows.append(_row(path.stem, True, None, state_dir, now, stale_limit_s))
    return Report(rows, socket_path, supervisor_error, stale_limit_s)


def problems(report: Report, *, budget_margin_failures: int) -> list[str]:
    """One line per problem, in row order; empty when all is well."""
    lines = []
    if report.supervisor_error is not None:
        lines.append(f"{report.supervisor_error}; judging by stats files only")
    for row in report.rows:
        lines.extend(_row_problems(row, report.stale_limit_s, budget_margin_failures))
    return lines


def _row_problems(row: Row, stale_limit_s: float, margin: int) -> list[str]:
    state = row.state
    if state is not None and state != "RUNNING":
        detail = row.process.description if row.process else ""
        return [f"{row.name}: {state}" + (f" ({detail})" if detail else "")]
    if not row.worker:
        return []

    lines = []
    if row.stats_error is not None:
        lines.append(f"{row.name}: stats file unreadable: {row.stats_error}")
    if row.future_heartbeat is not None:
        lines.append(
            f"{row.name}: heartbeat_at {row.future_heartbeat} is in the future,"
            " ignored (was the clock stepped back?)"
        )
    if row.stale:
        age = (
            "no heartbeat"
            if row.heartbeat_age_s is None
            else (f"last {row.heartbeat_age_s:.0f} s ago")
        )
        lines.append(f"{row.name}: heartbeat stale, {age} (limit {stale_limit_s:g} s)")
    if row.stats is not None and row.own_stats:
        failures = _int(row.stats.get("errors_in_window"))
        allowed = _int(row.stats.get("error_budget"))
        window = _int(row.stats.get("error_window_runs"))
        if failures and allowed and failures >= allowed - margin:
            lines.append(
                f"{row.name}: error budget nearly spent, {failures} of {allowed}"
                f" failures allowed in the last {window} runs"
            )
    return lines


def _row(
    name: str,
    worker: bool,
    process: ProcessInfo | None,
    state_dir: Path,
    now: float,
    stale_limit_s: float,
) -> Row:
    figures, error = _read(state_dir / f"{name}.json") if worker else (None, None)
    age = heartbeat_age_s(figures, process, now) if worker else None
    running = process is None or process.state == "RUNNING"
    stale = worker and running and (age is None or age > stale_limit_s)
    beat = figures.get("heartbeat_at") if figures is not None else None
    future = str(beat) if _ahead(unix_time(beat), now) else None
    return Row(name, worker, process, figures, error, age, stale, future)


def heartbeat_age_s(
    figures: dict[str, Any] | None, process: ProcessInfo | None, now: float
) -> float | None:
    """Seconds since the newest sign of life (see the module docstring)."""
    moments = []
    if figures is not None:
        beat = unix_time(figures.get("heartbeat_at"))
        if beat is not None and not _ahead(beat, now):
            moments.append(beat)
    if process is not None and process.uptime_s is not None:
        moments.append(now - process.uptime_s)
    if not moments:
        return None
    return max(now - max(moments), 0.0)


def _ahead(moment: float | None, now: float) -> bool:
    return moment is not None and moment - now > FUTURE_HEARTBEAT_TOLERANCE_S


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return stats.read(path), None
    except FileNotFoundError:
        return None, None
    # RecursionError: JSON nested deeper than the parser's stack, which no
    # writer of ours produces but a damaged or foreign file can.
    except (OSError, ValueError, RecursionError) as exc:
        return None, str(exc) or type(exc).__name__


def unix_time(value: object) -> float | None:
    """An ISO 8601 time as Unix seconds; None when it is not one."""
    if not isinstance(value, str):
        return None
    # A time without an offset is not one the runtime writes; read as UTC
    # rather than as this host's local time. Years near 1 or 9999 overflow
    # when shifted, and count as no time at all.
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
