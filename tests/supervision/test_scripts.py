"""`scripts/up` and `scripts/down`, the README's commands, for real.

Each test runs the scripts in a copy of the checkout's run files in a
temporary folder, so that its `var/` is its own, with the checkout's
virtual environment linked in. The copy's `scripts/bootstrap` does nothing:
installing and building is not what these tests are about, and the real one
would rebuild the package from the copy into the shared environment.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO
from tests.servers import free_port

# Copied into each test's checkout: everything scripts/up reads.
RUN_FILES = ("supervisord.conf", "supervisord.dev.conf", "deploy/dev", "scripts")
# scripts/up waits up to 90 s for everything to be RUNNING; a test that
# reaches that is broken, and the margin covers a loaded machine.
UP_TIMEOUT_S = 150
# What scripts/up prints as it decides, for a dead REDIS_URL and DATABASE_URL.
DEAD_URL_REDIS = "redis://127.0.0.1:1/0"
DEAD_URL_POSTGRES = "postgresql://postgres@127.0.0.1:1/postgres"
# A small demo keyspace: seeding is not what is measured here.
DEMO_ACCOUNTS = "50"


class Checkout:
    """A copy of the run files with its own var/."""

    def __init__(self, env: dict[str, str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ferry-up-", dir="/tmp"))
        # The private Postgres runs as the postgres user when tests run as
        # root, and must reach var/ below this folder.
        self.root.chmod(0o755)
        for name in RUN_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, self.root / name)
            else:
                shutil.copy2(source, self.root / name)
        (self.root / ".venv").symlink_to(REPO / ".venv")
        bootstrap = self.root / "scripts" / "bootstrap"
        bootstrap.write_text("#!/bin/sh\nexit 0\n")
        bootstrap.chmod(0o755)
        self.env = env

    def script(self, name: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.root / "scripts" / name)],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
            check=False,
        )

    def supervisord_pid(self) -> int | None:
        path = self.root / "var" / "run" / "supervisord.pid"
        try:
            pid = int(path.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def remove(self) -> None:
        if self.supervisord_pid() is not None:
            self.script("down")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def checkout(ferry_env: dict[str, str]) -> Iterator[Checkout]:
    env = {
        key: value
        for key, value in ferry_env.items()
        if not key.startswith("FERRY_") and key not in ("REDIS_URL", "DATABASE_URL")
    }
    env["FERRY_DEMO_ACCOUNTS"] = DEMO_ACCOUNTS
    env["FERRY_DEMO_RECEIVER_PORT"] = str(free_port())
    made = Checkout(env)
    yield made
    made.remove()


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_up_with_dead_urls_starts_private_servers_twice_safely_and_down_stops_all(
    checkout: Checkout,
) -> None:
    redis_port, postgres_port = free_port(), free_port()
    env = {
        "REDIS_URL": DEAD_URL_REDIS,
        "DATABASE_URL": DEAD_URL_POSTGRES,
        "FERRY_DEV_REDIS_PORT": str(redis_port),
        "FERRY_DEV_POSTGRES_PORT": str(postgres_port),
    }

    up = checkout.script("up", **env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert (
        f"up: no Redis answers at {DEAD_URL_REDIS}; starting a private one at"
        f" redis://127.0.0.1:{redis_port}/0"
    ) in up.stdout
    assert "up: no Postgres answers; starting a private one" in up.stdout
    for name in ("redis", "postgres", "quota-sync", "webhooks_1", "demo-traffic"):
        assert re.search(rf"^\s*{name}\s+RUNNING\s", up.stdout, re.M), up.stdout
    client = redis.Redis(port=redis_port)
    try:
        assert client.exists("quota:acct_000001:uploads") == 1
    finally:
        client.close()
    pid = checkout.supervisord_pid()
    assert pid is not None

    again = checkout.script("up", **env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(
        "up: the stack is already up (scripts/down stops it)\n"
    )
    assert checkout.supervisord_pid() == pid

    down = checkout.script("down")
    assert (down.returncode, down.stdout) == (0, "down: stopped\n"), down.stderr
    assert checkout.supervisord_pid() is None
    assert not port_answers(redis_port) and not port_answers(postgres_port)
    log = (checkout.root / "var" / "log" / "supervisord.log").read_text()
    assert "SIGKILL" not in log
    assert re.findall(r"stopped: (\S+) \(exit status (\d+)\)", log) and all(
        status == "0"
        for _, status in re.findall(r"stopped: (\S+) \(exit status (\d+)\)", log)
    ), log

    twice = checkout.script("down")
    assert (twice.returncode, twice.stdout) == (0, "down: supervisord is not running\n")


def test_down_with_no_stack_says_so(checkout: Checkout) -> None:
    done = checkout.script("down")
    assert (done.returncode, done.stdout) == (
        0,
        "down: no dev stack here (var/env is missing)\n",
    )


def test_up_refuses_a_taken_private_port_at_once_and_starts_nothing(
    checkout: Checkout,
) -> None:
    # Accepts connections (the kernel completes them) and never answers,
    # as a hung server or another program's port would.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        up = checkout.script(
            "up", REDIS_URL=DEAD_URL_REDIS, FERRY_DEV_REDIS_PORT=str(port)
        )
        took_s = time.monotonic() - started

    assert up.returncode == 1
    assert up.stderr.splitlines()[-1] == (
        f"up: cannot start a private Redis: port {port} on 127.0.0.1 is taken (a"
        " server left from an earlier stack, or another program); stop it or set"
        " FERRY_DEV_REDIS_PORT to a free port"
    )
    assert took_s < 20
    assert checkout.supervisord_pid() is None


def test_a_start_that_fails_midway_leaves_nothing_running(
    checkout: Checkout, redis_url: str, database_url: str
) -> None:
    # The seed refuses this setting, after supervisord has started.
    up = checkout.script(
        "up", REDIS_URL=redis_url, DATABASE_URL=database_url, FERRY_DEMO_ACCOUNTS="0"
    )
    assert up.returncode != 0
    assert "FERRY_DEMO_ACCOUNTS" in up.stderr
    assert (
        "up: start-up failed; stopping supervisord (the logs stay in var/log/)"
        in up.stderr
    )
    assert checkout.supervisord_pid() is None
    again = checkout.script("up", REDIS_URL=redis_url, DATABASE_URL=database_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already up" not in again.stdout
