"""The stats file: `<state_dir>/<instance>.json` and a Prometheus text beside it.

Both are replaced atomically: the new text is written whole to a temporary
file in the same folder (flushed, fsynced, made readable to other users),
then renamed over the old one, so a reader sees either the previous complete
file or the new one, never a torn write. Temporary names start with a dot
and end in a random suffix, never in `.json` or `.prom`, so node_exporter's
textfile collector (which reads `*.prom`) and `ferry status` (which reads
`*.json`) never pick one up.

The JSON carries the runtime's fields (state, heartbeat, run counts and
times, last error, errors in the window) plus the worker's own
counters at the top level. The `.prom` file carries every numeric field as a
gauge `ferry_<field>` labelled with `worker` and `process` (not `instance`,
which Prometheus sets on every scraped series itself): times (`*_at`) as
`ferry_<field without _at>_timestamp_seconds`, milliseconds (`*_ms`) as
seconds, the state as `ferry_state{state=...}` with 1 on the current one,
and `ferry_info{version=...} 1`. Help texts depend only on the field, so
files of different workers agree, as the textfile collector requires.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

# Every value `state` takes; each gets its own sample.
STATES = ("starting", "waiting", "running", "stopping")
# Fields that label the samples or are free text, never samples themselves.
TEXT_FIELDS = ("worker", "instance", "version", "state", "last_error", "pid")
# Stats files are read by other users (an operator running `ferry status`,
# node_exporter); they hold figures, never secrets.
FILE_MODE = 0o644
# Characters Prometheus allows in a metric name; anything else becomes "_".
METRIC_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
MS_PER_S = 1000.0


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, or None."""
    if moment is None:
        return None
    return (
        moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class StatsFile:
    """Writes one process's stats; safe to call from several threads."""

    def __init__(self, state_dir: Path, instance: str) -> None:
        self.json_path = state_dir / f"{instance}.json"
        self.prom_path = state_dir / f"{instance}.prom"
        self._lock = threading.Lock()
        state_dir.mkdir(parents=True, exist_ok=True)

    def write(self, snapshot: Mapping[str, Any]) -> None:
        """Replace both files with `snapshot`; raises OSError if the disk does."""
        body = json.dumps(snapshot, indent=2, sort_keys=False) + "\n"
        metrics = prometheus_text(snapshot)
        with self._lock:
            _replace(self.json_path, body.encode())
            _replace(self.prom_path, metrics)


def read(path: Path) -> dict[str, Any]:
    """Load a stats file; raises OSError or ValueError as `json.load` does."""
    with path.open("rb") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def prometheus_text(snapshot: Mapping[str, Any]) -> bytes:
    """The snapshot in Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry()
    labels = {"worker": str(snapshot["worker"]), "process": str(snapshot["instance"])}
    names = list(labels)
    info = Gauge(
        "ferry_info", "Ferry process info.", [*names, "version"], registry=registry
    )
    info.labels(**labels, version=str(snapshot.get("version"))).set(1)
    state = Gauge(
        "ferry_state",
        "Ferry process state, 1 on the current one.",
        [*names, "state"],
        registry=registry,
    )
    for name in STATES:
        state.labels(**labels, state=name).set(int(snapshot.get("state") == name))

    taken = {"ferry_info", "ferry_state"}
    for key, value in snapshot.items():
        sample = _sample(key, value)
        if sample is None:
            continue
        name, number = sample
        # Two fields that clean to the same name (a worker counter spelled
        # like a shared field) would make the registry refuse the second.
        if name in taken:
            continue
        taken.add(name)
        gauge = Gauge(name, f"Ferry stats field {key}.", names, registry=registry)
        gauge.labels(**labels).set(number)
    return generate_latest(registry)


def _sample(key: str, value: Any) -> tuple[str, float] | None:
    if key in TEXT_FIELDS or value is None or isinstance(value, bool):
        return None
    base = METRIC_NAME_UNSAFE.sub("_", key)
    if key.endswith("_at"):
        moment = _unix(value)
        if moment is None:
            return None
        return f"ferry_{base.removesuffix('_at')}_timestamp_seconds", moment
    number = _float(value)
    if number is None:
        return None
    if key.endswith("_ms"):
        return f"ferry_{base.removesuffix('_ms')}_seconds", number / MS_PER_S
    return f"ferry_{base}", number


def _float(value: Any) -> float | None:
    if not isinstance(value, int | float):
        return None
    # Python integers are unbounded and a sample is a double: a counter past
    # about 1.8e308 has no sample, and must not stop the JSON being written.
    try:
        return float(value)
    except OverflowError:
        return None


def _replace(path: Path, body: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(body)
            file.flush()
            os.fchmod(file.fileno(), FILE_MODE)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unix(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
