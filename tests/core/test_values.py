"""Redis integer rules as `ferry._core.parse_int` applies them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry import _core
from tests.core import reference

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0),
        (b"", 0),
        (b"0", 0),
        (b"7", 7),
        (b"-7", -7),
        (b"1234567890", 1234567890),
        (b"9223372036854775807", I64_MAX),
        (b"-9223372036854775808", I64_MIN),
    ],
)
def test_integers_redis_accepts(value: bytes | None, expected: int) -> None:
    assert _core.parse_int(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"9223372036854775808",
        b"-9223372036854775809",
        b"99999999999999999999",
        b"-0",
        b"007",
        b"00",
        b" 1",
        b"1 ",
        b"+1",
        b"-",
        b"1.0",
        b"1e3",
        b"12x",
        b"1\n",
        b"\x001",
        "\u0661".encode(),
    ],
)
def test_values_redis_rejects_are_invalid(value: bytes) -> None:
    assert _core.parse_int(value) is None


def test_non_bytes_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _core.parse_int("1")  # type: ignore[arg-type]


@given(st.integers(min_value=I64_MIN - 10, max_value=I64_MAX + 10))
def test_decimal_text_of_any_integer(number: int) -> None:
    expected = number if I64_MIN <= number <= I64_MAX else None
    assert _core.parse_int(str(number).encode()) == expected


@given(st.binary(max_size=24) | st.from_regex(rb"\A[-+ 0-9]{0,21}\Z"))
def test_agrees_with_the_reference(value: bytes) -> None:
    assert _core.parse_int(value) == reference.parse_int(value)


def test_copy_framing_constants() -> None:
    assert b"PGCOPY\n\xff\r\n\x00" + bytes(8) == _core.COPY_HEADER
    assert len(_core.COPY_HEADER) == 19
    assert _core.COPY_TRAILER == b"\xff\xff"
