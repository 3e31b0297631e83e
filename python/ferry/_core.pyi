"""Type stub for the compiled extension `ferry._core` (built from `rust/`)."""

import datetime
from collections.abc import Iterable, Sequence
from typing import final

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "AuditBatch",
    "CounterSync",
    "KeyPattern",
    "PageResult",
    "dead_letter_fields",
    "encode_audit",
    "parse_int",
]

COPY_HEADER: bytes
"""Start of a binary COPY stream: signature, flags and header extension (19 bytes)."""

COPY_TRAILER: bytes
"""End of a binary COPY stream: a field count of -1."""

def parse_int(value: bytes | None, /) -> int | None:
    """Apply Redis's integer rules to a value read with GET or MGET.

    None (the key is missing) and b"" count as 0. Returns None for a value Redis
    would not accept as an integer: a sign other than a leading '-', a leading
    zero, '-0', spaces, or a number outside signed 64 bits.
    """

@final
class KeyPattern:
    """A key template such as "usage:{day:date}:{account}:{metric}"."""

    def __new__(cls, template: str) -> KeyPattern:
        """Compile the template; ValueError names the problem when it is malformed."""

    @property
    def template(self) -> str:
        """The template text as given."""

    @property
    def segment_names(self) -> list[str]:
        """Names of the named segments, in order."""

    @property
    def scan_match(self) -> str:
        """The SCAN MATCH glob for the template's keys, such as "quota:*"."""

    def parse(self, key: bytes) -> tuple[str | datetime.date, ...] | None:
        """The named segments of `key`, or None when the key is malformed.

        Malformed: a different number of ':'-separated segments, a literal that
        differs, an empty segment, bytes that are not UTF-8 or hold NUL, a date
        that is not a real YYYY-MM-DD date, or more than 2048 bytes in all
        (Postgres could not index its columns).
        """

    def format(self, segments: Sequence[str | datetime.date]) -> bytes:
        """The key for `segments`; ValueError on a wrong arity, type or value."""

@final
class PageResult:
    """Binary COPY tuples for one page, with what happened to its keys."""

    @property
    def copy_data(self) -> bytes:
        """COPY tuples only, one per row to write; no header or trailer."""

    @property
    def rows(self) -> int:
        """Rows in `copy_data`."""

    @property
    def invalid(self) -> int:
        """Values that are not Redis integers; their rows were skipped."""

    @property
    def malformed(self) -> int:
        """Keys that do not match the pattern; skipped."""

    @property
    def missing(self) -> int:
        """None values (the key vanished between SCAN and MGET); written as 0."""

    @property
    def duplicates(self) -> int:
        """Keys already seen earlier in this run; skipped."""

    @property
    def unchanged(self) -> int:
        """Values equal to what was last written for the key; skipped."""

    @property
    def examples(self) -> list[str]:
        """At most five one-line descriptions of bad keys and values."""

@final
class CounterSync:
    """Encodes MGET pages into COPY rows and remembers what was last written.

    Safe to share between threads: calls wait for each other, and pages are
    encoded with the GIL released.
    """

    def __new__(cls, pattern: KeyPattern) -> CounterSync:
        """A sync with no memory for keys of `pattern`."""

    def begin_run(self) -> None:
        """Start a run: clear the keys seen and the writes pending."""

    def encode_page(
        self, keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> PageResult:
        """Encode one SCAN page and its MGET reply into rows for changed keys.

        Raises ValueError when the lengths differ or an item is not bytes (or
        None, for a value).
        """

    def encode_absent(self) -> PageResult:
        """After a complete walk: zero rows for remembered keys not seen."""

    def commit_run(self) -> None:
        """Make the run's pending writes the remembered values."""

    def forget(self) -> None:
        """Drop all memory and run state."""

    def seed(self, rows: Iterable[Sequence[object]]) -> int:
        """Remember rows read from Postgres, each (*segments, value).

        Returns the number of rows remembered. Rows no key could produce (text
        that is empty or holds ':' or NUL, a key over 2048 bytes) are skipped.
        ValueError on a row of the wrong shape or type, and then nothing is
        seeded.
        """

    def __len__(self) -> int:
        """Remembered keys as of the last call that finished; never waits."""

@final
class AuditBatch:
    """Good audit entries as COPY tuples, and dead letters for the others."""

    @property
    def copy_data(self) -> bytes:
        """audit_log tuples only: stream_id, actor_id, action, target_type,
        target_id, ip, occurred_at, metadata."""

    @property
    def rows(self) -> int:
        """Tuples in `copy_data`."""

    @property
    def dead(self) -> list[tuple[bytes, str, str]]:
        """(stream id, raw fields as JSON object text, reason) per bad entry."""

def encode_audit(
    entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]], /
) -> AuditBatch:
    """Check a batch of stream entries and encode the good ones.

    `fields` is None for an entry deleted from the stream. One bad entry never
    fails the batch; ValueError only when an item does not have this shape.
    """

def dead_letter_fields(fields: dict[bytes, bytes], /) -> str:
    """One entry's fields as the JSON object text that dead letters carry.

    Names and values that are not UTF-8 or hold NUL are base64: a value as
    {"base64": "..."}, a name as "base64:...". ValueError when a name or value
    is not bytes.
    """
