"""audit: the `audit:events` stream into `audit_log`, through a consumer group.

Each process reads as one consumer of the group, named after supervisord's
process number so that a restarted process finds its own pending entries
again. A run is a reading session of up to `session_s`: batches of up to
`batch_size` entries, each checked and encoded by the Rust core in one call,
copied into `audit_log` in one transaction and acknowledged only after the
commit. Malformed entries go to `audit_dead_letters` with their raw fields and
the reason. Between batches the session claims entries that a dead consumer
left pending, and from time to time trims acknowledged entries and deletes
consumers that have been idle long with nothing pending.

    settings.py FERRY_AUDIT_* settings
    stream.py   the stream in Redis: group, reads, claims, acks, trims
    store.py    batches into Postgres: COPY, insert, dead letters
    worker.py   the session loop that joins them
"""

from __future__ import annotations

from ferry.config import CommonSettings, load
from ferry.workers.audit.settings import AuditSettings
from ferry.workers.audit.worker import AuditWorker

__all__ = ["AuditSettings", "AuditWorker", "build"]


def build(common: CommonSettings) -> AuditWorker:
    """The audit worker for these settings; raises ConfigError."""
    own = load(AuditSettings)
    consumer = own.consumer or f"ferry-audit-{common.process_num}"
    return AuditWorker(common, own, consumer=consumer)
