"""Stats files as readers see them: always whole, and valid Prometheus text.

The readers run in their own processes, as `ferry status` and node_exporter
do, so they race the writer for real instead of taking turns on one GIL.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from ferry.runtime.stats import StatsFile, iso, prometheus_text, utc_now
from tests.conftest import REPO, ferry_cmd

# How long the readers read; long enough for thousands of rounds.
READ_S = 2.0
# A stats process that has not written its files by then is broken.
FIRST_WRITE_TIMEOUT_S = 30.0


def snapshot(serial: int, **extra: Any) -> dict[str, Any]:
    return {
        "worker": "quota-sync",
        "instance": "quota-sync",
        "pid": 4242,
        "version": "0.1.0",
        "started_at": "2026-01-02T03:04:05.000Z",
        "state": "running",
        "heartbeat_at": iso(utc_now()),
        "runs_completed": serial,
        "runs_failed": 1,
        "runs_skipped_overlap": 0,
        "last_attempt_at": "2026-01-02T03:05:00.000Z",
        "last_success_at": None,
        "last_run_duration_ms": 812,
        "last_run_synced": 1200,
        "last_error": None,
        "errors_in_window": 1,
        **extra,
    }


def metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def start_reader(*paths: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.health.stats_reader",
            str(READ_S),
            *map(str, paths),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def reader_result(reader: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = reader.communicate(timeout=READ_S + 30)
    assert reader.returncode == 0
    result: dict[str, Any] = json.loads(out)
    return result


def test_readers_only_ever_see_whole_files_while_they_are_rewritten(
    tmp_path: Path,
) -> None:
    stats = StatsFile(tmp_path, "quota-sync")
    # Sizes swing by kilobytes between writes, so a torn or truncated file
    # would fail to parse rather than happen to look whole.
    padding = "x" * 4000
    stats.write(snapshot(0))
    reader = start_reader(stats.json_path, stats.prom_path)

    writes = 0
    while reader.poll() is None:
        stats.write(snapshot(writes, last_error=padding if writes % 2 else None))
        writes += 1
    result = reader_result(reader)

    assert result["failures"] == []
    assert writes > 50
    assert result["rounds"] > 50


def test_stats_files_are_readable_by_other_users(tmp_path: Path) -> None:
    stats = StatsFile(tmp_path, "quota-sync")
    stats.write(snapshot(1))
    for path in (stats.json_path, stats.prom_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_prometheus_text_parses_with_every_numeric_field(tmp_path: Path) -> None:
    stats = StatsFile(tmp_path, "webhooks_1")
    stats.write(
        snapshot(7, worker="webhooks", instance="webhooks_1", delivered=31, retried=2.5)
    )
    found = metrics(stats.prom_path.read_text())
    labels = {"worker": "webhooks", "process": "webhooks_1"}

    assert found["ferry_runs_completed"] == [(labels, 7.0)]
    assert found["ferry_delivered"] == [(labels, 31.0)]
    assert found["ferry_retried"] == [(labels, 2.5)]
    assert found["ferry_last_run_duration_seconds"] == [(labels, 0.812)]
    assert found["ferry_started_timestamp_seconds"] == [(labels, 1767323045.0)]
    assert found["ferry_info"] == [({**labels, "version": "0.1.0"}, 1.0)]
    assert sorted(
        (sample_labels["state"], value) for sample_labels, value in found["ferry_state"]
    ) == [("running", 1.0), ("starting", 0.0), ("stopping", 0.0), ("waiting", 0.0)]
    # Absent values (never succeeded) are left out rather than written as 0.
    assert "ferry_last_success_timestamp_seconds" not in found
    assert not any(name.startswith("ferry_last_error") for name in found)


def test_counter_names_prometheus_refuses_are_cleaned_and_clashes_dropped() -> None:
    text = prometheus_text(
        snapshot(1, **{"dead-lettered": 3, "runs.failed": 9, "flag": True})
    ).decode()
    found = metrics(text)
    assert found["ferry_dead_lettered"][0][1] == 3.0
    # "runs.failed" cleans to the shared field's name; the shared field wins.
    assert found["ferry_runs_failed"][0][1] == 1.0
    assert "ferry_flag" not in found


def test_a_real_worker_writes_whole_files_while_read_hard(
    ferry_env: dict[str, str], state_dir: Path, rclient: redis.Redis
) -> None:
    rclient.mset({f"quota:acct{n}:uploads": n for n in range(2000)})
    env = {
        **ferry_env,
        "FERRY_HEARTBEAT_S": "0.005",
        "FERRY_QUOTA_SYNC_STARTUP_DELAY_S": "0",
        "FERRY_QUOTA_SYNC_INTERVAL_S": "0.05",
        "FERRY_QUOTA_SYNC_JITTER_S": "0",
    }
    worker = subprocess.Popen(
        ferry_cmd("run", "quota-sync"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    json_path = state_dir / "quota-sync.json"
    prom_path = state_dir / "quota-sync.prom"
    try:
        deadline = time.monotonic() + FIRST_WRITE_TIMEOUT_S
        while not prom_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        result = reader_result(start_reader(json_path, prom_path))
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err.decode()
    assert result["failures"] == []
    assert result["rounds"] > 50
    final = json.loads(json_path.read_text())
    assert final["runs_completed"] >= 1
    assert final["rows_written"] == 2000


def test_odd_counter_names_and_values_still_give_text_the_parser_reads() -> None:
    text = prometheus_text(
        snapshot(
            1,
            **{
                "délivrés": 4,
                "9lives": 9,
                "": 1,
                "nan_rate": float("nan"),
                "ceiling": float("inf"),
                "wide": 2**64,
                "beyond_a_double": 10**400,
                "beyond_ms": 10**400,
                "note": "text is not a sample",
            },
        )
    ).decode()
    found = metrics(text)
    assert found["ferry_d_livr_s"][0][1] == 4.0
    assert found["ferry_9lives"][0][1] == 9.0
    assert found["ferry_"][0][1] == 1.0
    assert str(found["ferry_nan_rate"][0][1]) == "nan"
    assert found["ferry_ceiling"][0][1] == float("inf")
    assert found["ferry_wide"][0][1] == float(2**64)
    # No float holds these; they are left out, and the rest still written.
    assert "ferry_beyond_a_double" not in found
    assert "ferry_beyond_seconds" not in found
    assert "ferry_note" not in found
    assert found["ferry_runs_completed"][0][1] == 1.0


def test_a_counter_beyond_a_double_does_not_stop_the_stats_write(
    tmp_path: Path,
) -> None:
    stats = StatsFile(tmp_path, "quota-sync")
    stats.write(snapshot(3, huge=10**400))
    assert json.loads(stats.json_path.read_text())["huge"] == 10**400
    assert metrics(stats.prom_path.read_text())["ferry_runs_completed"][0][1] == 3.0
