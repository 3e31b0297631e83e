"""The shared runtime, through a real process where signals are involved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.config import CommonSettings
from ferry.runtime import (
    EXIT_BUDGET,
    EXIT_DEADLINE,
    EXIT_FAILED,
    EXIT_OK,
    RunContext,
    Runner,
    RunOutcome,
    Schedule,
    Worker,
)
from tests.conftest import REPO
from tests.runtime.sample_worker import SampleWorker, start

# How long a test waits for a child to reach a state before giving up.
WAIT_S = 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {
        **base,
        "FERRY_STATE_DIR": str(tmp_path / "state"),
        "FERRY_HEARTBEAT_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }


def stats(env: dict[str, str]) -> dict[str, object]:
    path = Path(env["FERRY_STATE_DIR"]) / "sample.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def wait_for_state(env: dict[str, str], state: str) -> dict[str, object]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            data = stats(env)
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        if data.get("state") == state:
            return data
        time.sleep(0.05)
    raise AssertionError(f"worker never reached state {state!r}")


def finish(proc: subprocess.Popen[str], timeout: float = WAIT_S) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_stop_during_startup_delay_exits_at_once_with_0(env: dict[str, str]) -> None:
    proc = start(env, "--delay-s", "300")
    wait_for_state(env, "starting")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == EXIT_OK
    assert time.monotonic() - sent < 5
    assert "worker_stop worker=sample reason=signal runs_completed=0" in out
    assert stats(env)["runs_completed"] == 0


def test_stop_during_a_long_run_lets_it_finish_and_exits_0(
    env: dict[str, str],
) -> None:
    proc = start(env, "--run-s", "2", "--synced", "7")
    wait_for_state(env, "running")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == EXIT_OK, out
    assert "run_done worker=sample instance=sample synced=7 pages=1" in out
    assert stats(env)["runs_completed"] == 1
    assert stats(env)["state"] == "stopping"


def test_run_overrunning_the_deadline_exits_nonzero_and_says_so(
    env: dict[str, str],
) -> None:
    env["FERRY_SHUTDOWN_DEADLINE_S"] = "1"
    proc = start(env, "--run-s", "30")
    wait_for_state(env, "running")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == EXIT_DEADLINE
    assert "shutdown_overrun worker=sample" in out
    assert 'abandoned="run in flight"' in out
    assert "deadline_s=1.0 exit_code=4" in out


def test_second_signal_starts_nothing_new(env: dict[str, str]) -> None:
    proc = start(env, "--run-s", "1.5", "--interval-s", "0.01")
    wait_for_state(env, "running")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == EXIT_OK
    assert "signal_repeated worker=sample signals=2" in out
    assert out.count("run_done") == 1


def test_error_budget_exits_with_its_code(env: dict[str, str]) -> None:
    env["FERRY_ERROR_BUDGET_FAILURES"] = "3"
    env["FERRY_ERROR_WINDOW_RUNS"] = "5"
    proc = start(env, "--fail", "--interval-s", "0.01")
    code, out = finish(proc)
    assert code == EXIT_BUDGET
    assert out.count("run_failed worker=sample") == 3
    assert "error_budget_exhausted worker=sample instance=sample failures=3" in out
    data = stats(env)
    assert data["runs_failed"] == 3
    assert data["errors_in_window"] == 3
    assert data["last_error"] == "RuntimeError: sample failure 3"


def test_once_exit_status_tells_success(env: dict[str, str]) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.runtime.sample_worker",
            "--once",
            "--delay-s",
            "300",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    failed = subprocess.run(
        [sys.executable, "-m", "tests.runtime.sample_worker", "--once", "--fail"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert ok.returncode == EXIT_OK, ok.stderr
    assert failed.returncode == EXIT_FAILED
    assert "run_failed worker=sample" in failed.stderr


# -- in-process: the schedule and the stats -------------------------------


def settings(tmp_path: Path, **overrides: object) -> CommonSettings:
    values: dict[str, object] = {"state_dir": tmp_path, "heartbeat_s": 0.05}
    values.update(overrides)
    return CommonSettings.model_validate(values)


def stop_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    return timer


def test_overlapping_ticks_are_skipped_and_counted(tmp_path: Path) -> None:
    worker = SampleWorker(Schedule(interval_s=0.1), run_s=0.6, fail=False, synced=1)
    runner = Runner(worker, settings(tmp_path))
    stop_after(1.0)
    assert runner.serve() == EXIT_OK
    data = json.loads((tmp_path / "sample.json").read_text())
    assert worker.runs == 2
    assert data["runs_skipped_overlap"] >= 3
    assert data["runs_completed"] == 2


class ScriptedWorker(Worker):
    """Runs succeed, fail or do nothing in the order given."""

    name = "scripted"

    def __init__(self, script: list[str]) -> None:
        self.schedule = Schedule(interval_s=0.01)
        self.script = script
        self.failures_seen = 0

    def run_once(self, ctx: RunContext) -> RunOutcome:
        step = self.script.pop(0) if self.script else "idle"
        if not self.script:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == "fail":
            raise ValueError("scripted failure")
        if step == "empty":
            return RunOutcome(synced=0)
        if step == "idle":
            return RunOutcome(synced=0)
        return RunOutcome(synced=5)

    def on_failure(self) -> None:
        self.failures_seen += 1


def snapshot_after(tmp_path: Path, script: list[str]) -> dict[str, object]:
    worker = ScriptedWorker(script)
    Runner(worker, settings(tmp_path)).serve()
    data: dict[str, object] = json.loads((tmp_path / "scripted.json").read_text())
    return data


def test_stats_identical_in_shape_on_success_failure_and_empty_runs(
    tmp_path: Path,
) -> None:
    success = snapshot_after(tmp_path / "a", ["ok"])
    failure = snapshot_after(tmp_path / "b", ["fail"])
    empty = snapshot_after(tmp_path / "c", ["empty"])
    assert set(success) == set(failure) == set(empty)
    assert success["last_run_synced"] == 5
    assert failure["last_run_synced"] == 0
    assert empty["last_run_synced"] == 0
    assert failure["last_success_at"] is None
    assert failure["last_attempt_at"] is not None
    assert empty["last_success_at"] is not None
    assert failure["last_error"] == "ValueError: scripted failure"
    for field in (
        "worker",
        "pid",
        "version",
        "started_at",
        "state",
        "heartbeat_at",
        "runs_completed",
        "runs_failed",
        "runs_skipped_overlap",
        "last_attempt_at",
        "last_success_at",
        "last_run_duration_ms",
        "last_run_synced",
        "last_error",
        "errors_in_window",
    ):
        assert field in success


def test_one_success_does_not_reset_the_error_budget(tmp_path: Path) -> None:
    worker = ScriptedWorker(["fail", "ok", "fail", "ok", "fail", "ok"])
    runner = Runner(
        worker, settings(tmp_path, error_budget_failures=3, error_window_runs=10)
    )
    assert runner.serve() == EXIT_BUDGET
    assert worker.failures_seen == 3


def test_wake_during_a_run_runs_again_after_it(tmp_path: Path) -> None:
    class Waking(Worker):
        name = "waking"
        schedule = Schedule(interval_s=3600)

        def __init__(self) -> None:
            self.runs = 0
            self.wake: Callable[[], None] = lambda: None

        def attach(self, wake: Callable[[], None]) -> None:
            self.wake = wake

        def run_once(self, ctx: RunContext) -> RunOutcome:
            self.runs += 1
            if self.runs == 1:
                self.wake()
                time.sleep(0.2)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return RunOutcome()

    worker = Waking()
    assert Runner(worker, settings(tmp_path)).serve() == EXIT_OK
    assert worker.runs == 2
