"""`ferry run webhooks` as real processes: side by side, killed, stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from tests.conftest import REPO, ferry_cmd, run_ferry
from tests.servers import free_port
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver

WAIT_S = 30.0
WAKEUP_KEY = "ferry:test:wakeup"


class Process:
    """A `ferry run webhooks` child with its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._file: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            ferry_cmd("run", "webhooks", *args),
            env=env,
            cwd=REPO,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self._file.close()
        return code

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def env(ferry_env: dict[str, str]) -> dict[str, str]:
    return {
        **ferry_env,
        "FERRY_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8,::1",
        "FERRY_WEBHOOKS_POLL_INTERVAL_S": "0.2",
        "FERRY_WEBHOOKS_POLL_JITTER_S": "0",
        "FERRY_WEBHOOKS_WAKEUP_KEY": WAKEUP_KEY,
        "FERRY_HEARTBEAT_S": "0.2",
    }


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(env: dict[str, str], *args: str, name: str = "webhooks") -> Process:
        process = Process({**env, "FERRY_INSTANCE": name}, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count(db: h.Conn, where: str) -> int:
    query = f"SELECT count(*) FROM upload_webhooks WHERE {where}"  # noqa: S608
    row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def stats(state_dir: Path, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((state_dir / f"{name}.json").read_text())
    return data


def ready(state_dir: Path, name: str) -> bool:
    path = state_dir / f"{name}.json"
    return path.exists() and stats(state_dir, name).get("runs_completed", 0) != 0


def test_two_processes_deliver_each_webhook_once_and_never_concurrently(
    env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    state_dir: Path,
    processes: Callable[..., Process],
) -> None:
    env = {**env, "FERRY_WEBHOOKS_MAX_IN_FLIGHT": "50"}
    first = processes(env, name="webhooks-1")
    second = processes(env, name="webhooks-2")
    wait_for(lambda: ready(state_dir, "webhooks-1"), "first process")
    wait_for(lambda: ready(state_dir, "webhooks-2"), "second process")

    total = 3000
    for n in range(30):
        endpoint_id = h.add_endpoint(db, receiver.url(f"/slow?s=0.05&e={n}"))
        h.add_webhooks(db, endpoint_id, total // 30)
    wait_for(lambda: count(db, "status = 'delivered'") == total, "every delivery")

    assert first.stop() == 0
    assert second.stop() == 0
    record = receiver.record
    with record.lock:
        assert record.overlaps == []
        assert len(record.requests) == total
        assert set(record.seen.values()) == {1}
    assert count(db, "attempts = 1 AND status = 'delivered'") == total
    delivered = [
        int(str(stats(state_dir, name)["delivered"]))
        for name in ("webhooks-1", "webhooks-2")
    ]
    assert sum(delivered) == total
    assert min(delivered) > 0


def test_kill_9_mid_batch_redelivers_after_the_lease_with_the_same_id(
    env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    state_dir: Path,
    processes: Callable[..., Process],
) -> None:
    env = {
        **env,
        "FERRY_WEBHOOKS_LEASE_S": "4.5",
        "FERRY_WEBHOOKS_ATTEMPT_DEADLINE_S": "1.5",
    }
    ids: list[int] = []
    for _ in range(4):
        ids += h.add_webhooks(db, h.add_endpoint(db, receiver.url("/stall/1")), 5)
    victim = processes(env)
    wait_for(lambda: len(receiver.requests()) == 20, "the first attempts")
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    assert count(db, "status = 'delivering'") == 20

    heir = processes(env, name="heir")
    wait_for(lambda: count(db, "status = 'delivered'") == 20, "redelivery")
    assert heir.stop() == 0

    seen = receiver.requests()
    assert len(seen) == 40
    # The second attempts waited for the lease, then went out under the
    # same webhook-id as the first, killed ones.
    assert min(r.at for r in seen[20:]) > min(r.at for r in seen[:20]) + 3.0
    first_ids = sorted(r.headers["webhook-id"] for r in seen[:20])
    assert sorted(r.headers["webhook-id"] for r in seen[20:]) == first_ids
    for webhook_id in ids:
        row = h.webhook(db, webhook_id)
        assert (row["status"], row["attempts"]) == ("delivered", 2)
        assert [
            (a["attempt"], a["status_code"]) for a in h.attempts(db, webhook_id)
        ] == [(2, 200)]


def test_sigterm_during_a_batch_finishes_in_flight_and_releases_the_rest(
    env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    processes: Callable[..., Process],
) -> None:
    env = {**env, "FERRY_WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT": "3"}
    endpoint_id = h.add_endpoint(db, receiver.url("/slow?s=1"))
    h.add_webhooks(db, endpoint_id, 30)
    worker = processes(env)
    wait_for(lambda: len(receiver.requests()) == 3, "the first attempts")

    stopped = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - stopped < 5.0

    assert count(db, "status = 'delivering' OR claim_token IS NOT NULL") == 0
    assert count(db, "status = 'delivered'") == len(receiver.requests()) == 3
    assert count(db, "status = 'pending' AND attempts = 0") == 27
    log = worker.text()
    assert "shutdown_drain worker=webhooks released_waiting=27 in_flight=3" in log
    assert "cancelled_in_flight=0" in log
    assert "worker_stop worker=webhooks reason=signal" in log


def test_wakeup_push_delivers_without_waiting_for_the_poll(
    env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    rclient: redis.Redis,
    state_dir: Path,
    processes: Callable[..., Process],
) -> None:
    env = {**env, "FERRY_WEBHOOKS_POLL_INTERVAL_S": "600"}
    worker = processes(env)
    wait_for(lambda: ready(state_dir, "webhooks"), "the first, empty run")

    [webhook_id] = h.add_webhooks(db, h.add_endpoint(db, receiver.url("/ok")))
    pushed = time.monotonic()
    rclient.rpush(WAKEUP_KEY, str(webhook_id))
    wait_for(lambda: count(db, "status = 'delivered'") == 1, "the woken delivery", 10)

    assert time.monotonic() - pushed < 10
    assert worker.stop() == 0


def test_redis_down_leaves_polling_working_with_one_warning(
    env: dict[str, str],
    db: h.Conn,
    receiver: Receiver,
    state_dir: Path,
    processes: Callable[..., Process],
) -> None:
    env = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    worker = processes(env)
    wait_for(lambda: ready(state_dir, "webhooks"), "the first run")
    time.sleep(2.0)
    h.add_webhooks(db, h.add_endpoint(db, receiver.url("/ok")))
    wait_for(lambda: count(db, "status = 'delivered'") == 1, "the polled delivery")

    assert worker.stop() == 0
    assert worker.text().count("wakeup_unavailable") == 1


def test_once_writes_counters_to_the_stats_file_and_no_secret_anywhere(
    env: dict[str, str], db: h.Conn, receiver: Receiver, state_dir: Path
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok"), old_secrets=(h.OLD_SECRET,))
    h.add_webhooks(db, endpoint_id, 2)
    h.add_webhooks(db, h.add_endpoint(db, receiver.url("/status/500")))
    refused = h.add_endpoint(db, f"http://10.255.0.1:{free_port()}/")
    h.add_webhooks(db, refused)

    done = run_ferry(
        "run", "webhooks", "--once", env={**env, "FERRY_LOG_LEVEL": "DEBUG"}
    )

    assert done.returncode == 0, done.stderr
    figures = stats(state_dir, "webhooks")
    expected = {
        "claimed": 4,
        "delivered": 2,
        "retried": 2,
        "failed": 0,
        "refused": 1,
        "in_flight": 0,
        "promoted": 0,
        "endpoints_disabled": 0,
    }
    assert {k: figures[k] for k in expected} == expected
    assert "run_done worker=webhooks instance=webhooks synced=2 claimed=4" in (
        done.stderr
    )
    # One line per run, and no endpoint URL (it may carry a token).
    assert "HTTP Request" not in done.stderr
    assert "/status/500" not in done.stderr
    prom = (state_dir / "webhooks.prom").read_text()
    [line] = [x for x in prom.splitlines() if x.startswith("ferry_delivered{")]
    assert line.endswith(" 2.0")
    for secret in (h.SECRET, h.OLD_SECRET):
        body = secret.removeprefix("whsec_")
        assert body not in done.stderr
        assert body not in (state_dir / "webhooks.json").read_text()
        assert body not in prom
