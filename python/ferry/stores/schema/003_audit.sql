-- audit's tables: the events, keyed by their stream entry id so that a
-- redelivered entry is never stored twice, and the entries that could not
-- be stored, with their raw fields and the reason.
CREATE TABLE IF NOT EXISTS audit_log (
    stream_id   text COLLATE "C" PRIMARY KEY,
    actor_id    text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    ip          inet,
    occurred_at timestamptz NOT NULL,
    metadata    jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now()
);

-- Events arrive roughly in time order, so a BRIN index (one summary per 128
-- heap pages) answers time-range queries and costs the ingest next to
-- nothing, where a B-tree would be a second full index to update per insert.
CREATE INDEX IF NOT EXISTS audit_log_occurred_at
    ON audit_log USING brin (occurred_at);

-- `fields` keeps every field of the entry as a JSON object; names and values
-- that are not UTF-8 or hold NUL are base64 (see ferry._core.encode_audit).
-- One row per entry: a dead letter written again after a crash is a no-op.
CREATE TABLE IF NOT EXISTS audit_dead_letters (
    stream_id   text COLLATE "C" PRIMARY KEY,
    fields      jsonb NOT NULL,
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
