"""`ferry status` output: a terminal table, or the same rows as JSON.

The table uses rich, which drops colour and styles by itself when the output
is not a terminal, so the same text can be piped or pasted.
"""

from __future__ import annotations

import json
import math
import time

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferry.health.report import Report, Row, unix_time

SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
MS_PER_S = 1000.0

# Width of the table when the output is not a terminal (a pipe or a file):
# enough for every column without wrapping, since nothing else sets it then.
PIPE_WIDTH_COLUMNS = 120
# Row styles by supervisord state, on a terminal only.
STATE_STYLES = {"RUNNING": "green", "STARTING": "yellow", "STOPPING": "yellow"}
PROBLEM_STYLE = "bold red"


def render_json(report: Report) -> str:
    """The report as one JSON document."""
    return json.dumps(report.as_json(), indent=2)


def console() -> Console:
    """A console for stdout, wide enough for the table when piped."""
    out = Console()
    if out.is_terminal:
        return out
    return Console(width=PIPE_WIDTH_COLUMNS)


def render_table(report: Report, console: Console) -> None:
    """Print a headline and one table row per process to `console`."""
    if report.supervisor_error is None:
        console.print(
            f"supervisord at {report.socket_path}: {len(report.rows)} processes",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"{report.supervisor_error}; showing the stats files only",
            style=PROBLEM_STYLE,
            highlight=False,
            soft_wrap=True,
        )

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("process", "state", "pid", "uptime", "worker"):
        table.add_column(title, no_wrap=True)
    for title in ("last success", "took", "rows", "errors", "heartbeat"):
        table.add_column(title, justify="right", no_wrap=True)
    now = time.time()
    for row in report.rows:
        table.add_row(*_cells(row, now))
    console.print(table)


def _cells(row: Row, now: float) -> list[str | Text]:
    process = row.process
    state = row.state or "?"
    cells: list[str | Text] = [
        row.name,
        Text(state, style=STATE_STYLES.get(state, PROBLEM_STYLE)),
        str(process.pid) if process and process.pid else "",
        _age(process.uptime_s) if process else "",
    ]
    if not row.worker:
        return [*cells, *[""] * 6]

    figures = row.stats or {}
    errors = figures.get("errors_in_window")
    budget = figures.get("error_budget")
    heartbeat = _age(row.heartbeat_age_s) or "none"
    return [
        *cells,
        _text(figures.get("state")),
        _since(figures.get("last_success_at"), now),
        _millis(figures.get("last_run_duration_ms")),
        _text(figures.get("last_run_synced")),
        f"{errors}/{budget}" if errors is not None and budget else "",
        Text(f"{heartbeat} stale", style=PROBLEM_STYLE) if row.stale else heartbeat,
    ]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(seconds)
    if whole < SECONDS_PER_MINUTE:
        return f"{whole}s"
    if whole < SECONDS_PER_HOUR:
        return f"{whole // SECONDS_PER_MINUTE}m{whole % SECONDS_PER_MINUTE:02d}s"
    if whole < SECONDS_PER_DAY:
        minutes = whole % SECONDS_PER_HOUR // SECONDS_PER_MINUTE
        return f"{whole // SECONDS_PER_HOUR}h{minutes:02d}m"
    hours = whole % SECONDS_PER_DAY // SECONDS_PER_HOUR
    return f"{whole // SECONDS_PER_DAY}d{hours:02d}h"


def _since(value: object, now: float) -> str:
    if not isinstance(value, str):
        return "never" if value is None else ""
    moment = unix_time(value)
    if moment is None:
        return value
    return f"{_age(max(now - moment, 0.0))} ago"


def _millis(value: object) -> str:
    # A stats file is read as found: an integer too big for a float, NaN or
    # infinity is shown as it is rather than stopping the whole table.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    try:
        millis = float(value)
    except OverflowError:
        return str(value)
    if not math.isfinite(millis):
        return str(value)
    if millis < MS_PER_S:
        return f"{millis:.0f}ms"
    return f"{millis / MS_PER_S:.1f}s"


def _text(value: object) -> str:
    return "" if value is None else str(value)
