"""The audit worker's session loop: read, store, acknowledge, claim, trim.

A run is a session that reads batch after batch until `session_s` has passed
or a stop is requested; the runtime starts the next one at once (interval 0),
and the blocking read is the wait, so an idle stream costs one call every
`block_ms`. Each batch comes from one source, in this order:

1. this consumer's own pending entries, after a start or a failed run: what
   the previous process (same name) or the failed run read and did not
   acknowledge;
2. entries of any consumer pending longer than `claim_idle_ms`, taken over
   with XAUTOCLAIM every `claim_interval_s`;
3. new entries, with a blocking XREADGROUP.

A batch is stored, then acknowledged; entries of sources 1 and 2 delivered
more than `max_deliveries` times are dead-lettered without being read. When
the stop flag is set, the loop stops reading; the batch in flight is still
committed and acknowledged.

Deliveries are counted per entry, not per cause: a batch whose handling kills
the process every time reaches the limit all together, and every entry of it
is dead-lettered, not only the one at fault. (A row that Postgres refuses is
found on its own, see `store`; this is about crashes.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import redis

from ferry.config import CommonSettings
from ferry.errors import StoreError
from ferry.logs import kv
from ferry.runtime import RunContext, RunOutcome, Schedule, Worker
from ferry.stores import postgres
from ferry.stores import redis as redis_store
from ferry.workers.audit.settings import AuditSettings
from ferry.workers.audit.store import DeadLetter, raw_fields_json, write_batch
from ferry.workers.audit.stream import AuditStream, Entry

NAME = "audit"
# Dead letters described in the log per batch: enough to see what kind of
# input is wrong, few enough that a flood of bad entries stays one line.
EXAMPLES_PER_BATCH = 5
# After a failed run the next waits 0.5 s, doubling up to 30 s, so that a
# Postgres or Redis outage is retried at a bounded rate while the error
# budget judges it, instead of spinning.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0

logger = logging.getLogger("ferry.workers.audit")


@dataclass
class Batch:
    """Entries read from one source, all to be acknowledged together."""

    entries: list[Entry]
    source: str
    # Entries this consumer or another has been given before.
    redelivered: bool = False


@dataclass
class Totals:
    """One session's counts."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    deleted_pending: int = 0
    claimed: int = 0
    over_delivered: int = 0
    acked: int = 0
    batches: int = 0
    trimmed: int = 0
    consumers_deleted: int = 0

    def add(self, other: Totals) -> None:
        """Fold another set of counts into these."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def fields(self) -> dict[str, int | float | str]:
        """The session's figures for its run line, in a fixed order."""
        return {
            "read": self.read,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "deleted_pending": self.deleted_pending,
            "claimed": self.claimed,
            "over_delivered": self.over_delivered,
            "acked": self.acked,
            "batches": self.batches,
            "trimmed": self.trimmed,
            "consumers_deleted": self.consumers_deleted,
        }


class AuditWorker(Worker):
    """One consumer of the audit stream; see the module docstring."""

    def __init__(
        self, common: CommonSettings, settings: AuditSettings, *, consumer: str
    ) -> None:
        self.name = NAME
        self.schedule = Schedule(
            interval_s=0.0, startup_delay_s=settings.startup_delay_s
        )
        self.common = common
        self.settings = settings
        self.consumer = consumer
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._stream: AuditStream | None = None
        self._recovering = True
        self._pending_after = b"0"
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._next_housekeeping = 0.0
        self._failed_in_row = 0
        self._lifetime = Totals()
        # Reads the next batch from Redis while the current one is written
        # to Postgres, so that the two waits overlap.
        self._executor: ThreadPoolExecutor | None = None

    # -- Worker -----------------------------------------------------------

    def run_once(self, ctx: RunContext) -> RunOutcome:
        """Read and store batches for one session.

        Raises `StoreError` when Redis or Postgres fails; batches committed
        and acknowledged before the failure stay so, and the batch in flight
        is read again by the next run.
        """
        if self._failed_in_row:
            pause = min(RETRY_FIRST_S * 2 ** (self._failed_in_row - 1), RETRY_MAX_S)
            if ctx.stopping.wait(pause):
                return RunOutcome(skipped="stopping")
        try:
            outcome = self._session(ctx)
        except psycopg.Error as exc:
            raise StoreError(f"postgres failed: {postgres.first_line(exc)}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis failed: {exc}") from exc
        self._failed_in_row = 0
        return outcome

    def counters(self) -> Mapping[str, int | float]:
        """Cumulative counts since the process started."""
        return dict(vars(self._lifetime))

    def on_failure(self) -> None:
        """Drop the connections; the next run first reads its own pending entries."""
        self._failed_in_row += 1
        self._recovering = True
        self._pending_after = b"0"
        self.close()

    def close(self) -> None:
        """Close both connections and the reading thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._stream is not None:
            self._stream.client.close()
            self._stream = None

    # -- the session ------------------------------------------------------

    def _session(self, ctx: RunContext) -> RunOutcome:
        totals = Totals()
        ends = time.monotonic() + self.settings.session_s
        conn = self._connection()
        stream = self._audit_stream()
        prefetch: Future[list[Entry]] | None = None
        try:
            while True:
                if prefetch is not None:
                    # Read before a stop or the session's end: delivered, so
                    # in flight, and finished like any batch.
                    entries, prefetch = prefetch.result(), None
                    batch = Batch(entries, "new") if entries else None
                elif ctx.stopping.is_set() or time.monotonic() >= ends:
                    break
                else:
                    batch = self._next_batch(stream, conn)
                if self._may_prefetch(batch, ctx, ends):
                    prefetch = self._reader().submit(
                        stream.read_new,
                        self.settings.batch_size,
                        self.settings.block_ms,
                    )
                step = Totals()
                if batch is not None:
                    self._handle(conn, stream, batch, step)
                ctx.progress()
                self._housekeeping(stream, step)
                totals.add(step)
                self._lifetime.add(step)
        finally:
            if prefetch is not None:
                # The session failed with a read in flight: let it end, so
                # that what it delivered is pending before the next run reads
                # this consumer's pending entries; its error is not this one.
                with contextlib.suppress(Exception):
                    prefetch.result()
        return RunOutcome(synced=totals.stored, fields=totals.fields())

    def _may_prefetch(self, batch: Batch | None, ctx: RunContext, ends: float) -> bool:
        """Whether to read the next batch while this one is written.

        Only behind new entries, so that recovery and due claims keep their
        turn, and never once the session is ending.
        """
        now = time.monotonic()
        return (
            batch is not None
            and batch.source == "new"
            and not ctx.stopping.is_set()
            and now < ends
            and now < self._next_claim
        )

    def _reader(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-read")
        return self._executor

    def _next_batch(
        self, stream: AuditStream, conn: psycopg.Connection[tuple[object, ...]]
    ) -> Batch | None:
        settings = self.settings
        if self._recovering:
            # Reading pending entries again counts a delivery; checking
            # Postgres first keeps an outage from spending them.
            conn.execute("SELECT 1")
            conn.rollback()
            entries = stream.read_own_pending(self._pending_after, settings.batch_size)
            if entries:
                self._pending_after = entries[-1][0]
                return Batch(entries, "own_pending", redelivered=True)
            self._recovering = False

        now = time.monotonic()
        if now >= self._next_claim:
            conn.execute("SELECT 1")
            conn.rollback()
            claim = stream.autoclaim(
                settings.claim_idle_ms, self._claim_cursor, settings.batch_size
            )
            self._claim_cursor = claim.cursor
            if claim.cursor == b"0-0":
                self._next_claim = now + settings.claim_interval_s
            if claim.entries or claim.deleted:
                deleted: list[Entry] = [(entry_id, None) for entry_id in claim.deleted]
                return Batch([*claim.entries, *deleted], "claimed", redelivered=True)

        entries = stream.read_new(settings.batch_size, settings.block_ms)
        return Batch(entries, "new") if entries else None

    def _handle(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        stream: AuditStream,
        batch: Batch,
        totals: Totals,
    ) -> None:
        entries = batch.entries
        over: list[DeadLetter] = []
        if batch.redelivered:
            entries, over = self._sort_out_over_delivered(stream, entries)

        written = write_batch(conn, entries, over)
        # Only after the commit: a crash before this line leaves the entries
        # pending, and storing them again is a no-op.
        acked = stream.ack([entry_id for entry_id, _ in batch.entries])

        deleted = sum(1 for _, fields in batch.entries if fields is None)
        totals.batches += 1
        totals.read += len(batch.entries)
        totals.stored += written.stored
        totals.duplicates += written.duplicates
        totals.dead_lettered += len(written.dead)
        totals.deleted_pending += deleted
        totals.over_delivered += len(over)
        totals.acked += acked
        if batch.source == "claimed":
            totals.claimed += len(batch.entries)
            logger.warning(
                "pending_claimed %s",
                kv(
                    {
                        "worker": self.name,
                        "consumer": self.consumer,
                        "entries": len(batch.entries) - deleted,
                        "deleted": deleted,
                        "action": "stored and acknowledged in place of a dead consumer",
                    }
                ),
            )
        if written.dead:
            logger.warning(
                "dead_lettered %s",
                kv(
                    {
                        "worker": self.name,
                        "count": len(written.dead),
                        "action": "stored in audit_dead_letters and acknowledged",
                        "examples": "; ".join(
                            f"{entry_id.decode()}: {reason}"
                            for entry_id, _, reason in written.dead[:EXAMPLES_PER_BATCH]
                        ),
                    }
                ),
            )

    def _sort_out_over_delivered(
        self, stream: AuditStream, entries: list[Entry]
    ) -> tuple[list[Entry], list[DeadLetter]]:
        limit = self.settings.max_deliveries
        counts = stream.deliveries([entry_id for entry_id, _ in entries])
        keep: list[Entry] = []
        over: list[DeadLetter] = []
        for entry_id, fields in entries:
            delivered = counts.get(entry_id, 0)
            if fields is not None and delivered > limit:
                reason = (
                    f"delivered {delivered} times without being stored;"
                    f" the limit is {limit} (FERRY_AUDIT_MAX_DELIVERIES)"
                )
                over.append((entry_id, raw_fields_json(fields), reason))
            else:
                keep.append((entry_id, fields))
        return keep, over

    def _housekeeping(self, stream: AuditStream, totals: Totals) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.settings.trim_interval_s
        settings = self.settings
        totals.trimmed += stream.trim(
            round(settings.trim_max_age_s * 1000), settings.trim_max_len
        )
        if settings.consumer_idle_delete_s > 0:
            deleted = stream.delete_idle_consumers(
                round(settings.consumer_idle_delete_s * 1000)
            )
            totals.consumers_deleted += len(deleted)
            for name in deleted:
                logger.info(
                    "consumer_deleted %s",
                    kv(
                        {
                            "worker": self.name,
                            "consumer": name,
                            "reason": "idle with nothing pending",
                        }
                    ),
                )

    # -- connections and counters -----------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = postgres.connect(self.common.database_url, application=NAME)
        return self._conn

    def _audit_stream(self) -> AuditStream:
        if self._stream is None:
            client = redis_store.connect(self.common.redis_url)
            stream = AuditStream(
                client, self.settings.stream_key, self.settings.group, self.consumer
            )
            try:
                stream.ensure_group()
            except StoreError:
                client.close()
                raise
            self._stream = stream
        return self._stream
