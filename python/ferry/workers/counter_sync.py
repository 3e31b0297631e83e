"""The counter sync that quota-sync and daily-rollup share.

One run, in one Postgres transaction:

1. take the worker's transaction-scoped advisory lock, or skip the run;
2. if another process has written since our last run, or the memory is an
   hour old, reload the memory of what the table holds (the core skips rows
   whose value did not change);
3. walk the keyspace with SCAN + MGET, and stream each page through the Rust
   core straight into a binary COPY of a staging table;
4. after a complete walk, add 0 rows for remembered keys that are gone;
5. upsert from the staging table in key order, rewriting only rows whose
   value changed and never a row stamped later than this run;
6. record this run's id, commit, and only then trust the memory; if the
   upsert declined rows because the table's were newer, reload it instead.

A run that fails anywhere rolls back, so Postgres is unchanged, and the
memory is dropped so that nothing is skipped on the strength of a write that
did not happen.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from ferry import _core
from ferry.config import CommonSettings
from ferry.errors import StoreError
from ferry.logs import kv
from ferry.runtime import RunContext, RunOutcome, Schedule, Worker
from ferry.stores import postgres
from ferry.stores import redis as redis_store

# Examples of bad keys and values logged per run; enough to find the writer,
# few enough that a flood of bad keys does not flood the log.
EXAMPLES_PER_RUN = 5
# Rows fetched per round trip when reloading the memory from the table.
SEED_BATCH_ROWS = 50_000
# The memory is reloaded at least this often even when no other process
# wrote, so that rows changed in the table by hand are set right within the
# hour; a reload of 1M rows costs about a second.
MEMORY_MAX_AGE_S = 3600
# Postgres ends a run's transaction that sits idle this long: its process
# is gone, and the advisory lock must not wait for TCP to notice.
IDLE_IN_TRANSACTION_S = 60

logger = logging.getLogger("ferry.workers.counter_sync")


@dataclass(frozen=True)
class CounterTable:
    """Where a counter sync writes: the table, its key columns and value column.

    `key_columns` pairs each column with its Postgres type, in the order of
    the key pattern's named segments.

    A table whose rows are more than a mirror of their keys (daily_usage
    closes rows) refines the sync with three SQL fragments over its columns;
    left at None, each keeps the plain mirror:

    - `update_filter`: a condition on the existing row `t` that the upsert
      must meet to rewrite it; staged rows it keeps out are left to
      `CounterSync.upsert_excluded`.
    - `remembered_value`: the value the Redis key is expected to hold, which
      seeds the memory (default: the value column).
    - `remembered_rows`: which rows seed the memory (default: all). The
      absent pass zeroes only keys the memory holds.
    """

    name: str
    key_columns: tuple[tuple[str, str], ...]
    value_column: str
    update_filter: LiteralString | None = None
    remembered_value: LiteralString | None = None
    remembered_rows: LiteralString | None = None

    def column_names(self) -> list[str]:
        """Key columns then the value column."""
        return [name for name, _ in self.key_columns] + [self.value_column]


@dataclass
class Totals:
    """One run's counts, summed over its pages."""

    rows: int = 0
    invalid: int = 0
    malformed: int = 0
    missing: int = 0
    duplicates: int = 0
    unchanged: int = 0
    zeroed: int = 0
    keys: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, page: _core.PageResult, keys: int) -> None:
        """Fold one page's result into the totals."""
        self.rows += page.rows
        self.invalid += page.invalid
        self.malformed += page.malformed
        self.missing += page.missing
        self.duplicates += page.duplicates
        self.unchanged += page.unchanged
        self.keys += keys
        room = EXAMPLES_PER_RUN - len(self.examples)
        if room > 0:
            self.examples.extend(page.examples[:room])


class CounterSync(Worker):
    """Mirrors Redis integer counters matching a key pattern into a table.

    Subclasses may extend `upsert_excluded` and `after_upsert` (inside the
    transaction) and `after_commit` (once the run is durable).
    """

    def __init__(
        self,
        name: str,
        common: CommonSettings,
        *,
        pattern: str,
        table: CounterTable,
        schedule: Schedule,
        scan_count: int,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.common = common
        self.table = table
        self.scan_count = scan_count
        self.pattern = _core.KeyPattern(pattern)
        self.memory = _core.CounterSync(self.pattern)
        self._run_id: uuid.UUID | None = None
        self._loaded_at = 0.0
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._redis: redis_store.Client | None = None
        self._counters: dict[str, int] = {
            "rows_written": 0,
            "unchanged": 0,
            "invalid": 0,
            "malformed": 0,
            "missing": 0,
            "duplicates": 0,
            "zeroed": 0,
            "declined_newer": 0,
            "lock_skips": 0,
            "memory_reloads": 0,
        }

    # -- Worker -----------------------------------------------------------

    def run_once(self, ctx: RunContext) -> RunOutcome:
        """Sync once; see the module docstring for the steps.

        Raises `StoreError` when Redis or Postgres fails; nothing was written.
        """
        try:
            return self._sync(ctx)
        except psycopg.Error as exc:
            raise StoreError(f"postgres failed: {postgres.first_line(exc)}") from exc

    def _sync(self, ctx: RunContext) -> RunOutcome:
        conn = self._connection()
        client = self._client()

        with conn.transaction():
            if not postgres.try_xact_lock(conn, self.name):
                self._counters["lock_skips"] += 1
                return RunOutcome(skipped="lock_held_elsewhere")
            # A process that dies with its connection half-open would keep the
            # lock until TCP notices; Postgres ends such a transaction sooner.
            conn.execute(
                sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
                    sql.Literal(f"{IDLE_IN_TRANSACTION_S}s")
                )
            )
            # One timestamp per run, taken before the first page, from the
            # database's clock so that every host stamps rows on one clock.
            synced_at = postgres.transaction_time(conn)
            self._load_memory(conn)
            totals = self._stage(conn, client, ctx)
            written = self._upsert(conn, synced_at)
            declined = 0
            if totals.rows > written:
                declined = self._declined(conn, synced_at)
            written += self.upsert_excluded(conn, synced_at)
            extra = self.after_upsert(conn, synced_at)
            run_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO ferry_sync_state (worker, run_id, finished_at)"
                " VALUES (%s, %s, now()) ON CONFLICT (worker) DO UPDATE"
                " SET run_id = excluded.run_id, finished_at = excluded.finished_at",
                (self.name, run_id),
            )

        if declined:
            # The memory would hold values the table refused; reload it.
            self.forget_memory()
            logger.warning(
                "rows_declined_newer %s",
                kv(
                    {
                        "worker": self.name,
                        "rows": declined,
                        "action": "kept the newer rows; memory reloads next run",
                    }
                ),
            )
        else:
            self.memory.commit_run()
            self._run_id = run_id
        extra.update(self.after_commit(client))
        unchanged = totals.unchanged + max(totals.rows - written - declined, 0)
        self._count(totals, written, unchanged, declined)
        self._log_examples(totals)
        return RunOutcome(
            synced=written,
            fields={
                "keys": totals.keys,
                "unchanged": unchanged,
                "declined_newer": declined,
                "invalid": totals.invalid,
                "malformed": totals.malformed,
                "missing": totals.missing,
                "duplicates": totals.duplicates,
                "zeroed": totals.zeroed,
                **extra,
            },
        )

    def counters(self) -> Mapping[str, int]:
        """Cumulative counts since the process started."""
        return {**self._counters, "remembered_keys": len(self.memory)}

    def on_failure(self) -> None:
        """Forget the memory and the connection; the next run starts afresh."""
        self.forget_memory()
        self.close()

    def forget_memory(self) -> None:
        """Drop the memory; the next run reloads it from the table."""
        self.memory.forget()
        self._run_id = None

    @property
    def staging_table(self) -> str:
        """Name of the run's temporary staging table (key columns and value)."""
        return f"{self.table.name}_staging"

    def close(self) -> None:
        """Close both connections."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    # -- hooks ------------------------------------------------------------

    def upsert_excluded(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> int:
        """Write the staged rows that `CounterTable.update_filter` kept out.

        Runs inside the transaction, right after the upsert; returns the rows
        written, which count as synced. The default writes none.
        """
        return 0

    def after_upsert(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> dict[str, int | float | str]:
        """Extra work inside the run's transaction; returns log fields."""
        return {}

    def after_commit(self, client: redis_store.Client) -> dict[str, int | float | str]:
        """Extra work once the run has committed; returns log fields."""
        return {}

    def pages(self, client: redis_store.Client) -> Iterator[redis_store.Page]:
        """The keyspace walk, page by page (SCAN + MGET)."""
        return redis_store.walk(client, self.pattern.scan_match, self.scan_count)

    # -- steps ------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is not None and not postgres.alive(self._conn):
            # Dropped while idle (a pooler's or the server's timeout): that
            # costs a reconnect, not a failed run.
            logger.info("postgres_reconnect %s", kv({"worker": self.name}))
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = postgres.connect(
                self.common.database_url, application=self.name
            )
        return self._conn

    def _client(self) -> redis_store.Client:
        if self._redis is None:
            self._redis = redis_store.connect(self.common.redis_url)
        return self._redis

    def _load_memory(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        row = conn.execute(
            "SELECT run_id FROM ferry_sync_state WHERE worker = %s", (self.name,)
        ).fetchone()
        last = row[0] if row else None
        fresh = time.monotonic() - self._loaded_at < MEMORY_MAX_AGE_S
        if last is not None and last == self._run_id and fresh:
            return
        # Another process wrote since our last run (or we never ran): what we
        # remember may no longer be what the table holds.
        self.memory.forget()
        keys = [sql.Identifier(name) for name, _ in self.table.key_columns]
        value: sql.Composable = sql.Identifier(self.table.value_column)
        if self.table.remembered_value is not None:
            value = sql.SQL(self.table.remembered_value)
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join([*keys, value]), sql.Identifier(self.table.name)
        )
        if self.table.remembered_rows is not None:
            condition = sql.SQL(self.table.remembered_rows)
            query = sql.SQL("{} WHERE {}").format(query, condition)
        with conn.cursor(name=f"ferry_seed_{self.name.replace('-', '_')}") as cur:
            cur.itersize = SEED_BATCH_ROWS
            cur.execute(query)
            while rows := cur.fetchmany(SEED_BATCH_ROWS):
                self.memory.seed(rows)
        self._loaded_at = time.monotonic()
        self._counters["memory_reloads"] += 1
        logger.info(
            "memory_loaded %s", kv({"worker": self.name, "keys": len(self.memory)})
        )

    def _stage(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        client: redis_store.Client,
        ctx: RunContext,
    ) -> Totals:
        staging = sql.Identifier(self.staging_table)
        definition = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(col), sql.SQL(kind))
            for col, kind in (
                *self.table.key_columns,
                (self.table.value_column, "bigint"),
            )
        )
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                staging, definition
            )
        )
        totals = Totals()
        self.memory.begin_run()
        copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(staging)
        # The queued writer sends COPY data from its own thread, so Redis
        # reads of the next page overlap the Postgres write of this one.
        with (
            conn.cursor() as cur,
            cur.copy(copy_sql, writer=QueuedLibpqWriter(cur)) as copy,
        ):
            copy.write(_core.COPY_HEADER)
            for keys, values in self.pages(client):
                page = self.memory.encode_page(keys, values)
                copy.write(page.copy_data)
                totals.add(page, len(keys))
                ctx.progress()
            # Only a walk that reached cursor 0 gets here; a failed walk
            # raised above and rolls back, touching no row it did not see.
            absent = self.memory.encode_absent()
            copy.write(absent.copy_data)
            totals.rows += absent.rows
            totals.zeroed = absent.rows
            copy.write(_core.COPY_TRAILER)
        return totals

    def _upsert(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> int:
        keys = [sql.Identifier(name) for name, _ in self.table.key_columns]
        value = sql.Identifier(self.table.value_column)
        key_list = sql.SQL(", ").join(keys)
        # Sorting the staging rows by key turns the upsert's random B-tree
        # probes into a sequential pass (6.2 s against 8.7-12.6 s measured for
        # 1M new rows); DISTINCT ON keeps one row per key whatever SCAN
        # repeated, so ON CONFLICT never meets a key twice.
        query = sql.SQL(
            "INSERT INTO {table} AS t ({keys}, {value}, synced_at)"
            " SELECT DISTINCT ON ({keys}) {keys}, {value}, %(synced_at)s"
            " FROM {staging} ORDER BY {keys}"
            " ON CONFLICT ({keys}) DO UPDATE"
            " SET {value} = excluded.{value}, synced_at = excluded.synced_at"
            " WHERE t.{value} IS DISTINCT FROM excluded.{value}"
            " AND t.synced_at <= excluded.synced_at"
        ).format(
            table=sql.Identifier(self.table.name),
            keys=key_list,
            value=value,
            staging=sql.Identifier(self.staging_table),
        )
        if self.table.update_filter is not None:
            condition = sql.SQL(self.table.update_filter)
            query = sql.SQL("{} AND ({})").format(query, condition)
        cur = conn.execute(query, {"synced_at": synced_at})
        return max(cur.rowcount, 0)

    # -- reporting --------------------------------------------------------

    def _declined(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> int:
        """Staged rows the upsert refused because the table's row is newer."""
        keys = [sql.Identifier(name) for name, _ in self.table.key_columns]
        query = sql.SQL(
            "SELECT count(*) FROM {staging} s JOIN {table} t USING ({keys})"
            " WHERE t.synced_at > %(synced_at)s"
        ).format(
            staging=sql.Identifier(self.staging_table),
            table=sql.Identifier(self.table.name),
            keys=sql.SQL(", ").join(keys),
        )
        row = conn.execute(query, {"synced_at": synced_at}).fetchone()
        return int(str(row[0])) if row else 0

    def _count(
        self, totals: Totals, written: int, unchanged: int, declined: int
    ) -> None:
        c = self._counters
        c["rows_written"] += written
        c["unchanged"] += unchanged
        c["declined_newer"] += declined
        c["invalid"] += totals.invalid
        c["malformed"] += totals.malformed
        c["missing"] += totals.missing
        c["duplicates"] += totals.duplicates
        c["zeroed"] += totals.zeroed

    def _log_examples(self, totals: Totals) -> None:
        if totals.invalid or totals.malformed:
            logger.warning(
                "bad_input_skipped %s",
                kv(
                    {
                        "worker": self.name,
                        "invalid": totals.invalid,
                        "malformed": totals.malformed,
                        "examples": "; ".join(totals.examples),
                    }
                ),
            )
