"""Audit batches into Postgres: COPY into staging, one insert, dead letters.

A batch is written in one transaction: its good entries are copied (binary
COPY, encoded by the Rust core) into a temporary table dropped at commit,
which keeps nothing across transactions for a pooler to lose, then inserted
into `audit_log` with `ON CONFLICT (stream_id) DO NOTHING`, so an entry
delivered again after a crash is not stored twice. Its dead letters are
written in the same transaction.

Should Postgres refuse the batch over one row's data (something the core let
through), the batch is split in halves, each written on its own, down to the
single entry that is refused; that one becomes a dead letter with Postgres's
reason. The rest of the batch lands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from ferry import _core
from ferry.stores.postgres import first_line
from ferry.workers.audit.stream import Entry

# (stream id, raw fields as JSON object text, reason)
DeadLetter = tuple[bytes, str, str]
Conn = psycopg.Connection[tuple[object, ...]]

logger = logging.getLogger("ferry.workers.audit")

STAGING_SQL = """
CREATE TEMP TABLE audit_log_staging (
    stream_id text, actor_id text, action text, target_type text,
    target_id text, ip inet, occurred_at timestamptz, metadata jsonb
) ON COMMIT DROP
"""
COPY_SQL = "COPY audit_log_staging FROM STDIN (FORMAT BINARY)"
INSERT_SQL = """
INSERT INTO audit_log (stream_id, actor_id, action, target_type, target_id,
    ip, occurred_at, metadata)
SELECT stream_id, actor_id, action, target_type, target_id,
    ip, occurred_at, metadata
FROM audit_log_staging
ON CONFLICT (stream_id) DO NOTHING
"""
DEAD_LETTER_SQL = """
INSERT INTO audit_dead_letters (stream_id, fields, reason)
VALUES (%s, %s::jsonb, %s)
ON CONFLICT (stream_id) DO NOTHING
"""

# Errors about a row's data, which splitting the batch can pin on one entry;
# any other error (a lost connection, a full disk) fails the whole batch. A
# row over one of Postgres's size limits (a jsonb string of 256 MiB or more)
# is a program-limit error, not a data error, but it too is the row's own.
ROW_ERRORS = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)
# A dead letter's raw fields are kept whole up to this size; past it, values
# over `DEAD_LETTER_VALUE_MAX_BYTES` (as JSON text) are replaced by that
# length, `{"omitted_json_bytes": n}`, so that an
# entry refused for its size is not refused again as a dead letter (jsonb
# takes no string of 256 MiB or more).
DEAD_LETTER_MAX_BYTES = 64 * 2**20
DEAD_LETTER_VALUE_MAX_BYTES = 2**20


@dataclass
class Written:
    """What a batch left in Postgres."""

    stored: int = 0
    duplicates: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def write_batch(
    conn: Conn, entries: Sequence[Entry], dead: list[DeadLetter]
) -> Written:
    """Write `entries` and the dead letters `dead`, committed when it returns.

    Malformed entries (as the core judges them) join `dead`. Raises
    `psycopg.Error` for anything but a row Postgres refuses; then nothing of
    the batch is committed, except the halves already written while a
    refused row was being looked for.
    """
    written = Written()
    _write(conn, entries, dead, written)
    return written


def raw_fields_json(fields: dict[bytes, bytes]) -> str:
    """Fields as JSON object text, in the core's dead-letter form."""
    return _core.dead_letter_fields(fields)


def _write(
    conn: Conn, entries: Sequence[Entry], dead: list[DeadLetter], written: Written
) -> None:
    batch = _core.encode_audit(entries)
    letters = [*dead, *batch.dead]
    try:
        with conn.transaction():
            stored = _insert(conn, batch.copy_data, batch.rows)
            _insert_dead(conn, letters)
    except ROW_ERRORS as exc:
        if len(entries) <= 1:
            _refused(conn, entries, dead, exc, written)
            return
        half = len(entries) // 2
        logger.debug("batch_split entries=%d error=%s", len(entries), first_line(exc))
        _write(conn, entries[:half], dead, written)
        _write(conn, entries[half:], [], written)
        return
    written.stored += stored
    written.duplicates += batch.rows - stored
    written.dead.extend(letters)


def _refused(
    conn: Conn,
    entries: Sequence[Entry],
    dead: list[DeadLetter],
    exc: psycopg.Error,
    written: Written,
) -> None:
    letters = list(dead)
    for entry_id, fields in entries:
        reason = f"postgres refused the entry: {first_line(exc)}"
        letters.append((entry_id, raw_fields_json(fields or {}), reason))
    with conn.transaction():
        _insert_dead(conn, letters)
    written.dead.extend(letters)


def _insert(conn: Conn, copy_data: bytes, rows: int) -> int:
    if rows == 0:
        return 0
    conn.execute(STAGING_SQL)
    with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.write(_core.COPY_HEADER)
        copy.write(copy_data)
        copy.write(_core.COPY_TRAILER)
    return max(conn.execute(INSERT_SQL).rowcount, 0)


def _insert_dead(conn: Conn, letters: list[DeadLetter]) -> None:
    if not letters:
        return
    with conn.cursor() as cur:
        cur.executemany(
            DEAD_LETTER_SQL,
            [
                (entry_id.decode("ascii"), _bounded(fields), reason)
                for entry_id, fields, reason in letters
            ],
        )


def _bounded(fields_json: str) -> str:
    """The raw fields, with their largest values left out when they are huge."""
    if len(fields_json) <= DEAD_LETTER_MAX_BYTES // 4:
        return fields_json
    if len(fields_json.encode("utf-8")) <= DEAD_LETTER_MAX_BYTES:
        return fields_json
    shown: dict[str, object] = json.loads(fields_json)
    for name, value in shown.items():
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if size > DEAD_LETTER_VALUE_MAX_BYTES:
            shown[name] = {"omitted_json_bytes": size}
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))
