"""Run a command with its stderr on a pseudo-terminal, as a person would."""

from __future__ import annotations

import os
import pty
import subprocess

from tests.conftest import REPO

# A run under test that has not finished by then is stuck.
TERMINAL_RUN_TIMEOUT_S = 60


def run_on_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command` with stderr on a pty; return its exit code and that text."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        command,
        env={**env, "TERM": "xterm"},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            # Linux reports the far side closing as EIO.
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    code = proc.wait(timeout=TERMINAL_RUN_TIMEOUT_S)
    return code, seen.decode(errors="replace")
