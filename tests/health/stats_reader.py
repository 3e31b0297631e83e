"""Reads stats files in a tight loop, as `ferry status` or node_exporter would.

Run as `python -m tests.health.stats_reader SECONDS FILE...`: for SECONDS it
loads every JSON file and parses every `.prom` file with prometheus_client's
parser, and checks that the only `.json`/`.prom` names in their folders are
the given files (temporary files must never look like stats files). It
prints one JSON object: the number of rounds and the first failures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Failures kept for the report; the first few say what went wrong.
FAILURES_KEPT = 5


def check(paths: list[Path]) -> None:
    for path in paths:
        if path.suffix == ".json":
            with path.open("rb") as file:
                data = json.load(file)
            if not isinstance(data, dict) or "worker" not in data:
                raise ValueError(f"{path.name}: not a stats object")
        else:
            names = [
                family.name
                for family in text_string_to_metric_families(path.read_text())
            ]
            if "ferry_info" not in names:
                raise ValueError(f"{path.name}: no ferry_info in {names}")
    expected = {path.name for path in paths}
    for folder in {path.parent for path in paths}:
        for entry in folder.iterdir():
            if entry.suffix in (".json", ".prom") and entry.name not in expected:
                raise ValueError(f"unexpected stats-like file {entry.name}")


def main() -> int:
    seconds = float(sys.argv[1])
    paths = [Path(arg) for arg in sys.argv[2:]]
    rounds = 0
    failures: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            check(paths)
        except (OSError, ValueError) as exc:
            if len(failures) < FAILURES_KEPT:
                failures.append(f"{type(exc).__name__}: {exc}")
        rounds += 1
    print(json.dumps({"rounds": rounds, "failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
