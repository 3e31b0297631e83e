"""What a worker gives the runtime, and what the runtime gives a run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Schedule:
    """When a worker runs: once after `startup_delay_s`, then every `interval_s`.

    Each wait adds a random `jitter_s` fraction of at most that many seconds so
    that processes started together drift apart. An interval of 0 runs back to
    back (the audit worker's blocking read is its own wait).
    """

    interval_s: float
    startup_delay_s: float = 0.0
    jitter_s: float = 0.0


@dataclass
class RunOutcome:
    """What one run did.

    `synced` is the run's headline figure (rows written, entries stored,
    webhooks delivered). `fields` are the run's own figures for its log line,
    in order. `skipped` names why a run did no work on purpose (another process
    holds the lock); such a run is neither a success nor a failure.
    """

    synced: int = 0
    fields: dict[str, int | float | str] = field(default_factory=dict)
    skipped: str | None = None


class RunContext:
    """Handed to each run: the stop flag, and a way to report progress.

    A run that takes long should call `progress()` after each unit of work
    (a page, a batch): the heartbeat follows it, so a run that stops making
    progress shows as stale and the supervisor's listener can restart it.
    A run should check `stopping` between units and wind down when it is set.
    `on_progress`, when given, is called from the run's thread with the units
    each call reports (the command line draws a progress bar with it).
    """

    def __init__(
        self,
        stopping: threading.Event,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.stopping = stopping
        self.last_progress = time.monotonic()
        self._on_progress = on_progress

    def progress(self, done: int = 1) -> None:
        """Record that the run is still making progress, `done` units more."""
        self.last_progress = time.monotonic()
        if self._on_progress is not None:
            self._on_progress(done)


class Worker:
    """Base class of the workers: one run at a time, driven by `Runner`.

    Subclasses set `name` and `schedule` and implement `run_once`. A failed
    run raises; the runtime records it and calls `on_failure`.
    """

    name: str = "worker"
    schedule: Schedule = Schedule(interval_s=60.0)

    def run_once(self, ctx: RunContext) -> RunOutcome:
        """Do one run and say what it did; raise on failure."""
        raise NotImplementedError

    def counters(self) -> Mapping[str, int | float]:
        """The worker's cumulative counters for the stats file."""
        return {}

    def on_failure(self) -> None:
        """Called after a failed run, before the next one can start."""

    def attach(self, wake: Callable[[], None]) -> None:
        """Called once before the first run; `wake()` asks for a run now."""

    def close(self) -> None:
        """Release connections; called once when the process stops."""
