"""A plain-Python statement of the rules that `ferry._core` implements in Rust.

It trades speed for plainness: the tests check that the core agrees with it on
arbitrary input, and the benches measure what the core saves against it. It
covers Redis integers, key templates and the encoding of counter pages; the
memory it keeps follows the same run semantics as `ferry._core.CounterSync`.
"""

from __future__ import annotations

import datetime
import re
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
PG_EPOCH = datetime.date(2000, 1, 1)
MAX_EXAMPLES = 5
MAX_REPR_CHARS = 60
MAX_KEY_BYTES = 2048

_INTEGER = re.compile(rb"0|-?[1-9][0-9]*")
_DATE = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})")

Segment = str | datetime.date


def parse_int(value: bytes | None) -> int | None:
    """Redis's integer rules; None and b"" count as 0, anything else invalid."""
    if value is None or value == b"":
        return 0
    if _INTEGER.fullmatch(value) is None:
        return None
    number = int(value)
    return number if I64_MIN <= number <= I64_MAX else None


@dataclass(frozen=True)
class Template:
    """A well-formed key template: ("literal", text) or (kind, name) parts."""

    parts: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, source: str) -> Template:
        """Compile a template that is known to be well formed."""
        parts: list[tuple[str, str]] = []
        for piece in _split_outside_braces(source):
            if piece.startswith("{"):
                name, _, kind = piece[1:-1].partition(":")
                parts.append((kind or "text", name))
            else:
                parts.append(("literal", piece))
        return cls(tuple(parts))

    def parse(self, key: bytes) -> tuple[Segment, ...] | None:
        """The named segments of `key`, or None when it is malformed."""
        if len(key) > MAX_KEY_BYTES:
            return None
        pieces = key.split(b":")
        if len(pieces) != len(self.parts):
            return None
        segments: list[Segment] = []
        for (kind, text), piece in zip(self.parts, pieces, strict=True):
            if kind == "literal":
                if piece != text.encode():
                    return None
                continue
            segment = _parse_segment(kind, piece)
            if segment is None:
                return None
            segments.append(segment)
        return tuple(segments)

    def format(self, segments: Sequence[Segment]) -> bytes:
        """The key of well-typed, valid `segments`."""
        values = iter(segments)
        pieces = []
        for kind, text in self.parts:
            if kind == "literal":
                pieces.append(text)
                continue
            value = next(values)
            if isinstance(value, datetime.date):
                pieces.append(value.isoformat())
            else:
                pieces.append(value)
        return ":".join(pieces).encode()


def _split_outside_braces(source: str) -> list[str]:
    pieces = [""]
    depth = 0
    for char in source:
        if char == ":" and depth == 0:
            pieces.append("")
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        pieces[-1] += char
    return pieces


def _parse_segment(kind: str, piece: bytes) -> Segment | None:
    if not piece or b"\0" in piece:
        return None
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if kind == "text":
        return text
    match = _DATE.fullmatch(piece)
    if match is None:
        return None
    try:
        return datetime.date(*(int(group) for group in match.groups()))
    except ValueError:
        return None


def encode_row(segments: Sequence[Segment], value: int) -> bytes:
    """One binary COPY tuple: the segments, then the value as bigint."""
    out = [struct.pack(">h", len(segments) + 1)]
    for segment in segments:
        if isinstance(segment, datetime.date):
            out.append(struct.pack(">ii", 4, (segment - PG_EPOCH).days))
        else:
            data = segment.encode()
            out.append(struct.pack(">i", len(data)) + data)
    out.append(struct.pack(">iq", 8, value))
    return b"".join(out)


def short_bytes_repr(value: bytes) -> str:
    """Python's repr of `value`, cut to MAX_REPR_CHARS with '...' after."""
    full = repr(value)
    if len(full) <= MAX_REPR_CHARS:
        return full
    quote = full[1]
    out = "b" + quote
    for byte in value:
        piece = _escape_byte(byte, quote)
        if len(out) + len(piece) + 1 > MAX_REPR_CHARS:
            break
        out += piece
    return out + quote + "..."


def _escape_byte(byte: int, quote: str) -> str:
    if chr(byte) == quote:
        return "\\" + quote
    return repr(bytes([byte]))[2:-1]


def key_text(key: bytes) -> str:
    """A valid key as text when printable, else as a short bytes repr."""
    text = key.decode("utf-8")
    if any(unicodedata.category(char) == "Cc" for char in text):
        return short_bytes_repr(key)
    if len(text) <= MAX_REPR_CHARS:
        return text
    return text[: MAX_REPR_CHARS - 3] + "..."


@dataclass
class Page:
    """What the reference makes of one page: COPY tuples, counts, examples."""

    copy_data: bytes = b""
    rows: int = 0
    invalid: int = 0
    malformed: int = 0
    missing: int = 0
    duplicates: int = 0
    unchanged: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, example: str) -> None:
        """Keep an example while there is room."""
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)


class ReferenceSync:
    """The memory semantics of `ferry._core.CounterSync`, in plain Python."""

    def __init__(self, template: str) -> None:
        self.template = Template.compile(template)
        self.remembered: dict[bytes, int] = {}
        self.seen: set[bytes] = set()
        self.seen_malformed: set[bytes] = set()
        self.pending: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.remembered)

    def begin_run(self) -> None:
        """Forget the keys seen and the writes pending."""
        self.seen.clear()
        self.seen_malformed.clear()
        self.pending.clear()

    def encode_page(
        self, keys: Sequence[bytes], values: Sequence[bytes | None]
    ) -> Page:
        """Rows for the keys of one page whose value changed."""
        page = Page()
        rows = []
        for key, value in zip(keys, values, strict=True):
            segments = self.template.parse(key)
            if segments is None:
                if key in self.seen_malformed:
                    page.duplicates += 1
                    continue
                self.seen_malformed.add(key)
                page.malformed += 1
                page.note(f"malformed key {short_bytes_repr(key)}")
                continue
            if key in self.seen:
                page.duplicates += 1
                continue
            self.seen.add(key)
            if value is None:
                page.missing += 1
            number = parse_int(value)
            if number is None:
                page.invalid += 1
                shown = short_bytes_repr(value or b"")
                page.note(f"invalid value {shown} for key {key_text(key)}")
                continue
            if self.remembered.get(key) == number:
                page.unchanged += 1
                continue
            self.pending[key] = number
            rows.append(encode_row(segments, number))
        page.copy_data = b"".join(rows)
        page.rows = len(rows)
        return page

    def encode_absent(self) -> Page:
        """Zero rows for remembered non-zero keys the run did not see."""
        page = Page()
        rows = []
        for key, value in self.remembered.items():
            if key in self.seen or value == 0:
                continue
            self.seen.add(key)
            self.pending[key] = 0
            segments = self.template.parse(key)
            assert segments is not None
            rows.append(encode_row(segments, 0))
        page.copy_data = b"".join(rows)
        page.rows = len(rows)
        return page

    def commit_run(self) -> None:
        """Make the pending writes the remembered values."""
        self.remembered.update(self.pending)
        self.begin_run()

    def forget(self) -> None:
        """Drop all memory."""
        self.remembered.clear()
        self.begin_run()

    def seed(self, rows: Iterable[Sequence[object]]) -> int:
        """Remember well-typed (*segments, value) rows that a key could produce."""
        count = 0
        for row in rows:
            *segments, value = row
            key = self.template.format(cast("list[Segment]", segments))
            if self.template.parse(key) is None:
                continue
            self.remembered[key] = cast(int, value)
            count += 1
        return count
