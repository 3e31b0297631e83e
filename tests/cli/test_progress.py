"""The progress bar of manual runs: drawn on a terminal, absent from logs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from ferry.config import CommonSettings
from ferry.runtime import RunContext, Runner, RunOutcome, Schedule, Worker
from tests.cli.terminal import run_on_terminal
from tests.conftest import ferry_cmd, run_ferry

KEYS = 20_000


class Stepper(Worker):
    """Reports two steps of three units each, then succeeds."""

    name = "stepper"
    schedule = Schedule(interval_s=60)

    def run_once(self, ctx: RunContext) -> RunOutcome:
        ctx.progress(3)
        ctx.progress(3)
        return RunOutcome(synced=6)


def test_the_runner_hands_each_runs_progress_to_the_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, str]] = []

    def record(done: int) -> None:
        seen.append((done, threading.current_thread().name))

    settings = CommonSettings.model_validate({"state_dir": tmp_path})
    assert Runner(Stepper(), settings, on_progress=record).serve(once=True) == 0
    assert seen == [(3, "run-stepper"), (3, "run-stepper")]


def test_a_context_without_a_callback_only_moves_the_heartbeat() -> None:
    ctx = RunContext(threading.Event())
    before = ctx.last_progress
    ctx.progress(5)
    assert ctx.last_progress >= before


def test_a_manual_run_draws_a_bar_on_a_terminal_only(
    ferry_env: dict[str, str], rclient: redis.Redis
) -> None:
    rclient.mset({f"quota:a{n}:m": n for n in range(KEYS)})

    plain = run_ferry("run", "quota-sync", "--once", env=ferry_env)
    assert plain.returncode == 0, plain.stderr
    # Piped: log lines only, no bar, no escape sequences.
    assert all(" INFO " in line for line in plain.stderr.splitlines())
    assert "\x1b" not in plain.stderr and "steps" not in plain.stderr

    rclient.incr("quota:a1:m")
    code, text = run_on_terminal(ferry_cmd("run", "quota-sync", "--once"), ferry_env)
    assert code == 0
    assert "quota-sync" in text and " steps" in text
    # The log lines still arrive, whole, above the bar.
    assert "run_done worker=quota-sync instance=quota-sync synced=1 " in text
