"""A decoder of binary COPY tuples, to compare rows whatever their order."""

from __future__ import annotations

import struct

Field = bytes | None


def decode_tuples(data: bytes) -> list[tuple[Field, ...]]:
    """Split COPY tuple data (no header or trailer) into raw field bytes."""
    rows = []
    offset = 0
    while offset < len(data):
        (count,) = struct.unpack_from(">h", data, offset)
        offset += 2
        fields: list[Field] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", data, offset)
            offset += 4
            if length < 0:
                fields.append(None)
                continue
            fields.append(data[offset : offset + length])
            offset += length
        rows.append(tuple(fields))
    return rows
