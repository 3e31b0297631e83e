"""supervisord's XML-RPC interface over its unix control socket.

supervisor's own `SupervisorTransport` speaks HTTP over the socket; this
module adds a timeout to it (the stock connection has none, so a wedged
supervisord would hang `ferry status`), turns the replies into
`ProcessInfo`, and translates every failure into `SupervisorError`.
"""

from __future__ import annotations

import socket
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport, UnixStreamHTTPConnection

from ferry.errors import SupervisorError


@dataclass(frozen=True)
class ProcessInfo:
    """One process as supervisord describes it (`getProcessInfo`)."""

    name: str
    group: str
    state: str
    pid: int
    start: float
    now: float
    description: str
    exitstatus: int
    spawnerr: str

    @property
    def namespec(self) -> str:
        """`group:name`, the name every process-level call takes."""
        return f"{self.group}:{self.name}"

    @property
    def uptime_s(self) -> float | None:
        """Seconds since the process started, or None when it is not running."""
        if self.state != "RUNNING" or not self.start:
            return None
        return max(self.now - self.start, 0.0)

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> ProcessInfo:
        """Build from one struct of `getAllProcessInfo`."""
        return cls(
            name=str(info["name"]),
            group=str(info["group"]),
            state=str(info["statename"]),
            pid=int(info["pid"]),
            start=float(info["start"]),
            now=float(info["now"]),
            description=str(info["description"]),
            exitstatus=int(info["exitstatus"]),
            spawnerr=str(info["spawnerr"]),
        )


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socketfile)
        self.sock = sock


class _TimedTransport(SupervisorTransport):  # type: ignore[misc]
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__(None, None, f"unix://{path}")

        def connection() -> _TimedUnixConnection:
            conn = _TimedUnixConnection("localhost", timeout=timeout_s)
            conn.socketfile = str(path)
            return conn

        # The parent keeps its connection factory in this attribute; ours is
        # the same with a timeout on the socket.
        self._get_connection = connection


class Supervisor:
    """A client of one supervisord; not safe to share between threads.

    Every method raises `SupervisorError` when supervisord cannot be reached
    within `timeout_s` or refuses the call.
    """

    def __init__(self, socket_path: Path, *, timeout_s: float) -> None:
        self.socket_path = socket_path
        self._transport = _TimedTransport(socket_path, timeout_s)
        # The URL is a placeholder: the transport always uses the socket.
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)
        self._rpc: Any = proxy.supervisor

    def processes(self) -> list[ProcessInfo]:
        """Every process supervisord manages, event listeners included."""
        infos = self._call("getAllProcessInfo", self._rpc.getAllProcessInfo)
        return [ProcessInfo.from_rpc(info) for info in infos]

    def process(self, namespec: str) -> ProcessInfo:
        """One process by `group:name`."""
        info = self._call(
            f"getProcessInfo {namespec}", lambda: self._rpc.getProcessInfo(namespec)
        )
        return ProcessInfo.from_rpc(info)

    def signal(self, namespec: str, signame: str) -> bool:
        """Send `signame` (`CONT`, `HUP`...); False if the process is not live."""
        done = self._call(
            f"signalProcess {namespec} {signame}",
            lambda: self._rpc.signalProcess(namespec, signame),
            tolerate=Faults.NOT_RUNNING,
        )
        return bool(done)

    def stop(self, namespec: str) -> bool:
        """Stop and wait until stopped; False if it was not running anyway.

        supervisord answers only once the process is gone, which takes up to
        the program's `stopwaitsecs`: the client's timeout must exceed it.
        """
        done = self._call(
            f"stopProcess {namespec}",
            lambda: self._rpc.stopProcess(namespec, True),
            tolerate=Faults.NOT_RUNNING,
        )
        return bool(done)

    def start(self, namespec: str) -> bool:
        """Start without waiting for `startsecs`; False if already started."""
        done = self._call(
            f"startProcess {namespec}",
            lambda: self._rpc.startProcess(namespec, False),
            tolerate=Faults.ALREADY_STARTED,
        )
        return bool(done)

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        self._transport.close()

    def _call(
        self, what: str, call: Callable[[], Any], *, tolerate: int | None = None
    ) -> Any:
        """Run one call; a fault with code `tolerate` returns None."""
        try:
            return call()
        except xmlrpc.client.Fault as fault:
            if tolerate is not None and fault.faultCode == tolerate:
                return None
            raise SupervisorError(
                f"supervisord refused {what}: {fault.faultString}"
            ) from fault
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            self._transport.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SupervisorError(
                f"supervisord is not reachable at {self.socket_path}: {reason}"
            ) from exc
