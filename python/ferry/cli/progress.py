"""A progress bar for long manual runs, drawn only on a terminal.

`terminal_progress` yields an `advance(n)` callback. When stderr is a
terminal it draws a rich progress bar there and routes log lines above the
bar, so neither garbles the other; otherwise the callback does nothing and
the output stays plain lines for log files. The callback may be called from
any thread (the runtime calls it from the run's thread).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]


def _ignore(done: int) -> None:
    """The callback when nothing is drawn."""


@contextmanager
def terminal_progress(
    label: str, *, total: int | None = None, unit: str = "done"
) -> Iterator[Advance]:
    """Draw a bar on stderr while the block runs, if stderr is a terminal.

    With `total` the bar shows the share done and the time left; without
    it, a count of `unit` and the time taken.
    """
    if not sys.stderr.isatty():
        yield _ignore
        return

    columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn(label)]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    else:
        columns += [TextColumn(f"{{task.completed:,.0f}} {unit}")]
    columns.append(TimeElapsedColumn())
    progress = Progress(*columns, console=Console(stderr=True), redirect_stderr=True)
    task = progress.add_task(label, total=total)

    def advance(done: int) -> None:
        progress.advance(task, done)

    plain = sys.stderr
    with progress:
        # The log handlers hold the stderr they were given; pointing them at
        # rich's stand-in while the bar is up prints each line above it.
        moved = _point_handlers(plain, sys.stderr)
        try:
            yield advance
        finally:
            for handler, stream in moved:
                handler.setStream(stream)


def _point_handlers(
    old: TextIO, new: TextIO
) -> list[tuple[logging.StreamHandler[TextIO], TextIO]]:
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)
            moved.append((handler, old))
    return moved
