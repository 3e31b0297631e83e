"""What supervisord makes of the repository's configuration files.

These read the files through supervisor's own parser (what supervisord runs
is what is checked), and pin the settings whose values are a contract with
the runtime: the shutdown deadline against stopwaitsecs, the exit codes, the
process counts and names, the socket's mode.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from ferry.config import CommonSettings
from ferry.health.settings import HealthSettings
from tests.conftest import REPO

WORKERS = {"quota-sync": 1, "daily-rollup": 1, "webhooks": 2, "audit": 2}


def realize(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Any:
    for variable in ("FERRY_LOG_DIR", "FERRY_RUN_DIR", "FERRY_DEV_DIR"):
        monkeypatch.setenv(variable, str(tmp_path))
    monkeypatch.setenv("FERRY_PYTHON", sys.executable)
    monkeypatch.setenv("FERRY_REPO", str(REPO))
    monkeypatch.setenv("FERRY_DEV_REDIS_PORT", "6390")
    monkeypatch.setenv("FERRY_DEV_POSTGRES_PORT", "5440")
    options = ServerOptions()
    options.realize(args=["-c", str(REPO / name)])
    return options


def programs(options: Any) -> dict[str, list[Any]]:
    return {
        group.name: list(group.process_configs)
        for group in options.process_group_configs
    }


def groups(options: Any) -> dict[str, Any]:
    return {group.name: group for group in options.process_group_configs}


def test_each_worker_runs_its_number_of_processes_with_their_number(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = programs(realize(monkeypatch, tmp_path, "supervisord.conf"))
    assert sorted(found) == sorted([*WORKERS, "heartbeat-watch"])
    for worker, count in WORKERS.items():
        names = [process.name for process in found[worker]]
        if count == 1:
            assert names == [worker]
        else:
            assert names == [f"{worker}_{n}" for n in range(count)]
        for number, process in enumerate(found[worker]):
            assert process.command == f"{sys.executable} -m ferry run {worker}"
            assert process.environment["FERRY_PROCESS_NUM"] == str(number)
            assert process.environment["PYTHONUNBUFFERED"] == "1"


def test_a_stopped_worker_gets_its_deadline_before_any_sigkill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = programs(realize(monkeypatch, tmp_path, "supervisord.conf"))
    default_deadline = CommonSettings.model_fields["shutdown_deadline_s"].default
    for worker in WORKERS:
        for process in found[worker]:
            deadline = float(process.environment["FERRY_SHUTDOWN_DEADLINE_S"])
            assert deadline == default_deadline == 25
            assert process.stopwaitsecs == 30 > deadline
            assert process.stopsignal == signal.SIGTERM
            assert process.stopasgroup and process.killasgroup
            # Only a clean stop is expected; budget and deadline exits restart.
            assert process.exitcodes == [0]
            assert process.autorestart is RestartWhenExitUnexpected
            assert process.startsecs == 5
            assert process.startretries == 3
            assert process.redirect_stderr
            assert process.stdout_logfile == str(tmp_path / f"{process.name}.log")
            assert process.stdout_logfile_maxbytes > 0
            assert process.stdout_logfile_backups > 0


def test_the_listener_ticks_and_outwaits_a_restart_it_has_begun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = realize(monkeypatch, tmp_path, "supervisord.conf")
    found = programs(options)
    (listener,) = found["heartbeat-watch"]
    assert listener.command == f"{sys.executable} -m ferry health-listener"
    pool = groups(options)["heartbeat-watch"]
    assert [event.__name__ for event in pool.pool_events] == ["Tick5Event"]
    assert listener.stopwaitsecs > found["quota-sync"][0].stopwaitsecs
    assert listener.stderr_logfile == str(tmp_path / "heartbeat-watch.log")


def test_the_control_socket_is_owner_only_and_where_ferry_looks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = realize(monkeypatch, tmp_path, "supervisord.conf")
    (server,) = options.server_configs
    assert server["family"].name == "AF_UNIX"
    assert server["chmod"] == 0o700
    assert server["file"] == str(HealthSettings.model_validate({}).socket_path)


def test_a_missing_variable_stops_supervisord_naming_it(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FERRY_PYTHON": sys.executable}
    env["FERRY_RUN_DIR"] = str(tmp_path)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "supervisord"),
            "-n",
            "-c",
            str(REPO / "supervisord.conf"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "ENV_FERRY_LOG_DIR" in done.stderr


def test_the_dev_variant_adds_the_demo_and_holds_what_needs_the_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = programs(realize(monkeypatch, tmp_path, "supervisord.dev.conf"))
    held = {name for name, processes in found.items() if not processes[0].autostart}
    assert held == {*WORKERS, "demo-traffic"}
    assert {"demo-receiver", "heartbeat-watch"} <= set(found) - held
    # The private servers come in only when scripts/up links them.
    assert "redis" not in found and "postgres" not in found
    # Everything else is supervisord.conf's, unchanged.
    assert found["audit"][1].environment["FERRY_PROCESS_NUM"] == "1"
