"""A real supervisord running the repository's supervisord.conf, for tests.

The stack lives in a short temporary folder (a unix socket path must stay
under about 100 bytes). Its configuration file is a small wrapper that
includes the repository's `supervisord.conf` unchanged, then optionally an
override file, the way an operator would adjust one program on one host.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ferry.errors import SupervisorError
from ferry.health.supervisor import ProcessInfo, Supervisor
from tests.conftest import REPO, run_ferry

# Every process of supervisord.conf, by supervisord's process name.
PROCESSES = (
    "audit_0",
    "audit_1",
    "daily-rollup",
    "heartbeat-watch",
    "quota-sync",
    "webhooks_0",
    "webhooks_1",
)
WORKER_PROCESSES = tuple(name for name in PROCESSES if name != "heartbeat-watch")
# supervisord answers within milliseconds; anything slower is a hang.
RPC_TIMEOUT_S = 45.0
# startsecs is 5 s; with seven Pythons starting at once on two cores the
# whole stack needs a few seconds more.
STARTUP_TIMEOUT_S = 40.0
POLL_S = 0.1

# Short schedules so that a test sees runs within a second or two. The
# heartbeat limit stays well above the heartbeat and above the longest wait
# a run makes without reporting progress (the audit block below).
FAST_ENV = {
    "FERRY_HEARTBEAT_S": "0.5",
    "FERRY_HEARTBEAT_STALE_S": "4",
    "FERRY_QUOTA_SYNC_STARTUP_DELAY_S": "0",
    "FERRY_QUOTA_SYNC_INTERVAL_S": "1",
    "FERRY_QUOTA_SYNC_JITTER_S": "0",
    "FERRY_DAILY_ROLLUP_STARTUP_DELAY_S": "0",
    "FERRY_DAILY_ROLLUP_INTERVAL_S": "1",
    "FERRY_DAILY_ROLLUP_JITTER_S": "0",
    "FERRY_WEBHOOKS_POLL_INTERVAL_S": "1",
    "FERRY_WEBHOOKS_AUTO_INTERVAL_S": "1",
    "FERRY_AUDIT_BLOCK_MS": "500",
}

T = TypeVar("T")


class Stack:
    """One supervisord with the repository's configuration."""

    def __init__(self, env: dict[str, str], override: str = "") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ferry-sv-", dir="/tmp"))
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        for folder in (self.log_dir, self.run_dir):
            folder.mkdir()
        self.env = {
            **env,
            **FAST_ENV,
            "FERRY_PYTHON": sys.executable,
            "FERRY_LOG_DIR": str(self.log_dir),
            "FERRY_RUN_DIR": str(self.run_dir),
        }
        self.state_dir = Path(self.env["FERRY_STATE_DIR"])
        files = [str(REPO / "supervisord.conf")]
        if override:
            (self.root / "override.conf").write_text(override)
            files.append("override.conf")
        self.conf = self.root / "supervisord.conf"
        # supervisorctl reads no [include], so it needs its section here.
        self.conf.write_text(
            f"[include]\nfiles = {' '.join(files)}\n\n[supervisorctl]\n"
            f"serverurl = unix://{self.run_dir / 'supervisor.sock'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.rpc = Supervisor(self.run_dir / "supervisor.sock", timeout_s=RPC_TIMEOUT_S)

    def start(self) -> Stack:
        supervisord = Path(sys.executable).parent / "supervisord"
        self.proc = subprocess.Popen(
            [str(supervisord), "-n", "-c", str(self.conf)],
            env=self.env,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.wait_for(self._answers, "supervisord to answer", STARTUP_TIMEOUT_S)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.rpc.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- looking ----------------------------------------------------------

    def processes(self) -> dict[str, ProcessInfo]:
        return {info.name: info for info in self.rpc.processes()}

    def wait_for(self, probe: Callable[[], T | None], what: str, timeout_s: float) -> T:
        """Poll `probe` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = probe()
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"supervisord exited: {err.decode()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what};"
                    f" states: {self._states()}"
                )
            time.sleep(POLL_S)

    def wait_running(self, *names: str) -> dict[str, ProcessInfo]:
        """Wait until each named process (default: all) is RUNNING."""
        wanted = names or PROCESSES

        def running() -> dict[str, ProcessInfo] | None:
            found = self.processes()
            ok = all(
                name in found and found[name].state == "RUNNING" for name in wanted
            )
            return found if ok else None

        return self.wait_for(
            running, f"RUNNING: {', '.join(wanted)}", STARTUP_TIMEOUT_S
        )

    def wait_state(self, name: str, states: set[str], timeout_s: float) -> str:
        def reached() -> str | None:
            state = self.processes()[name].state
            return state if state in states else None

        return self.wait_for(reached, f"{name} in {sorted(states)}", timeout_s)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def supervisord_log(self) -> str:
        return self.log("supervisord")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        supervisorctl = Path(sys.executable).parent / "supervisorctl"
        return subprocess.run(
            [str(supervisorctl), "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def ferry(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ferry(*args, env=self.env)

    def _answers(self) -> bool:
        try:
            self.rpc.processes()
        except SupervisorError:
            return False
        return True

    def _states(self) -> dict[str, str]:
        try:
            return {name: info.state for name, info in self.processes().items()}
        except SupervisorError as exc:
            return {"supervisord": str(exc)}
