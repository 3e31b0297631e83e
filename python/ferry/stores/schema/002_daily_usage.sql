-- daily-rollup's table: one row per (day, account, metric) counter, and the
-- days that have been closed.
--
-- `value` is the day's total. Once a day is closed its Redis keys may be
-- removed (or expire), and a late increment may create a key again holding
-- only the increment; `carried` is the part of `value` that the current Redis
-- key does not hold, so that `value = carried + <the key's value>` at all
-- times and a late increment is added to the total instead of replacing it.
-- Open rows always have carried = 0.
CREATE TABLE IF NOT EXISTS daily_usage (
    day        date NOT NULL,
    account_id text COLLATE "C" NOT NULL,
    metric     text COLLATE "C" NOT NULL,
    value      bigint NOT NULL,
    synced_at  timestamptz NOT NULL,
    closed     boolean NOT NULL DEFAULT false,
    closed_at  timestamptz,
    carried    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, account_id, metric)
);

-- Open rows, for closing a day without walking the table's whole history.
CREATE INDEX IF NOT EXISTS daily_usage_open
    ON daily_usage (day) WHERE NOT closed;

-- Closed rows whose Redis key still holds part of the value: the keys to
-- remove when removal is configured, and the closed rows the memory seeds.
CREATE INDEX IF NOT EXISTS daily_usage_held
    ON daily_usage (day, account_id, metric) WHERE closed AND value <> carried;

-- A day is final once listed here; a key of such a day that appears later is
-- a late increment.
CREATE TABLE IF NOT EXISTS daily_usage_days (
    day       date PRIMARY KEY,
    closed_at timestamptz NOT NULL
);
