"""encode_audit: audit stream entries into audit_log COPY tuples and dead letters."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry import _core
from tests.core.copy_format import decode_tuples

PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
NULL = struct.pack(">i", -1)

Fields = dict[bytes, bytes]


def good(**changes: bytes | None) -> Fields:
    fields: dict[str, bytes | None] = {
        "actor_id": b"u1",
        "action": b"upload.create",
        "target_type": b"upload",
        "target_id": b"up9",
        "ip": b"10.0.0.1",
        "occurred_at": b"2026-03-05T12:34:56.789Z",
        "metadata": b'{"size": 3}',
    }
    fields.update(changes)
    return {name.encode(): value for name, value in fields.items() if value is not None}


def field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime.datetime:
    return datetime.datetime(
        year, month, day, hour, minute, second, microsecond, tzinfo=datetime.UTC
    )


def micros(moment: datetime.datetime) -> int:
    return (moment - PG_EPOCH) // datetime.timedelta(microseconds=1)


def timestamptz(moment: datetime.datetime) -> bytes:
    return struct.pack(">iq", 8, micros(moment))


def reason(fields: Fields) -> str:
    batch = _core.encode_audit([(b"1-0", fields)])
    assert batch.rows == 0
    assert batch.copy_data == b""
    [(stream_id, _, why)] = batch.dead
    assert stream_id == b"1-0"
    return why


def test_good_entry_is_one_tuple_in_column_order() -> None:
    batch = _core.encode_audit([(b"1700000000000-0", good())])
    assert batch.rows == 1
    assert batch.dead == []
    moment = datetime.datetime(2026, 3, 5, 12, 34, 56, 789000, tzinfo=datetime.UTC)
    assert batch.copy_data == b"".join(
        [
            struct.pack(">h", 8),
            field(b"1700000000000-0"),
            field(b"u1"),
            field(b"upload.create"),
            field(b"upload"),
            field(b"up9"),
            field(bytes([2, 32, 0, 4, 10, 0, 0, 1])),
            timestamptz(moment),
            field(b'\x01{"size": 3}'),
        ]
    )


def test_absent_or_empty_ip_and_metadata_are_null() -> None:
    for fields in (good(ip=None, metadata=None), good(ip=b"", metadata=b"")):
        [row] = decode_tuples(_core.encode_audit([(b"1-0", fields)]).copy_data)
        assert row[5] is None
        assert row[7] is None


def test_ipv6_is_encoded_as_inet() -> None:
    batch = _core.encode_audit([(b"1-0", good(ip=b"2001:db8::1"))])
    [row] = decode_tuples(batch.copy_data)
    packed = ipaddress.IPv6Address("2001:db8::1").packed
    assert row[5] == bytes([3, 128, 0, 16]) + packed


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        (b"2026-03-05T12:34:56Z", utc(2026, 3, 5, 12, 34, 56)),
        (b"2026-03-05 12:34:56+02:00", utc(2026, 3, 5, 10, 34, 56)),
        (
            b"2026-03-05t12:34:56.5-01:30",
            utc(2026, 3, 5, 14, 4, 56, 500000),
        ),
        (b"2026-03-05T12:34:56.000001Z", utc(2026, 3, 5, 12, 34, 56, 1)),
        # Nanoseconds, as Go and Java clients write them, are cut to micros.
        (b"2026-03-05T12:34:56.123456789Z", utc(2026, 3, 5, 12, 34, 56, 123456)),
        (b"2026-03-05T12:34:56.9999999+01:00", utc(2026, 3, 5, 11, 34, 56, 999999)),
        (b"1772713496789", utc(2026, 3, 5, 12, 24, 56, 789000)),
        (b"-1000", utc(1969, 12, 31, 23, 59, 59)),
        (b"0", utc(1970, 1, 1)),
    ],
)
def test_occurred_at_forms(text: bytes, moment: datetime.datetime) -> None:
    batch = _core.encode_audit([(b"1-0", good(occurred_at=text))])
    [row] = decode_tuples(batch.copy_data)
    expected = micros(moment)
    assert row[6] == struct.pack(">q", expected)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (good(action=None), "missing field action"),
        (good(actor_id=b""), "field actor_id is empty"),
        (good(actor_id=b"\xffu"), "field actor_id is not valid UTF-8"),
        (good(target_id=b"a\x00b"), "field target_id contains a NUL byte"),
        (
            good(occurred_at=b"2026-13-01"),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: "
            "'2026-13-01'",
        ),
        (
            good(occurred_at=b"2026-03-05T12:34:56"),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: "
            "'2026-03-05T12:34:56'",
        ),
        (
            good(occurred_at=b"2026-03-05T12:34:56.Z"),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: "
            "'2026-03-05T12:34:56.Z'",
        ),
        (
            good(occurred_at=b"99999999999999999"),
            "occurred_at is outside the years 0001 to 9999: '99999999999999999'",
        ),
        (good(ip=b"999.1.1.1"), "ip is not an IP address: '999.1.1.1'"),
        (good(ip=b"10.0.0.0/8"), "ip is not an IP address: '10.0.0.0/8'"),
        (good(metadata=b"[1, 2]"), "metadata is not a JSON object"),
        (good(metadata=b"{bad"), "metadata is not valid JSON: '{bad'"),
        (
            good(metadata=b'{"a": "\\u0000"}'),
            "metadata contains \\u0000, which jsonb cannot store",
        ),
    ],
)
def test_malformed_entries_become_dead_letters_with_the_reason(
    fields: Fields, why: str
) -> None:
    assert reason(fields) == why


def test_long_values_are_cut_in_reasons() -> None:
    why = reason(good(ip=b"x" * 200))
    assert why == "ip is not an IP address: '" + "x" * 58 + "'..."


def test_deleted_entry_is_a_dead_letter() -> None:
    batch = _core.encode_audit([(b"5-0", None), (b"6-0", good())])
    assert batch.rows == 1
    assert batch.dead == [(b"5-0", "{}", "entry was deleted from the stream")]


def test_dead_letter_fields_always_load_as_json() -> None:
    fields = {b"action": b"x\x00y", b"\xffname": b"\xfe", b"ok": b'"q"'}
    [(_, raw, why)] = _core.encode_audit([(b"4-0", fields)]).dead
    assert why == "missing field actor_id"
    assert json.loads(raw) == {
        "action": {"base64": base64.b64encode(b"x\x00y").decode()},
        "base64:" + base64.b64encode(b"\xffname").decode(): {"base64": "/g=="},
        "ok": '"q"',
    }


def test_unknown_fields_are_ignored_and_lists_accepted() -> None:
    fields = good()
    fields[b"extra"] = b"\xff\x00"
    batch = _core.encode_audit([[b"1-0", fields]])  # type: ignore[list-item]
    assert batch.rows == 1


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(b"1-0",)], "entries[0] must be a (stream id, fields) pair, got 1 items"),
        ([("1-0", good())], "entries[0] stream id must be bytes, got str"),
        ([(b"1-0", [])], "entries[0] fields must be a dict or None, got list"),
        (
            [(b"1-0", {"action": b"x"})],
            "entries[0] field names and values must be bytes, got str",
        ),
    ],
)
def test_wrong_shapes_raise_value_error(entries: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        _core.encode_audit(entries)  # type: ignore[arg-type]
    assert str(info.value) == message


_NAMES = st.sampled_from(
    [
        *(b"actor_id", b"action", b"target_type", b"target_id", b"ip"),
        *(b"occurred_at", b"metadata", b"other", b"\xff", b"a\x00"),
    ]
)
_VALUES = st.binary(max_size=12) | st.sampled_from(
    [b"u", b"::1", b"1.2.3.4", b"0", b"2026-03-05T00:00:00Z", b"{}", b'{"a":1}']
)


@given(st.lists(st.dictionaries(_NAMES, _VALUES) | st.none(), max_size=6))
def test_every_entry_is_stored_or_dead_lettered(entries: list[Fields | None]) -> None:
    ids = [f"{i}-0".encode() for i in range(len(entries))]
    batch = _core.encode_audit(list(zip(ids, entries, strict=True)))
    rows = decode_tuples(batch.copy_data)
    assert batch.rows == len(rows)
    stored = {row[0] for row in rows}
    dead = {stream_id for stream_id, _, _ in batch.dead}
    assert stored | dead == set(ids)
    assert not stored & dead
    for _, raw, why in batch.dead:
        assert "\\u0000" not in raw
        assert isinstance(json.loads(raw), dict)
        assert why
        assert why == why.strip()
        assert "\n" not in why


def test_dead_letter_fields_matches_what_encode_audit_dead_letters() -> None:
    fields = {b"actor_id": b"\xff\x00", b"\xfename": b"ok", b"ip": b"1.2.3.4"}
    ((_, from_batch, _),) = _core.encode_audit([(b"1-0", fields)]).dead
    assert _core.dead_letter_fields(fields) == from_batch
    assert json.loads(from_batch) == {
        "actor_id": {"base64": "/wA="},
        "base64:/m5hbWU=": "ok",
        "ip": "1.2.3.4",
    }
