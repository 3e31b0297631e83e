"""The audit stream in Redis: the group, reads, claims, acknowledgements, trims.

XREADGROUP and XAUTOCLAIM replies are taken raw and turned here into the
`(id, fields or None)` pairs that `ferry._core.encode_audit` reads: redis-py's
own parsing gives XREADGROUP a different shape depending on its
`legacy_responses` option, and turns an entry deleted from the stream into an
empty dict, which could not be told from an entry without fields.

Every Redis error leaves this module as `StoreError`, its cause kept. A group
that has vanished (the stream was deleted) is created again and the command
retried once; that includes a blocked read, which Redis ends with an
"UNBLOCKED" error when the stream or group goes away under it. A stream that
does not exist has nothing to trim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import redis
from redis.commands.core import Script

from ferry.errors import StoreError

# Entries walked per XRANGE while looking for where a length limit cuts; the
# reply carries whole entries, so pages stay small.
LENGTH_SCAN_PAGE_ENTRIES = 1000
# At most this many entries are walked per trim pass; a stream far over its
# length limit is brought down over several passes. Redis has no command that
# finds the id at a position without reading the entries before it, so a
# length limit costs a second read of what it trims; the age limit costs one
# call.
LENGTH_SCAN_MAX_ENTRIES = 100_000

logger = logging.getLogger("ferry.workers.audit")

# Error prefixes Redis gives when the group is gone: NOGROUP for a command on
# it, UNBLOCKED for a read that was blocked while the stream or group was
# deleted (Redis 7.0 and later).
GROUP_MISSING_ERRORS = ("NOGROUP", "UNBLOCKED")

Entry = tuple[bytes, dict[bytes, bytes] | None]
StreamId = tuple[int, int]
T = TypeVar("T")

# Deletes consumer ARGV[2] of group ARGV[1] only if it owns no pending entry
# and has been idle at least ARGV[3] ms. Checking and deleting in one script
# means no entry can be delivered to it in between and then be orphaned:
# XGROUP DELCONSUMER drops the pending entries of the consumer it deletes.
DELETE_IDLE_CONSUMER_SCRIPT = """
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, fields in ipairs(consumers) do
    local info = {}
    for i = 1, #fields, 2 do
        info[fields[i]] = fields[i + 1]
    end
    if info['name'] == ARGV[2] then
        if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
            return 1
        end
        return 0
    end
end
return 0
"""


@dataclass
class Claim:
    """What one XAUTOCLAIM call took over."""

    entries: list[Entry]
    # Ids that were pending but are no longer in the stream; Redis has
    # already dropped them from the pending list.
    deleted: list[bytes]
    # Where the next call starts; b"0-0" once the pending list was walked.
    cursor: bytes


def parse_id(entry_id: bytes | str) -> StreamId:
    """(milliseconds, sequence) of a stream id such as b"1700000000000-3"."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    """The text form of a parsed stream id."""
    return f"{stream_id[0]}-{stream_id[1]}"


def next_id(stream_id: StreamId) -> StreamId:
    """The smallest id greater than `stream_id`."""
    ms, seq = stream_id
    if seq == 2**64 - 1:
        return ms + 1, 0
    return ms, seq + 1


class AuditStream:
    """One consumer's view of the audit stream and its group."""

    def __init__(self, client: redis.Redis, key: str, group: str, consumer: str):
        self.client = client
        self.key = key
        self.group = group
        self.consumer = consumer
        # Raw replies; see the module docstring.
        client.set_response_callback("XREADGROUP", _raw)
        client.set_response_callback("XAUTOCLAIM", _raw)
        self._delete_consumer: Script = client.register_script(
            DELETE_IDLE_CONSUMER_SCRIPT
        )

    def ensure_group(self) -> bool:
        """Create the group (and the stream) unless it exists; True if created.

        A new group starts at the beginning of the stream, so that events
        written before the first consumer started are read too.
        """
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise StoreError(f"cannot create group {self.group!r}: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"cannot create group {self.group!r}: {exc}") from exc
        logger.info("group_created stream=%s group=%s start=0", self.key, self.group)
        return True

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to any consumer, waiting up to `block_ms`."""
        reply = self._group_call(
            lambda: self._command(
                "XREADGROUP", "GROUP", self.group, self.consumer,
                "COUNT", count, "BLOCK", block_ms, "STREAMS", self.key, ">",
            )
        )  # fmt: skip
        return _stream_entries(reply)

    def read_own_pending(self, after: bytes, count: int) -> list[Entry]:
        """This consumer's pending entries with ids above `after`.

        An entry deleted from the stream comes back with fields None.
        """
        reply = self._group_call(
            lambda: self._command(
                "XREADGROUP", "GROUP", self.group, self.consumer,
                "COUNT", count, "STREAMS", self.key, after,
            )
        )  # fmt: skip
        return _stream_entries(reply)

    def autoclaim(self, min_idle_ms: int, cursor: bytes, count: int) -> Claim:
        """Take over entries pending longer than `min_idle_ms`, from `cursor`."""
        reply = self._group_call(
            lambda: self._command(
                "XAUTOCLAIM", self.key, self.group, self.consumer,
                min_idle_ms, cursor, "COUNT", count,
            )
        )  # fmt: skip
        # Redis 7 answers [cursor, entries, deleted ids]; 6.2 has no third.
        deleted = list(reply[2]) if len(reply) > 2 else []
        return Claim(_entries(reply[1]), deleted, reply[0])

    def deliveries(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        """How many times each of this consumer's pending `ids` was delivered."""
        if not ids:
            return {}
        first = min(ids, key=parse_id)
        last = max(ids, key=parse_id)
        rows = self._group_call(
            lambda: self.client.xpending_range(
                self.key, self.group, first, last, len(ids), self.consumer
            )
        )
        wanted = set(ids)
        return {
            row["message_id"]: int(row["times_delivered"])
            for row in rows
            if row["message_id"] in wanted
        }

    def ack(self, ids: Sequence[bytes]) -> int:
        """Acknowledge `ids`; returns how many were still pending."""
        if not ids:
            return 0
        return int(self._call(lambda: self.client.xack(self.key, self.group, *ids)))

    def trim(self, max_age_ms: int, max_len: int) -> int:
        """Trim entries older than `max_age_ms` or beyond the newest `max_len`.

        Never trims an entry that any group of the stream still needs: one
        pending, or one not yet delivered to it. 0 disables either limit.
        Returns the number of entries removed.
        """
        try:
            groups = self.client.xinfo_groups(self.key)
        except redis.ResponseError as exc:
            if str(exc).startswith("no such key"):
                return 0
            raise StoreError(f"redis stream {self.key!r}: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis stream {self.key!r}: {exc}") from exc
        keep_from = self._needed_from(groups)
        cut: StreamId = (0, 0)
        if max_age_ms > 0:
            now_s, now_us = self._call(self.client.time)
            now_ms = int(now_s) * 1000 + int(now_us) // 1000
            cut = max(cut, (now_ms - max_age_ms, 0))
        if max_len > 0:
            cut = max(cut, self._length_cut(max_len, keep_from))
        if keep_from is not None:
            cut = min(cut, keep_from)
        if cut <= (0, 1):
            return 0
        # MINID keeps every entry with an id at or above `cut`; exact, not
        # "~", so that what is kept is exactly what was computed.
        removed = self._call(
            lambda: self.client.xtrim(self.key, minid=format_id(cut), approximate=False)
        )
        return int(removed)

    def delete_idle_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete other consumers idle `min_idle_ms` or more with nothing pending."""
        consumers = self._group_call(
            lambda: self.client.xinfo_consumers(self.key, self.group)
        )
        deleted = []
        for info in consumers:
            name = _text(info["name"])
            if name == self.consumer:
                continue
            if int(info["pending"]) or int(info["idle"]) < min_idle_ms:
                continue
            done = self._call(
                partial(
                    self._delete_consumer,
                    keys=[self.key],
                    args=[self.group, name, min_idle_ms],
                )
            )
            if done:
                deleted.append(name)
        return deleted

    # -- helpers ----------------------------------------------------------

    def _needed_from(self, groups: list[dict[str, Any]]) -> StreamId | None:
        """The lowest id some group still needs, or None when none needs any."""
        needed: list[StreamId] = []
        for group in groups:
            if int(group["pending"]):
                summary = self._call(
                    partial(self.client.xpending, self.key, group["name"])
                )
                if summary["min"] is not None:
                    needed.append(parse_id(summary["min"]))
                    continue
            needed.append(next_id(parse_id(group["last-delivered-id"])))
        return min(needed) if needed else None

    def _length_cut(self, max_len: int, keep_from: StreamId | None) -> StreamId:
        """The id from which the newest `max_len` entries start, or as near as
        the walk gets within `LENGTH_SCAN_MAX_ENTRIES` entries or `keep_from`."""
        excess = int(self._call(lambda: self.client.xlen(self.key))) - max_len
        cut: StreamId = (0, 0)
        start = "-"
        walked = 0
        while excess > walked and walked < LENGTH_SCAN_MAX_ENTRIES:
            page = min(LENGTH_SCAN_PAGE_ENTRIES, excess - walked)
            entries = self._call(
                partial(self.client.xrange, self.key, min=start, count=page)
            )
            if not entries:
                break
            last = parse_id(cast(bytes, entries[-1][0]))
            cut = next_id(last)
            walked += len(entries)
            if keep_from is not None and cut >= keep_from:
                break
            start = "(" + format_id(last)
        return cut

    def _command(self, *args: object) -> Any:
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    def _call(self, command: Callable[[], T]) -> T:
        try:
            return command()
        except redis.RedisError as exc:
            raise StoreError(f"redis stream {self.key!r}: {exc}") from exc

    def _group_call(self, command: Callable[[], T]) -> T:
        try:
            return command()
        except redis.ResponseError as exc:
            if not str(exc).startswith(GROUP_MISSING_ERRORS):
                raise StoreError(f"redis stream {self.key!r}: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis stream {self.key!r}: {exc}") from exc
        logger.warning(
            "group_missing stream=%s group=%s action=%s",
            self.key,
            self.group,
            "created again from the start of the stream",
        )
        self.ensure_group()
        return self._call(command)


def _raw(response: Any, **options: Any) -> Any:
    return response


def _stream_entries(reply: Any) -> list[Entry]:
    # None when a blocking read timed out; else {stream key: entries} over
    # RESP3 (redis-py's default since 8.0) or [[stream key, entries]] over
    # RESP2. The entries themselves have one shape in both.
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        return _entries(entries)
    return _entries(reply[0][1])


def _entries(raw: Any) -> list[Entry]:
    entries: list[Entry] = []
    for entry_id, flat in raw:
        if flat is None:
            entries.append((entry_id, None))
        else:
            pairs = iter(flat)
            entries.append((entry_id, dict(zip(pairs, pairs, strict=False))))
    return entries


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
