"""The stats file: `<state_dir>/<instance>.json` and a Prometheus text beside it.

Both are replaced atomically (temporary file, flush, fsync, rename), so a
reader sees either the previous complete file or the new one, never a torn
write. The JSON carries the fields of DESIGN section 3 plus the worker's own
counters at the top level; the `.prom` file carries the numeric ones for
node_exporter's textfile collector.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

# Fields whose value is a time; Prometheus gets them as Unix seconds.
TIME_FIELDS = ("started_at", "heartbeat_at", "last_attempt_at", "last_success_at")
# Fields that are labels or free text, never samples.
TEXT_FIELDS = ("worker", "instance", "version", "state", "last_error")


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
        """Replace both files with `snapshot`."""
        body = json.dumps(snapshot, indent=2, sort_keys=False) + "\n"
        with self._lock:
            _replace(self.json_path, body.encode())
            write_to_textfile(str(self.prom_path), _registry(snapshot))


def read(path: Path) -> dict[str, Any]:
    """Load a stats file; raises OSError or ValueError as `json.load` does."""
    with path.open("rb") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _replace(path: Path, body: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _registry(snapshot: Mapping[str, Any]) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = {"worker": str(snapshot["worker"]), "instance": str(snapshot["instance"])}
    names = list(labels)
    up = Gauge(
        "ferry_info",
        "Ferry process info.",
        [*names, "version", "state"],
        registry=registry,
    )
    up.labels(
        **labels, version=str(snapshot["version"]), state=str(snapshot["state"])
    ).set(1)
    for key, value in snapshot.items():
        if key in TEXT_FIELDS or key == "pid":
            continue
        if key in TIME_FIELDS:
            sample = _unix(value)
            if sample is None:
                continue
            name = f"ferry_{key.removesuffix('_at')}_timestamp_seconds"
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        else:
            sample = float(value)
            name = f"ferry_{key}"
        gauge = Gauge(name, f"Ferry stats field {key}.", names, registry=registry)
        gauge.labels(**labels).set(sample)
    return registry


def _unix(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).timestamp()
