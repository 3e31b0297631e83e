"""A worker for runtime tests: sleeps, succeeds or fails as told.

Run as `python -m tests.runtime.sample_worker --run-s 2 ...`; it uses the
real Runner and the real settings, so signals, exit codes, logs and stats
are exactly those of a Ferry worker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ferry.config import CommonSettings, load
from ferry.logs import configure
from ferry.runtime import RunContext, Runner, RunOutcome, Schedule, Worker


class SampleWorker(Worker):
    """Each run sleeps `run_s` (ignoring the stop flag), then fails or syncs."""

    name = "sample"

    def __init__(self, schedule: Schedule, run_s: float, fail: bool, synced: int):
        self.schedule = schedule
        self.run_s = run_s
        self.fail = fail
        self.synced = synced
        self.runs = 0

    def run_once(self, ctx: RunContext) -> RunOutcome:
        self.runs += 1
        time.sleep(self.run_s)
        if self.fail:
            raise RuntimeError(f"sample failure {self.runs}")
        return RunOutcome(synced=self.synced, fields={"pages": 1})

    def counters(self) -> Mapping[str, int]:
        return {"sample_runs": self.runs}


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start this module as a worker process with `args`; output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.sample_worker", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-s", type=float, default=0.0)
    parser.add_argument("--interval-s", type=float, default=60.0)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--synced", type=int, default=1)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    common = load(CommonSettings)
    configure(common.log_level)
    schedule = Schedule(interval_s=args.interval_s, startup_delay_s=args.delay_s)
    worker = SampleWorker(schedule, args.run_s, args.fail, args.synced)
    return Runner(worker, common).serve(once=args.once)


if __name__ == "__main__":
    sys.exit(main())
