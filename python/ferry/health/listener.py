"""supervisord event listener: restarts a worker whose heartbeat went stale.

supervisord runs this as `[eventlistener:heartbeat-watch]`, subscribed to
TICK_5. It speaks the listener protocol on stdin and stdout (READY, then one
header line and its payload per event, answered by RESULT) and logs to
stderr. On each tick it builds the same report as `ferry health`; a worker
that supervisord sees as RUNNING but whose heartbeat is older than
`FERRY_HEARTBEAT_STALE_S` is hung, and is restarted, at most once per
`FERRY_HEALTH_RESTART_COOLDOWN_S` per process.

A restart is CONT, stop, start. CONT first because a process stopped by
SIGSTOP cannot act on TERM until it is continued (supervisord would wait out
`stopwaitsecs` and SIGKILL it). Stop and start rather than TERM alone
because a worker stopped by TERM exits 0, which `autorestart=unexpected`
takes for a chosen stop and does not restart.

Run it as `ferry health-listener`. With `FERRY_HEALTH_HTTP_PORT`
set it also serves the HTTP health endpoint (`ferry.health.http`).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TextIO

from supervisor import childutils

from ferry.config import CommonSettings
from ferry.errors import SupervisorError
from ferry.health import http
from ferry.health.report import Row, collect
from ferry.health.settings import HealthSettings
from ferry.health.supervisor import ProcessInfo, Supervisor
from ferry.logs import kv
from ferry.runtime import EXIT_OK

# stopProcess is answered only once the process is gone, which takes up to
# the program's stopwaitsecs (30 s in supervisord.conf); the margin covers a
# loaded machine.
RESTART_RPC_TIMEOUT_S = 45.0

logger = logging.getLogger("ferry.health.listener")


class HeartbeatWatch:
    """Restarts stale workers; `check` is called once per tick."""

    def __init__(
        self,
        supervisor: Supervisor,
        state_dir: Path,
        *,
        stale_limit_s: float,
        cooldown_s: float,
    ) -> None:
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.stale_limit_s = stale_limit_s
        self.cooldown_s = cooldown_s
        self._restarted_at: dict[str, float] = {}
        self._suppressed: set[str] = set()
        self._unreachable = False

    def check(self) -> list[str]:
        """Restart every stale worker allowed by the cooldown; return their names.

        Never raises for supervisord's failures: they are logged, and the next
        tick tries again.
        """
        report = collect(
            self.supervisor, self.state_dir, stale_limit_s=self.stale_limit_s
        )
        if report.supervisor_error is not None:
            if not self._unreachable:
                logger.warning(
                    "watch_paused %s", kv({"reason": report.supervisor_error})
                )
            self._unreachable = True
            return []
        if self._unreachable:
            logger.info("watch_resumed %s", kv({"socket": report.socket_path}))
            self._unreachable = False

        restarted = []
        for row in report.rows:
            if row.process is None or not row.stale or not self._allowed(row):
                continue
            try:
                self._restart(row, row.process)
            except SupervisorError as exc:
                logger.error(
                    "restart_failed %s", kv({"process": row.name, "error": exc})
                )
            else:
                restarted.append(row.name)
        return restarted

    def _allowed(self, row: Row) -> bool:
        last = self._restarted_at.get(row.name)
        if last is None or time.monotonic() - last >= self.cooldown_s:
            return True
        if row.name not in self._suppressed:
            self._suppressed.add(row.name)
            logger.warning(
                "restart_suppressed %s",
                kv(
                    {
                        "process": row.name,
                        "reason": "cooldown",
                        "heartbeat_age_s": _seconds(row.heartbeat_age_s),
                        "next_allowed_in_s": round(
                            self.cooldown_s - (time.monotonic() - last)
                        ),
                    }
                ),
            )
        return False

    def _restart(self, row: Row, process: ProcessInfo) -> None:
        namespec = process.namespec
        self._restarted_at[row.name] = time.monotonic()
        self._suppressed.discard(row.name)
        logger.warning(
            "restart_program %s",
            kv(
                {
                    "process": row.name,
                    "pid": process.pid,
                    "reason": "heartbeat_stale",
                    "heartbeat_age_s": _seconds(row.heartbeat_age_s),
                    "limit_s": self.stale_limit_s,
                }
            ),
        )
        started = time.monotonic()
        self.supervisor.signal(namespec, "CONT")
        self.supervisor.stop(namespec)
        stopped = self.supervisor.process(namespec)
        self.supervisor.start(namespec)
        logger.info(
            "restart_done %s",
            kv(
                {
                    "process": row.name,
                    "old_pid": process.pid,
                    "stopped_as": stopped.state,
                    "exit_status": stopped.exitstatus,
                    "took_ms": round((time.monotonic() - started) * 1000),
                }
            ),
        )


class _TermReceivedError(Exception):
    """Raised by the TERM handler while the listener waits for an event."""


class _Protocol:
    """The listener side of supervisord's event protocol on two text streams."""

    def __init__(self, stdin: BinaryIO, stdout: TextIO) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.waiting = False
        self.stop_requested = False

    def next_event(self) -> dict[str, str] | None:
        """Say READY and wait for one event; None once stdin is closed.

        Raises `_TermReceivedError` when a TERM arrives before or during the
        wait.
        """
        # Waiting is set before READY goes out, so a TERM sent as soon as
        # READY is seen finds it set; one that came earlier is caught here.
        self.waiting = True
        try:
            if self.stop_requested:
                raise _TermReceivedError
            childutils.listener.ready(self.stdout)
            line = self.stdin.readline()
        finally:
            self.waiting = False
        if not line:
            return None
        headers: dict[str, str] = childutils.get_headers(line.decode())
        # `len` counts bytes, so stdin is read as bytes: read as text, a
        # payload with one non-ASCII character would leave the read waiting
        # for a byte that never comes, and supervisord waiting for RESULT.
        self.stdin.read(int(headers["len"]))
        return headers

    def done(self) -> None:
        """Acknowledge the event just handled."""
        childutils.listener.ok(self.stdout)

    def on_term(self, signum: int, frame: FrameType | None) -> None:
        """Stop now if idle, else after the event in hand."""
        self.stop_requested = True
        # Waiting on stdin is the only safe place to stop at once: raising
        # there abandons nothing.
        if self.waiting:
            raise _TermReceivedError


def serve(watch: HeartbeatWatch, protocol: _Protocol) -> str:
    """Answer events until stdin closes or a TERM arrives; return which."""
    while not protocol.stop_requested:
        try:
            headers = protocol.next_event()
        except _TermReceivedError:
            break
        if headers is None:
            return "stdin_closed"
        if headers.get("eventname", "").startswith("TICK_"):
            watch.check()
        protocol.done()
    return "signal"


def run(common: CommonSettings, settings: HealthSettings) -> int:
    """Run the listener on stdin and stdout until stopped; return the exit code.

    Raises `ConfigError` when the HTTP endpoint is enabled with a bad token
    or a port that cannot be bound.
    """
    protocol = _Protocol(sys.stdin.buffer, sys.stdout)
    signal.signal(signal.SIGTERM, protocol.on_term)
    if settings.http_port is not None:
        http.start(settings, common)
    supervisor = Supervisor(settings.socket_path, timeout_s=RESTART_RPC_TIMEOUT_S)
    watch = HeartbeatWatch(
        supervisor,
        common.state_dir,
        stale_limit_s=common.heartbeat_stale_s,
        cooldown_s=settings.restart_cooldown_s,
    )
    logger.info(
        "listener_start %s",
        kv(
            {
                "socket": settings.socket_path,
                "state_dir": common.state_dir,
                "stale_limit_s": common.heartbeat_stale_s,
                "cooldown_s": settings.restart_cooldown_s,
                "http_port": settings.http_port or "off",
            }
        ),
    )
    reason = serve(watch, protocol)
    logger.info("listener_stop %s", kv({"reason": reason}))
    return EXIT_OK


def _seconds(value: float | None) -> int | None:
    return None if value is None else round(value)
