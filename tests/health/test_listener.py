"""The event listener's side of supervisord's protocol, as a real process.

The restart itself is exercised against a real supervisord in
tests/supervision; here the listener talks to the test over pipes exactly as
it would to supervisord.
"""

from __future__ import annotations

import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ferry_cmd

# Start-up includes importing Ferry; a loaded machine may take seconds.
REPLY_TIMEOUT_S = 20.0


class Listener:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ferry_cmd("health-listener"),
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def expect(self, text: bytes) -> None:
        assert self.proc.stdout is not None
        got = b""
        while len(got) < len(text):
            ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT_S)
            assert ready, f"no reply; got {got!r} so far, wanted {text!r}"
            got += self.proc.stdout.read1(len(text) - len(got))  # type: ignore[attr-defined]
        assert got == text

    def send(self, event: str, payload: str) -> None:
        assert self.proc.stdin is not None
        body = payload.encode()
        # supervisord's `len` counts the payload's bytes.
        header = (
            f"ver:3.0 server:ferry serial:1 pool:heartbeat-watch poolserial:1"
            f" eventname:{event} len:{len(body)}\n"
        )
        self.proc.stdin.write(header.encode() + body)
        self.proc.stdin.flush()

    def finish(self, *, close_stdin: bool = False) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if close_stdin:
            self.proc.stdin.close()
        code = self.proc.wait(timeout=REPLY_TIMEOUT_S)
        return code, self.proc.stderr.read().decode()


@pytest.fixture
def listener(ferry_env: dict[str, str], tmp_path: Path) -> Iterator[Listener]:
    env = {**ferry_env, "FERRY_RUN_DIR": str(tmp_path / "run")}
    running = Listener(env)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()


def test_each_event_is_acknowledged_and_ready_follows(listener: Listener) -> None:
    listener.expect(b"READY\n")
    listener.send(
        "PROCESS_STATE_RUNNING", "processname:x groupname:x from_state:STARTING pid:1"
    )
    listener.expect(b"RESULT 2\nOK")
    listener.expect(b"READY\n")
    # A tick with supervisord unreachable pauses the watch, logged once, and
    # is still acknowledged: the listener must not stall supervisord's queue.
    listener.send("TICK_5", "when:1700000000")
    listener.expect(b"RESULT 2\nOK")
    listener.expect(b"READY\n")
    listener.send("TICK_5", "when:1700000005")
    listener.expect(b"RESULT 2\nOK")
    listener.expect(b"READY\n")

    listener.proc.send_signal(signal.SIGTERM)
    code, err = listener.finish()
    assert code == 0
    assert err.count("watch_paused") == 1
    assert "supervisord is not reachable at" in err
    assert "listener_stop reason=signal" in err


def test_listener_exits_cleanly_when_supervisord_closes_its_stdin(
    listener: Listener,
) -> None:
    listener.expect(b"READY\n")
    code, err = listener.finish(close_stdin=True)
    assert code == 0
    assert "listener_stop reason=stdin_closed" in err


def test_a_payload_with_non_ascii_text_is_read_to_its_byte_length(
    listener: Listener,
) -> None:
    listener.expect(b"READY\n")
    # A log event's data is whatever the program wrote; `len` is in bytes.
    listener.send(
        "PROCESS_LOG_STDOUT",
        "processname:x groupname:x pid:1 channel:stdout\nnaïve café ✓",
    )
    listener.expect(b"RESULT 2\nOK")
    listener.expect(b"READY\n")
    listener.send("TICK_5", "when:1700000000")
    listener.expect(b"RESULT 2\nOK")
    listener.expect(b"READY\n")
    listener.proc.send_signal(signal.SIGTERM)
    code, err = listener.finish()
    assert code == 0
    assert "listener_stop reason=signal" in err
