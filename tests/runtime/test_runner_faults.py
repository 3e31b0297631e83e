"""The shared runtime and its configuration under abuse: a reviewer's fault tests.

Signals at odd moments, hung runs, the stats file while it is rewritten, and
configuration that is wrong in every way an operator can get it wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from ferry.config import CommonSettings
from ferry.runtime import EXIT_CONFIG, EXIT_DEADLINE, EXIT_OK, Runner, Schedule
from tests.conftest import REPO, ferry_cmd, run_ferry
from tests.runtime.sample_worker import SampleWorker
from tests.runtime.sample_worker import start as start_sample

WAIT_S = 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {
        **base,
        "FERRY_STATE_DIR": str(tmp_path / "state"),
        "FERRY_HEARTBEAT_S": "0.1",
        "PYTHONUNBUFFERED": "1",
    }


def read_stats(path: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def wait_for(path: Path, state: str) -> dict[str, object]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        data = read_stats(path)
        if data.get("state") == state:
            return data
        time.sleep(0.02)
    raise AssertionError(f"never reached state {state!r}")


def age_s(stamp: object) -> float:
    moment = datetime.fromisoformat(str(stamp))
    return time.time() - moment.timestamp()


# -- schedule and stats --------------------------------------------------------


def test_back_to_back_worker_counts_no_skipped_ticks(tmp_path: Path) -> None:
    worker = SampleWorker(Schedule(interval_s=0), run_s=0.4, fail=False, synced=1)
    settings = CommonSettings.model_validate(
        {"state_dir": tmp_path, "heartbeat_s": 0.05}
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    assert Runner(worker, settings).serve() == EXIT_OK
    data = json.loads((tmp_path / "sample.json").read_text())
    assert worker.runs >= 2
    assert data["runs_skipped_overlap"] == 0


def test_stats_file_is_always_complete_json_while_rewritten(tmp_path: Path) -> None:
    worker = SampleWorker(
        Schedule(interval_s=0.002), run_s=0.0005, fail=False, synced=1
    )
    settings = CommonSettings.model_validate(
        {"state_dir": tmp_path, "heartbeat_s": 0.001}
    )
    path = tmp_path / "sample.json"
    prom = tmp_path / "sample.prom"
    problems: list[str] = []
    stop = threading.Event()
    reads = 0

    def reader() -> None:
        nonlocal reads
        last = -1
        while not stop.is_set():
            try:
                data = json.loads(path.read_text())
                text = prom.read_text()
            except FileNotFoundError:
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"torn json: {exc}")
                continue
            reads += 1
            if "ferry_runs_completed" not in text:
                problems.append("prom file without runs_completed")
            done = int(str(data["runs_completed"]))
            if done < last:
                problems.append(f"runs_completed went back from {last} to {done}")
            last = max(last, done)

    thread = threading.Thread(target=reader)
    thread.start()
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert Runner(worker, settings).serve() == EXIT_OK
    finally:
        stop.set()
        thread.join()
    assert reads > 100
    assert problems == []


def test_heartbeat_goes_stale_while_a_run_hangs(env: dict[str, str]) -> None:
    path = Path(env["FERRY_STATE_DIR"]) / "sample.json"
    proc = start_sample(env, "--run-s", "3")
    try:
        wait_for(path, "running")
        time.sleep(2.0)
        data = read_stats(path)
        assert data["state"] == "running"
        assert age_s(data["heartbeat_at"]) > 1.5
    finally:
        proc.kill()
        proc.communicate()


# -- signals -------------------------------------------------------------------


def test_sigint_during_a_run_lets_it_finish_and_exits_0(env: dict[str, str]) -> None:
    path = Path(env["FERRY_STATE_DIR"]) / "sample.json"
    proc = start_sample(env, "--run-s", "1", "--interval-s", "0.01")
    wait_for(path, "running")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == EXIT_OK, out
    assert "Traceback" not in out
    assert out.count("run_done") == 1


def test_signal_storm_during_a_run_starts_nothing_and_exits_0(
    env: dict[str, str],
) -> None:
    path = Path(env["FERRY_STATE_DIR"]) / "sample.json"
    proc = start_sample(env, "--run-s", "1", "--interval-s", "0.01")
    wait_for(path, "running")
    for number in range(30):
        proc.send_signal(signal.SIGTERM if number % 2 else signal.SIGINT)
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == EXIT_OK, out
    assert "Traceback" not in out
    assert out.count("run_done") == 1


def test_quota_sync_stop_during_its_startup_delay_exits_at_once(
    ferry_env: dict[str, str], state_dir: Path
) -> None:
    proc = subprocess.Popen(
        ferry_cmd("run", "quota-sync"),
        env=ferry_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(state_dir / "quota-sync.json", "starting")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == EXIT_OK, err
    assert time.monotonic() - sent < 3
    assert "run_done" not in err


def test_quota_sync_hung_on_a_table_lock_goes_stale_and_overruns_the_deadline(
    ferry_env: dict[str, str], state_dir: Path, database_url: str
) -> None:
    env = {
        **ferry_env,
        "FERRY_QUOTA_SYNC_STARTUP_DELAY_S": "0",
        "FERRY_HEARTBEAT_S": "0.1",
        "FERRY_SHUTDOWN_DEADLINE_S": "1",
    }
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE quota_usage IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            ferry_cmd("run", "quota-sync"),
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(state_dir / "quota-sync.json", "running")
            time.sleep(1.5)
            data = read_stats(state_dir / "quota-sync.json")
            assert data["state"] == "running"
            assert age_s(data["heartbeat_at"]) > 1.0
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == EXIT_DEADLINE, err
    assert "shutdown_overrun worker=quota-sync" in err


# -- configuration ---------------------------------------------------------------


def one_config_line(done: subprocess.CompletedProcess[str], setting: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ferry: configuration error:"), lines[0]
    assert setting in lines[0], lines[0]


def start_up(
    env: dict[str, str], setting: str, value: str
) -> subprocess.CompletedProcess[str]:
    """`ferry run quota-sync` (no --once, default startup delay) with one setting.

    Start-up either refuses the setting at once or is still waiting for its
    first run a few seconds later, which fails the test.
    """
    try:
        return run_ferry("run", "quota-sync", env={**env, setting: value}, timeout=4)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{setting}={value!r} was accepted: still running after 4 s")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("FERRY_QUOTA_SYNC_INTERVAL_S", "0"),
        ("FERRY_QUOTA_SYNC_INTERVAL_S", "-5"),
        ("FERRY_QUOTA_SYNC_INTERVAL_S", "nan"),
        ("FERRY_QUOTA_SYNC_STARTUP_DELAY_S", "-1"),
        ("FERRY_QUOTA_SYNC_JITTER_S", "x"),
        ("FERRY_QUOTA_SYNC_SCAN_COUNT", "1.5"),
        ("FERRY_QUOTA_SYNC_SCAN_COUNT", "1000000"),
        ("FERRY_QUOTA_SYNC_KEY_PATTERN", "quota:{metric}:{account}"),
        ("FERRY_QUOTA_SYNC_KEY_PATTERN", "quota:{account}:{metric"),
        ("FERRY_SHUTDOWN_DEADLINE_S", "0"),
        ("FERRY_ERROR_BUDGET_FAILURES", "0"),
        ("FERRY_ERROR_WINDOW_RUNS", "many"),
        ("FERRY_HEARTBEAT_S", "-1"),
        ("FERRY_HEARTBEAT_STALE_S", ""),
        ("FERRY_LOG_LEVEL", "loud"),
        ("FERRY_PROCESS_NUM", "-1"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_each_bad_setting_gives_one_line_naming_it(
    ferry_env: dict[str, str], setting: str, value: str
) -> None:
    done = run_ferry("run", "quota-sync", "--once", env={**ferry_env, setting: value})
    one_config_line(done, setting)


@pytest.mark.parametrize(
    "setting",
    [
        "FERRY_QUOTA_SYNC_INTERVAL_S",
        "FERRY_QUOTA_SYNC_JITTER_S",
        "FERRY_SHUTDOWN_DEADLINE_S",
    ],
)
def test_infinite_durations_are_refused(
    ferry_env: dict[str, str], setting: str
) -> None:
    done = start_up(ferry_env, setting, "inf")
    one_config_line(done, setting)


def test_state_dir_that_is_a_file_gives_one_line(
    ferry_env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    env = {**ferry_env, "FERRY_STATE_DIR": str(blocker)}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    one_config_line(done, "FERRY_STATE_DIR")


def test_instance_name_that_is_not_a_file_name_is_refused(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "FERRY_INSTANCE": "quota/sync"}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    one_config_line(done, "FERRY_INSTANCE")


def test_config_file_missing_or_not_toml_gives_one_line(
    ferry_env: dict[str, str], tmp_path: Path
) -> None:
    missing = run_ferry(
        "run",
        "quota-sync",
        "--once",
        env={**ferry_env, "FERRY_CONFIG": str(tmp_path / "nope.toml")},
    )
    one_config_line(missing, "FERRY_CONFIG")
    broken = tmp_path / "broken.toml"
    broken.write_text("[quota_sync\ninterval_s = 5\n")
    done = run_ferry(
        "run", "quota-sync", "--once", env={**ferry_env, "FERRY_CONFIG": str(broken)}
    )
    one_config_line(done, "FERRY_CONFIG")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("quota_sync = 5\n")
    done = run_ferry(
        "run", "quota-sync", "--once", env={**ferry_env, "FERRY_CONFIG": str(wrong)}
    )
    one_config_line(done, "quota_sync")
    bad_value = tmp_path / "bad-value.toml"
    bad_value.write_text("[quota_sync]\nscan_count = [1]\n")
    done = run_ferry(
        "run", "quota-sync", "--once", env={**ferry_env, "FERRY_CONFIG": str(bad_value)}
    )
    one_config_line(done, "SCAN_COUNT")


def test_config_file_not_utf8_gives_one_line(
    ferry_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'log_level = "INFO" # caf\xe9\n')
    done = run_ferry(
        "run", "quota-sync", "--once", env={**ferry_env, "FERRY_CONFIG": str(path)}
    )
    one_config_line(done, "FERRY_CONFIG")


def test_unknown_key_in_config_file_is_refused(
    ferry_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[quota_sync]\nintreval_s = 5\n")
    done = run_ferry(
        "run", "quota-sync", "--once", env={**ferry_env, "FERRY_CONFIG": str(path)}
    )
    one_config_line(done, "intreval_s")


def test_unusable_redis_url_stops_start_up(ferry_env: dict[str, str]) -> None:
    done = start_up(ferry_env, "REDIS_URL", "redis://127.0.0.1:notaport/0")
    one_config_line(done, "REDIS_URL")


def test_unparsable_database_url_stops_start_up(ferry_env: dict[str, str]) -> None:
    done = start_up(ferry_env, "DATABASE_URL", "postgresql://127.0.0.1:notaport/x")
    one_config_line(done, "DATABASE_URL")


def test_error_budget_larger_than_its_window_is_refused(
    ferry_env: dict[str, str],
) -> None:
    env = {
        **ferry_env,
        "FERRY_ERROR_BUDGET_FAILURES": "20",
        "FERRY_ERROR_WINDOW_RUNS": "10",
    }
    done = run_ferry("run", "quota-sync", "--once", env=env)
    one_config_line(done, "FERRY_ERROR")


def test_heartbeat_slower_than_the_stale_limit_is_refused(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "FERRY_HEARTBEAT_S": "120", "FERRY_HEARTBEAT_STALE_S": "60"}
    done = run_ferry("run", "quota-sync", "--once", env=env)
    one_config_line(done, "FERRY_HEARTBEAT")
