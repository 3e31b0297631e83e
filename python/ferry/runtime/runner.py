"""Runner: drives one worker from start-up to exit.

The main thread owns the schedule, the signals and the stats heartbeat; each
run happens in its own thread so that the main thread can keep the heartbeat
going and enforce the shutdown deadline. Only one run exists at a time: a
timer tick that comes while a run is in flight is skipped and counted, and a
wake-up that comes then is kept for when the run ends.

Exit codes (supervisord's `exitcodes` lists only 0 as expected):

    0  clean stop, or a `--once` run that succeeded
    1  a `--once` run failed
    2  bad configuration (start-up refused)
    3  the error budget ran out; supervisord restarts the process
    4  the run in flight outlived the shutdown deadline and was abandoned
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

from ferry import __version__
from ferry.config import CommonSettings
from ferry.errors import ConfigError
from ferry.logs import kv
from ferry.runtime.budget import ErrorBudget
from ferry.runtime.stats import StatsFile, iso, utc_now
from ferry.runtime.worker import RunContext, RunOutcome, Worker

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_BUDGET = 3
EXIT_DEADLINE = 4

# Longest error text kept in the stats file; enough for a message, not a dump.
LAST_ERROR_MAX_CHARS = 300

logger = logging.getLogger("ferry.runtime")


class Runner:
    """Runs `worker` on its schedule until a signal or the error budget stops it."""

    def __init__(
        self,
        worker: Worker,
        settings: CommonSettings,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.worker = worker
        self.settings = settings
        self._on_progress = on_progress
        self._stats_lock = threading.Lock()
        self.instance = settings.instance or worker.name
        try:
            self.stats = StatsFile(settings.state_dir, self.instance)
        except OSError as exc:
            raise ConfigError(
                f"FERRY_STATE_DIR {str(settings.state_dir)!r} cannot hold the stats"
                f" files: {exc.strerror}; point it at a writable directory"
            ) from None
        self.budget = ErrorBudget(
            settings.error_budget_failures, settings.error_window_runs
        )
        self._stopping = threading.Event()
        self._nudge = threading.Event()
        self._wake_requested = False
        self._signals: list[int] = []
        self._stop_requested_at = 0.0
        self._thread: threading.Thread | None = None
        self._ctx: RunContext | None = None
        self._run_started: datetime | None = None
        self._state = "starting"
        self._started_at = utc_now()
        self._figures: dict[str, Any] = {
            "runs_completed": 0,
            "runs_failed": 0,
            "runs_skipped_overlap": 0,
            "runs_skipped": 0,
            "last_attempt_at": None,
            "last_success_at": None,
            "last_run_duration_ms": None,
            "last_run_synced": None,
            "last_error": None,
            "last_error_at": None,
        }
        self._last_ok = False

    # -- public -----------------------------------------------------------

    def serve(self, *, once: bool = False) -> int:
        """Run until stopped and return the process exit code.

        With `once`, do one run at once (no startup delay) and return 0 if it
        succeeded or was skipped on purpose, 1 if it failed.
        """
        previous = self._install_signals()
        try:
            return self._serve(once)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def wake(self) -> None:
        """Ask for a run as soon as none is in flight; safe from any thread."""
        self._wake_requested = True
        self._nudge.set()

    def _serve(self, once: bool) -> int:
        self.worker.attach(self.wake)
        schedule = self.worker.schedule
        delay = 0.0 if once else schedule.startup_delay_s
        logger.info(
            "worker_start %s",
            kv(
                {
                    "worker": self.worker.name,
                    "instance": self.instance,
                    "pid": os.getpid(),
                    "version": __version__,
                    "startup_delay_s": delay,
                    "once": once,
                }
            ),
        )
        self._write_stats()
        next_due = time.monotonic() + delay
        runs_started = 0

        while not self._stopping.is_set() and not self.budget.exhausted:
            self._log_extra_signals()
            now = time.monotonic()
            if self._running():
                # A back-to-back worker (interval 0) has no ticks to skip.
                while now >= next_due and not once and schedule.interval_s > 0:
                    self._figures["runs_skipped_overlap"] += 1
                    logger.info(
                        "tick_skipped %s",
                        kv({"worker": self.worker.name, "reason": "run_in_flight"}),
                    )
                    next_due += max(schedule.interval_s, self.settings.heartbeat_s)
                self._wait(min(self.settings.heartbeat_s, max(next_due - now, 0.05)))
                self._write_stats()
                continue
            if once and runs_started:
                break
            if self._wake_requested or now >= next_due:
                self._wake_requested = False
                self._start_run()
                runs_started += 1
                next_due = (
                    now + schedule.interval_s + random.uniform(0, schedule.jitter_s)
                )
                continue
            self._state = "waiting"
            self._wait(min(self.settings.heartbeat_s, next_due - now))
            self._write_stats()

        return self._exit(once)

    # -- the run ----------------------------------------------------------

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start_run(self) -> None:
        self._state = "running"
        self._ctx = RunContext(self._stopping, self._on_progress)
        self._run_started = utc_now()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._ctx,),
            name=f"run-{self.worker.name}",
            daemon=True,
        )
        self._write_stats()
        self._thread.start()

    def _run(self, ctx: RunContext) -> None:
        started = time.monotonic()
        try:
            outcome = self.worker.run_once(ctx)
        except Exception as exc:
            self._complete(started, None, exc)
        else:
            self._complete(started, outcome, None)
        finally:
            self._nudge.set()

    def _complete(
        self, started: float, outcome: RunOutcome | None, error: Exception | None
    ) -> None:
        """The one completion path: every run, however it ends, passes here."""
        duration_ms = round((time.monotonic() - started) * 1000)
        figures = self._figures
        figures["last_attempt_at"] = iso(self._run_started)
        figures["last_run_duration_ms"] = duration_ms
        base = {"worker": self.worker.name, "instance": self.instance}

        if error is not None or outcome is None:
            text = f"{type(error).__name__}: {error}"[:LAST_ERROR_MAX_CHARS]
            figures["runs_failed"] += 1
            figures["last_error"] = text
            figures["last_error_at"] = iso(utc_now())
            figures["last_run_synced"] = 0
            self.budget.record(True)
            self._last_ok = False
            logger.error(
                "run_failed %s",
                kv(
                    {
                        **base,
                        "duration_ms": duration_ms,
                        "errors_in_window": self.budget.failures,
                        "error": text,
                    }
                ),
            )
            if error is not None:
                logger.debug(
                    "run_failed traceback\n%s",
                    "".join(traceback.format_exception(error)),
                )
            self.worker.on_failure()
        elif outcome.skipped is not None:
            figures["runs_skipped"] += 1
            figures["last_run_synced"] = 0
            self.budget.record(False)
            self._last_ok = True
            logger.info(
                "run_skipped %s",
                kv({**base, "reason": outcome.skipped, "duration_ms": duration_ms}),
            )
        else:
            figures["runs_completed"] += 1
            figures["last_success_at"] = iso(utc_now())
            figures["last_run_synced"] = outcome.synced
            self.budget.record(False)
            self._last_ok = True
            logger.info(
                "run_done %s",
                kv(
                    {
                        **base,
                        "synced": outcome.synced,
                        **outcome.fields,
                        "duration_ms": duration_ms,
                    }
                ),
            )

        if self.budget.exhausted:
            logger.error(
                "error_budget_exhausted %s",
                kv(
                    {
                        **base,
                        "failures": self.budget.failures,
                        "window_runs": self.budget.window,
                        "exit_code": EXIT_BUDGET,
                    }
                ),
            )
        self._state = "stopping" if self._stopping.is_set() else "waiting"
        self._write_stats()

    # -- signals and exit -------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: logging from a signal handler can interleave with a
        # record the main thread is half-way through writing.
        self._signals.append(signum)
        if not self._stopping.is_set():
            self._stop_requested_at = time.monotonic()
            self._stopping.set()
        self._nudge.set()

    def _log_extra_signals(self) -> None:
        if len(self._signals) > 1:
            logger.warning(
                "signal_repeated %s",
                kv(
                    {
                        "worker": self.worker.name,
                        "signals": len(self._signals),
                        "action": "already stopping, nothing new is started",
                    }
                ),
            )
            del self._signals[1:]

    def _wait(self, timeout: float) -> None:
        self._nudge.wait(max(timeout, 0.0))
        self._nudge.clear()

    def _exit(self, once: bool) -> int:
        self._state = "stopping"
        self._write_stats()
        reason = (
            "signal"
            if self._stopping.is_set()
            else ("error_budget" if self.budget.exhausted else "once")
        )
        if not self._stopping.is_set():
            # Leaving for the budget or after --once: the last run is at most
            # finishing its completion path; the deadline starts now.
            self._stop_requested_at = time.monotonic()
            self._stopping.set()
        deadline = self._stop_requested_at + self.settings.shutdown_deadline_s
        if self._thread is not None:
            # A run that is only finishing its completion path needs no log line.
            self._thread.join(timeout=min(1.0, max(deadline - time.monotonic(), 0)))
        if self._running():
            logger.info(
                "shutdown_waiting %s",
                kv(
                    {
                        "worker": self.worker.name,
                        "deadline_s": self.settings.shutdown_deadline_s,
                    }
                ),
            )
            while self._running() and time.monotonic() < deadline:
                self._wait(min(self.settings.heartbeat_s, deadline - time.monotonic()))
                self._log_extra_signals()
                self._write_stats()
            if self._running():
                return self._abandon()

        code = EXIT_OK
        if self.budget.exhausted:
            code = EXIT_BUDGET
        elif once and not self._last_ok:
            code = EXIT_FAILED
        self.worker.close()
        logger.info(
            "worker_stop %s",
            kv(
                {
                    "worker": self.worker.name,
                    "reason": reason,
                    "runs_completed": self._figures["runs_completed"],
                    "runs_failed": self._figures["runs_failed"],
                    "exit_code": code,
                }
            ),
        )
        return code

    def _abandon(self) -> int:
        started = self._run_started
        running_ms = (
            round((utc_now() - started).total_seconds() * 1000) if started else 0
        )
        logger.error(
            "shutdown_overrun %s",
            kv(
                {
                    "worker": self.worker.name,
                    "abandoned": "run in flight",
                    "run_started_at": iso(started),
                    "running_ms": running_ms,
                    "deadline_s": self.settings.shutdown_deadline_s,
                    "exit_code": EXIT_DEADLINE,
                }
            ),
        )
        self._write_stats()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        # The run thread may be blocked inside a driver call; a normal exit
        # would wait on it at interpreter shutdown, so leave at once.
        os._exit(EXIT_DEADLINE)

    # -- stats ------------------------------------------------------------

    def _write_stats(self) -> None:
        # The main thread's heartbeat and the run thread's completion both
        # write: building and writing under one lock keeps an older snapshot
        # from landing after a newer one.
        with self._stats_lock:
            self._write_stats_locked()

    def _write_stats_locked(self) -> None:
        heartbeat = utc_now()
        if self._running() and self._ctx is not None:
            # While a run is in flight the heartbeat follows its progress, so
            # a run that hangs shows as stale.
            idle_s = time.monotonic() - self._ctx.last_progress
            heartbeat = datetime.fromtimestamp(
                heartbeat.timestamp() - idle_s, tz=heartbeat.tzinfo
            )
        snapshot: dict[str, Any] = {
            "worker": self.worker.name,
            "instance": self.instance,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": iso(self._started_at),
            "state": self._state,
            "heartbeat_at": iso(heartbeat),
            **self._figures,
            "errors_in_window": self.budget.failures,
            "error_budget": self.budget.allowed,
            "error_window_runs": self.budget.window,
        }
        for key, value in self.worker.counters().items():
            snapshot.setdefault(key, value)
        try:
            self.stats.write(snapshot)
        except OSError as exc:
            logger.warning(
                "stats_write_failed %s",
                kv(
                    {
                        "worker": self.worker.name,
                        "path": str(self.stats.json_path),
                        "error": exc.strerror,
                        "action": "will retry at next heartbeat",
                    }
                ),
            )
