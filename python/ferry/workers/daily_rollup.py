"""daily-rollup: `usage:{day}:{account}:{metric}` counters into `daily_usage`.

It is quota-sync's counter sync (`ferry.workers.counter_sync`: one walk, one
`synced_at`, only changed rows written) with three additions.

Closing. A day closes in the first run at or after the midnight UTC that ends
it plus the grace period. In that run's transaction its final values are
written, its rows are marked closed and the day is listed in
`daily_usage_days`.

Late increments. Closed rows are kept out of the plain upsert. A closed day's
key whose value differs from what its row last saw of it is a late increment:
the row's total follows it on top of `carried` (see the schema file), and the
run counts it and logs examples. Usage counters only grow, so a key holding
less than its row last saw has started again from nothing (it was removed, or
expired, and written again): what it holds now is added to the total. A key
of a closed day that had no row yet is a late increment too. A key of a
closed day that has gone leaves its row as it is, whatever the absent pass of
the walk says. A late total that would pass 2^63 - 1 is not written: the row
keeps its total, and the run counts and logs it as overflowed.

Removal. Only with FERRY_DAILY_ROLLUP_DELETE_CLOSED_KEYS, and only after the
commit: each key a closed row still counts on is deleted if it still holds
what the row saw, by a Lua script that checks and deletes in one step, so an
increment landing in between is never deleted; a short transaction then
records that the key holds nothing (`carried = value`). A crash anywhere
after the commit leaves those rows listed as still held, and the next run
removes their keys or finds them gone.

One gap remains. If the process dies between deleting a page of keys and
recording it (milliseconds), and a late increment then writes one of those
keys again with at least its row's total before the next run finds it gone,
that row takes the key's value as its total and loses what it had.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import psycopg
import redis
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from redis.commands.core import Script

from ferry import _core
from ferry.config import CommonSettings, FerrySettings, load
from ferry.errors import StoreError
from ferry.logs import kv
from ferry.runtime import RunContext, RunOutcome, Schedule
from ferry.stores import postgres
from ferry.stores import redis as redis_store
from ferry.workers.counter_sync import EXAMPLES_PER_RUN, CounterSync, CounterTable

NAME = "daily-rollup"
SEGMENTS = ["day", "account", "metric"]
TABLE = CounterTable(
    name="daily_usage",
    key_columns=(
        ("day", "date"),
        ("account_id", 'text COLLATE "C"'),
        ("metric", 'text COLLATE "C"'),
    ),
    value_column="value",
    update_filter="NOT t.closed",
    # What the key is expected to hold; open rows carry nothing. Closed rows
    # whose key holds nothing are left out, so the memory does not grow with
    # every day ever closed and the absent pass never meets them.
    remembered_value="value - carried",
    remembered_rows="NOT closed OR value <> carried",
)

# Keys checked and deleted per Lua call: Redis runs a script without
# interruption, and a thousand GET + DEL pairs keep that to 1-2.5 ms
# (measured with INFO commandstats on the 2-core machine).
REMOVE_BATCH_KEYS = 1000
# Removal stops once the run is this old, or when a stop is requested, and
# leaves the rest to the next run, so that a run stopped while removing still
# ends inside the 25 s shutdown deadline. The run that closes a day of 1M keys
# takes about 14 s before removal starts (benches/bench_rollup.py); later runs
# take about 5 s and remove about 35k keys per second left.
REMOVE_UNTIL_RUN_S = 15.0

logger = logging.getLogger("ferry.workers.daily_rollup")

# (day, account_id, metric, what the key is expected to hold)
HeldRow = tuple[date, str, str, int]

# Per key: 1 deleted, 0 already gone, -1 left in place because it holds
# something else than the row saw (a late increment, or not a string).
# The keys of one call lie in many hash slots, which Redis Cluster refuses in
# one script: there, removal fails with a warning every run and the keys stay
# until grouping by slot is added.
REMOVE_SCRIPT = """
local result = {}
for i, key in ipairs(KEYS) do
    local held = redis.pcall('GET', key)
    if held == false then
        result[i] = 0
    elseif held == ARGV[i] then
        redis.call('DEL', key)
        result[i] = 1
    else
        result[i] = -1
    end
end
return result
"""

# Closed rows whose key moved: the total follows the key on top of `carried`,
# or, when the key holds less than the row saw, takes what it holds on top of
# the whole total. Only days in daily_usage_days are joined, so the staged
# rows of open days are dropped against a small table, not probed one by one.
# The new total is summed as numeric: one past 2^63 - 1 would otherwise fail
# the run, and every run after it, with "bigint out of range"; such a row is
# kept as it is and reported instead.
CLOSED_ROWS_SQL = """
WITH moved AS (
    SELECT d.day, d.account_id, d.metric, d.value AS before, s.value AS held,
        CASE WHEN s.value >= d.value - d.carried
            THEN d.carried ELSE d.value END AS carried
    FROM (
        SELECT DISTINCT ON (day, account_id, metric)
            day, account_id, metric, value
        FROM daily_usage_staging
        WHERE day IN (SELECT day FROM daily_usage_days)
        ORDER BY day, account_id, metric
    ) AS s
    JOIN daily_usage AS d USING (day, account_id, metric)
    WHERE d.closed
        AND s.value <> d.value - d.carried
        AND d.synced_at <= %(synced_at)s
), summed AS (
    SELECT day, account_id, metric, before, held, carried,
        carried::numeric + held AS total,
        carried::numeric + held
            BETWEEN -9223372036854775808 AND 9223372036854775807 AS fits
    FROM moved
), changed AS (
    UPDATE daily_usage AS t
    SET carried = c.carried, value = c.total::bigint, synced_at = %(synced_at)s
    FROM summed AS c
    WHERE (t.day, t.account_id, t.metric) = (c.day, c.account_id, c.metric)
        AND c.fits
    RETURNING t.day, t.account_id, t.metric, c.before, t.value AS after
)
SELECT count(*), count(*) FILTER (WHERE after <> before),
    (SELECT coalesce(json_agg(e), '[]') FROM (
        SELECT day, account_id, metric, before, after FROM changed
        WHERE after <> before ORDER BY day, account_id, metric LIMIT %(examples)s
    ) AS e),
    (SELECT count(*) FROM summed WHERE NOT fits),
    (SELECT coalesce(json_agg(o), '[]') FROM (
        SELECT day, account_id, metric, carried, held FROM summed
        WHERE NOT fits ORDER BY day, account_id, metric LIMIT %(examples)s
    ) AS o)
FROM changed
"""

# Rows just inserted for a day that was already closed.
LATE_NEW_ROWS_SQL = """
SELECT count(*) OVER (), day, account_id, metric, value
FROM daily_usage
WHERE NOT closed AND day IN (SELECT day FROM daily_usage_days)
ORDER BY day, account_id, metric
LIMIT %(examples)s
"""

CLOSE_DAYS_SQL = """
INSERT INTO daily_usage_days (day, closed_at)
SELECT DISTINCT day, %(synced_at)s FROM daily_usage
WHERE NOT closed AND day < %(close_before)s
ON CONFLICT (day) DO NOTHING
RETURNING day
"""

# A day already listed is closed whatever the grace period says now: had the
# grace been lengthened since, a late key of that day would otherwise stay
# open and be counted late again in every run.
CLOSE_ROWS_SQL = """
UPDATE daily_usage
SET closed = true, closed_at = %(synced_at)s, synced_at = %(synced_at)s
WHERE NOT closed
    AND (day < %(close_before)s OR day IN (SELECT day FROM daily_usage_days))
"""

# Closed rows whose key still holds part of the value, one page after `after`.
HELD_ROWS_SQL = """
SELECT day, account_id, metric, value - carried
FROM daily_usage
WHERE closed AND value <> carried
    AND (day, account_id, metric) > (%(day)s, %(account)s, %(metric)s)
ORDER BY day, account_id, metric
LIMIT %(limit)s
"""

# The same page again, now that its keys are gone, less the keys left in
# place. Naming the page by the query that found it (under the same lock, in
# the same transaction) costs one short index scan; sending 1000 keys back
# cost more than the update.
RELEASE_ROWS_SQL = """
UPDATE daily_usage AS t SET carried = t.value
FROM (
    SELECT day, account_id, metric FROM daily_usage
    WHERE closed AND value <> carried
        AND (day, account_id, metric) > (%(day)s, %(account)s, %(metric)s)
    ORDER BY day, account_id, metric
    LIMIT %(limit)s
) AS p
WHERE (t.day, t.account_id, t.metric) = (p.day, p.account_id, p.metric)
    AND (p.day, p.account_id, p.metric) NOT IN (
        SELECT k.day, k.account_id, k.metric FROM unnest(%(days)s::date[],
            %(accounts)s::text[], %(metrics)s::text[]) AS k(day, account_id, metric)
    )
"""


class DailyRollupSettings(FerrySettings):
    """`FERRY_DAILY_ROLLUP_*`, or the `[daily_rollup]` table of the config file."""

    toml_table = "daily_rollup"
    model_config = SettingsConfigDict(env_prefix="FERRY_DAILY_ROLLUP_")

    interval_s: float = Field(300.0, gt=0)
    startup_delay_s: float = Field(60.0, ge=0)
    jitter_s: float = Field(10.0, ge=0)
    scan_count: int = Field(500, ge=1, le=100_000)
    key_pattern: str = "usage:{day:date}:{account}:{metric}"
    # A day closes this long after the midnight UTC that ends it: time for
    # writes delayed by retries or clock skew to land. A write later than that
    # is still counted, as a late increment.
    close_grace_s: float = Field(3600.0, ge=0)
    # Off by default: removing keys frees Redis memory, but leaving them to
    # their TTL keeps Redis the writer's own business.
    delete_closed_keys: bool = False

    @field_validator("key_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            pattern = _core.KeyPattern(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if pattern.segment_names != SEGMENTS:
            raise ValueError(
                "must name the segments {day:date}, {account} and {metric}, in order"
            )
        try:
            pattern.format([date(2000, 1, 1), "a", "m"])
        except ValueError:
            raise ValueError("must declare the day segment as {day:date}") from None
        return value


@dataclass
class RunNotes:
    """What a run found in its transaction, reported once it has committed."""

    closed_days: list[date] = field(default_factory=list)
    closed_rows: int = 0
    late: int = 0
    examples: list[str] = field(default_factory=list)
    overflowed: int = 0
    overflow_examples: list[str] = field(default_factory=list)


@dataclass
class Removal:
    """What one removal pass did."""

    removed: int = 0
    gone: int = 0
    left: int = 0
    failed: bool = False


class DailyRollup(CounterSync):
    """The counter sync over usage keys, closing days and removing their keys."""

    def __init__(
        self,
        common: CommonSettings,
        *,
        pattern: str,
        schedule: Schedule,
        scan_count: int,
        close_grace_s: float,
        delete_closed_keys: bool,
    ) -> None:
        super().__init__(
            NAME,
            common,
            pattern=pattern,
            table=TABLE,
            schedule=schedule,
            scan_count=scan_count,
        )
        self.close_grace = timedelta(seconds=close_grace_s)
        self.delete_closed_keys = delete_closed_keys
        self._notes = RunNotes()
        self._stopping: threading.Event | None = None
        self._run_started = time.monotonic()
        self._counters.update(
            {
                "closed_days": 0,
                "closed_rows": 0,
                "late_increments": 0,
                "late_overflowed": 0,
                "keys_removed": 0,
                "removal_failures": 0,
            }
        )

    def run_once(self, ctx: RunContext) -> RunOutcome:
        """Sync once, close the days past grace, then remove their keys.

        Raises `StoreError` as `CounterSync.run_once` does; a failed removal
        after the commit does not fail the run (see the module docstring).
        """
        self._stopping = ctx.stopping
        self._run_started = time.monotonic()
        return super().run_once(ctx)

    # -- hooks ------------------------------------------------------------

    def upsert_excluded(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> int:
        """Apply staged values to closed rows; returns the rows rewritten.

        Rows whose total changed are late increments, kept for the log.
        """
        self._notes = notes = RunNotes()
        row = conn.execute(
            CLOSED_ROWS_SQL, {"synced_at": synced_at, "examples": EXAMPLES_PER_RUN}
        ).fetchone()
        if row is None:
            return 0
        written, late, examples, overflowed, too_big = cast(
            tuple[int, int, list[dict[str, Any]], int, list[dict[str, Any]]], row
        )
        notes.late = late
        notes.overflowed = overflowed
        notes.overflow_examples = [
            self._describe(
                date.fromisoformat(e["day"]),
                e["account_id"],
                e["metric"],
                f"{e['carried']}+{e['held']}",
            )
            for e in too_big
        ]
        notes.examples = [
            self._describe(
                date.fromisoformat(e["day"]),
                e["account_id"],
                e["metric"],
                f"{e['before']}->{e['after']}",
            )
            for e in examples
        ]
        return written

    def after_upsert(
        self, conn: psycopg.Connection[tuple[object, ...]], synced_at: datetime
    ) -> dict[str, int | float | str]:
        """Count new keys of closed days as late, then close the days past grace."""
        notes = self._notes
        late_new = cast(
            list[tuple[int, date, str, str, int]],
            conn.execute(LATE_NEW_ROWS_SQL, {"examples": EXAMPLES_PER_RUN}).fetchall(),
        )
        if late_new:
            notes.late += late_new[0][0]
            room = EXAMPLES_PER_RUN - len(notes.examples)
            notes.examples.extend(
                self._describe(day, account, metric, f"new={value}")
                for _, day, account, metric, value in late_new[:room]
            )

        # The session's time zone (the server's default, or PGTZ) decides
        # the zone of `synced_at`; days end at midnight UTC.
        params = {
            "synced_at": synced_at,
            "close_before": (synced_at.astimezone(UTC) - self.close_grace).date(),
        }
        days = conn.execute(CLOSE_DAYS_SQL, params).fetchall()
        notes.closed_days = sorted(cast(date, day) for (day,) in days)
        notes.closed_rows = max(conn.execute(CLOSE_ROWS_SQL, params).rowcount, 0)
        return {
            "closed_days": len(notes.closed_days),
            "closed_rows": notes.closed_rows,
            "late_increments": notes.late,
            "late_overflowed": notes.overflowed,
        }

    def after_commit(self, client: redis_store.Client) -> dict[str, int | float | str]:
        """Report what the committed run closed and found late; remove keys."""
        notes = self._notes
        self._counters["closed_days"] += len(notes.closed_days)
        self._counters["closed_rows"] += notes.closed_rows
        self._counters["late_increments"] += notes.late
        self._counters["late_overflowed"] += notes.overflowed
        if notes.closed_days:
            logger.info(
                "days_closed %s",
                kv(
                    {
                        "worker": self.name,
                        "days": ",".join(d.isoformat() for d in notes.closed_days),
                        "rows": notes.closed_rows,
                    }
                ),
            )
        if notes.late:
            logger.warning(
                "late_increments %s",
                kv(
                    {
                        "worker": self.name,
                        "count": notes.late,
                        "action": "added to the closed days' totals",
                        "examples": "; ".join(notes.examples),
                    }
                ),
            )
        if notes.overflowed:
            logger.warning(
                "late_overflowed %s",
                kv(
                    {
                        "worker": self.name,
                        "count": notes.overflowed,
                        "action": "row kept; the key's value is not counted",
                        "examples": "; ".join(notes.overflow_examples),
                    }
                ),
            )
        if not self.delete_closed_keys:
            return {}

        removal = self._remove_held_keys(client)
        if removal.removed or removal.gone:
            # Rows of removed keys leave the memory's seed; reloading drops
            # them, so the memory does not grow with every day closed.
            self.forget_memory()
        return {
            "keys_removed": removal.removed,
            "keys_left": removal.left,
            "removal_failed": int(removal.failed),
        }

    # -- removal ----------------------------------------------------------

    def _remove_held_keys(self, client: redis_store.Client) -> Removal:
        """Delete the keys closed rows still count on, page by page."""
        removal = Removal()
        script = client.register_script(REMOVE_SCRIPT)
        deadline = self._run_started + REMOVE_UNTIL_RUN_S
        after: tuple[date, str, str] = (date.min, "", "")
        try:
            conn = self._connection()
            while time.monotonic() < deadline and not self._stop_requested():
                with conn.transaction():
                    # Under the run's lock no other process rewrites the page
                    # between reading it and recording its removal; a process
                    # that holds the lock is running and removes them itself.
                    if not postgres.try_xact_lock(conn, self.name):
                        break
                    # Recording a removal is bookkeeping that the next run
                    # redoes if a server crash loses it, so it need not wait
                    # for its WAL flush.
                    conn.execute("SET LOCAL synchronous_commit = off")
                    query: dict[str, object] = {
                        "day": after[0],
                        "account": after[1],
                        "metric": after[2],
                        "limit": REMOVE_BATCH_KEYS,
                    }
                    page = cast(
                        list[HeldRow], conn.execute(HELD_ROWS_SQL, query).fetchall()
                    )
                    if not page:
                        break
                    self._remove_page(conn, script, page, query, removal)
                after = page[-1][:3]
        except (redis.RedisError, psycopg.Error, StoreError) as exc:
            removal.failed = True
            self._counters["removal_failures"] += 1
            logger.warning(
                "key_removal_failed %s",
                kv(
                    {
                        "worker": self.name,
                        "removed": removal.removed,
                        "error": postgres.first_line(exc),
                        "action": "rows stay closed; the next run removes the rest",
                    }
                ),
            )
        self._counters["keys_removed"] += removal.removed
        return removal

    def _remove_page(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        script: Script,
        page: list[HeldRow],
        query: dict[str, object],
        removal: Removal,
    ) -> None:
        keys = [
            self.pattern.format([day, account, metric])
            for day, account, metric, _ in page
        ]
        held = [str(value) for *_, value in page]
        answers = cast(list[int], script(keys=keys, args=held))
        left = [row for row, answer in zip(page, answers, strict=True) if answer < 0]
        removal.removed += answers.count(1)
        removal.gone += answers.count(0)
        removal.left += len(left)
        conn.execute(
            RELEASE_ROWS_SQL,
            {
                **query,
                "days": [row[0] for row in left],
                "accounts": [row[1] for row in left],
                "metrics": [row[2] for row in left],
            },
        )

    def _stop_requested(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def _describe(self, day: date, account: str, metric: str, change: str) -> str:
        key = self.pattern.format([day, account, metric])
        return f"{key.decode('utf-8', 'backslashreplace')} {change}"


def build(common: CommonSettings) -> DailyRollup:
    """The daily-rollup worker for these settings; raises ConfigError."""
    own = load(DailyRollupSettings)
    return DailyRollup(
        common,
        pattern=own.key_pattern,
        schedule=Schedule(
            interval_s=own.interval_s,
            startup_delay_s=own.startup_delay_s,
            jitter_s=own.jitter_s,
        ),
        scan_count=own.scan_count,
        close_grace_s=own.close_grace_s,
        delete_closed_keys=own.delete_closed_keys,
    )
