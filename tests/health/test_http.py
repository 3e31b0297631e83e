"""The optional HTTP health endpoint: loopback only, bearer token or nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferry.config import CommonSettings, load
from ferry.errors import ConfigError
from ferry.health.http import REQUEST_TIMEOUT_S, HealthServer
from ferry.health.settings import HealthSettings
from ferry.runtime.stats import iso, utc_now
from tests.conftest import run_ferry

# A test token, not a secret of anything.
TOKEN = "s3cret-token-of-enough-length"  # noqa: S105
# Time for the server to notice the timeout and close, on a loaded machine.
CLOSE_MARGIN_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthServer]:
    tmp_path = tmp_path_factory.mktemp("http")
    state = tmp_path / "state"
    state.mkdir()
    (state / "quota-sync.json").write_text(
        json.dumps({"worker": "quota-sync", "pid": 1, "heartbeat_at": iso(utc_now())})
    )
    settings = HealthSettings.model_validate(
        {"run_dir": tmp_path / "run", "http_port": 1, "http_token": TOKEN}
    )
    common = CommonSettings.model_validate(
        {"state_dir": state, "heartbeat_stale_s": 60}
    )
    running = HealthServer(settings, common, port=0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def url(server: HealthServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def test_endpoint_binds_to_loopback_only(server: HealthServer) -> None:
    assert server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-of-enough-length"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
@pytest.mark.parametrize("path", ["/health", "/status", "/other"])
def test_requests_without_the_token_get_401_and_nothing_else(
    server: HealthServer, headers: dict[str, str], path: str
) -> None:
    response = httpx.get(url(server, path), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ferry"'
    assert response.json() == {"error": "unauthorized"}


def test_health_with_the_token_answers_with_the_problems(
    server: HealthServer,
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(url(server, "/health"), headers=auth)
    # No supervisord runs here, which is itself a problem to report.
    assert response.status_code == 503
    body = response.json()
    assert body["healthy"] is False
    assert body["problems"][0].startswith("supervisord is not reachable at ")

    status = httpx.get(url(server, "/status"), headers=auth)
    assert status.status_code == 200
    assert [row["name"] for row in status.json()["processes"]] == ["quota-sync"]
    assert httpx.get(url(server, "/other"), headers=auth).status_code == 404


def test_enabling_the_endpoint_without_a_token_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FERRY_HEALTH_HTTP_PORT", "8899")
    monkeypatch.delenv("FERRY_HEALTH_HTTP_TOKEN", raising=False)
    with pytest.raises(ConfigError) as caught:
        load(HealthSettings)
    assert str(caught.value) == (
        "FERRY_HEALTH_HTTP_TOKEN is required when FERRY_HEALTH_HTTP_PORT is set,"
        " got None"
    )


def test_a_short_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    settings = HealthSettings.model_validate(
        {"run_dir": tmp_path, "http_port": 1, "http_token": "short"}
    )
    common = CommonSettings.model_validate({"state_dir": tmp_path})
    with pytest.raises(ConfigError) as caught:
        HealthServer(settings, common, port=0)
    assert str(caught.value) == (
        "FERRY_HEALTH_HTTP_TOKEN must be at least 16 characters, got 5"
    )


def test_the_listener_refuses_to_start_with_the_endpoint_on_and_no_token(
    ferry_env: dict[str, str],
) -> None:
    env = {**ferry_env, "FERRY_HEALTH_HTTP_PORT": "8899"}
    done = run_ferry("health-listener", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ferry: configuration error: FERRY_HEALTH_HTTP_TOKEN is required when"
        " FERRY_HEALTH_HTTP_PORT is set, got None"
    )
    assert done.stdout == ""


def test_an_idle_connection_is_closed_instead_of_holding_a_thread(
    server: HealthServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        # Half a request line, then nothing, as a stuck or hostile client.
        idle.sendall(b"GET /health HTTP/1.1\r\n")
        idle.settimeout(REQUEST_TIMEOUT_S + CLOSE_MARGIN_S)
        started = time.monotonic()
        assert idle.recv(1024) == b""
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + CLOSE_MARGIN_S
    # The server still answers everyone else.
    assert httpx.get(url(server, "/health")).status_code == 401


def test_a_query_string_does_not_change_the_answer(server: HealthServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(url(server, "/health?nocache=1"), headers=auth)
    assert response.status_code == 503
    assert response.json()["healthy"] is False
    assert httpx.get(url(server, "/status?x"), headers=auth).status_code == 200
    assert httpx.get(url(server, "/health?x"), headers={}).status_code == 401


def test_a_port_already_taken_stops_the_listener_with_one_line(
    ferry_env: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **ferry_env,
            "FERRY_HEALTH_HTTP_PORT": str(port),
            "FERRY_HEALTH_HTTP_TOKEN": TOKEN,
        }
        done = run_ferry("health-listener", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"ferry: configuration error: FERRY_HEALTH_HTTP_PORT {port} cannot be"
        " bound on 127.0.0.1: Address already in use; choose a free port"
    )
    assert done.stdout == ""
