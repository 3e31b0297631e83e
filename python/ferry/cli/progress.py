"""A progress bar for long manual runs, drawn only on a terminal.

`terminal_progress` yields an `advance(n)` callback. When stderr is a
terminal it draws a rich progress bar there and prints log lines above the
bar, unwrapped, so neither garbles the other; otherwise the callback does nothing and
the output stays plain lines for log files. The callback may be called from
any thread (the runtime calls it from the run's thread).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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
from rich.text import Text

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
    console = Console(stderr=True)
    progress = Progress(*columns, console=console)
    task = progress.add_task(label, total=total)

    def advance(done: int) -> None:
        progress.advance(task, done)

    with progress:
        # Log handlers writing to stderr would draw over the bar; while it is
        # up they write through the console, which prints above it.
        moved = _point_handlers(sys.stderr, _AboveBar(console))
        try:
            yield advance
        finally:
            for handler, stream in moved:
                handler.setStream(stream)


class _AboveBar(io.TextIOBase):
    """A text stream printing each whole line above the live bar, unwrapped."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            # Text, not a string: a log line is never read as rich markup.
            self._console.print(Text(line), soft_wrap=True, highlight=False)
        return len(text)


def _point_handlers(
    old: object, new: io.TextIOBase
) -> list[tuple[logging.StreamHandler[Any], Any]]:
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)
            moved.append((handler, old))
    return moved
