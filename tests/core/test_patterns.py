"""Key templates: compiling, parsing keys into segments, formatting them back."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry import _core
from tests.core import reference
from tests.core.strategies import QUOTA, USAGE, keys

QUOTA_PATTERN = _core.KeyPattern(QUOTA)
USAGE_PATTERN = _core.KeyPattern(USAGE)


def test_exposes_template_names_and_scan_match() -> None:
    assert QUOTA_PATTERN.template == QUOTA
    assert QUOTA_PATTERN.segment_names == ["account", "metric"]
    assert QUOTA_PATTERN.scan_match == "quota:*"
    assert USAGE_PATTERN.segment_names == ["day", "account", "metric"]
    assert USAGE_PATTERN.scan_match == "usage:*"
    assert _core.KeyPattern("app:v1:{a}:x").scan_match == "app:v1:*"
    assert _core.KeyPattern("{a}:x").scan_match == "*"
    assert _core.KeyPattern("a[1]:{a}").scan_match == "a\\[1\\]:*"
    assert repr(QUOTA_PATTERN) == "KeyPattern('quota:{account}:{metric}')"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "key template is empty"),
        ("quota", "key template 'quota' has no named segment"),
        (
            "quota:{a:int}",
            "key template 'quota:{a:int}' gives segment a the unknown type 'int'; "
            "expected text or date",
        ),
        ("quota:{}", "key template 'quota:{}' has a segment with an empty name"),
        ("q:{a}:{a}", "key template 'q:{a}:{a}' names segment a twice"),
        ("q::{a}", "key template 'q::{a}' has an empty segment"),
        ("q:{a", "key template 'q:{a' has an unclosed '{'"),
        ("q:{a}x", "key template 'q:{a}x' has text after '}' within a segment"),
        (
            "q:{a-b}",
            "key template 'q:{a-b}' has a segment name that is not an identifier: "
            "'a-b'",
        ),
    ],
)
def test_bad_templates_raise_value_error_with_the_reason(
    template: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        _core.KeyPattern(template)
    assert str(info.value) == message


def test_literal_after_named_segment_is_allowed() -> None:
    pattern = _core.KeyPattern("app:{a}:v1:{b}")
    assert pattern.parse(b"app:x:v1:y") == ("x", "y")
    assert pattern.parse(b"app:x:v2:y") is None


def test_parses_text_and_date_segments() -> None:
    assert QUOTA_PATTERN.parse(b"quota:a1:uploads") == ("a1", "uploads")
    assert QUOTA_PATTERN.parse("quota:café:x".encode()) == ("café", "x")
    assert USAGE_PATTERN.parse(b"usage:2024-02-29:a:b") == (
        datetime.date(2024, 2, 29),
        "a",
        "b",
    )


@pytest.mark.parametrize(
    "key",
    [
        b"quota:acct",
        b"quota:a:b:c",
        b"quota::b",
        b"quota:a:",
        b"quota",
        b"",
        b"quotas:a:b",
        b"quota:a\x00:b",
        b"quota:a:\xff",
        b"quota:\xed\xa0\x80:b",
    ],
)
def test_malformed_quota_keys_parse_to_none(key: bytes) -> None:
    assert QUOTA_PATTERN.parse(key) is None


def test_keys_longer_than_2048_bytes_are_malformed() -> None:
    longest = b"quota:" + b"a" * 2040 + b":m"
    assert len(longest) == 2048
    assert QUOTA_PATTERN.parse(longest) == ("a" * 2040, "m")
    assert QUOTA_PATTERN.parse(b"quota:" + b"a" * 2041 + b":m") is None
    with pytest.raises(ValueError) as info:
        QUOTA_PATTERN.format(("a" * 2041, "m"))
    assert str(info.value) == "key would be 2049 bytes; keys are at most 2048"


@pytest.mark.parametrize(
    "day",
    [b"2026-02-30", b"2025-02-29", b"0000-01-01", b"2026-1-01", b"20260101", b"x"],
)
def test_dates_that_are_not_real_or_not_exact_parse_to_none(day: bytes) -> None:
    assert USAGE_PATTERN.parse(b"usage:" + day + b":a:b") is None


def test_format_is_the_inverse_of_parse() -> None:
    segments = (datetime.date(2026, 3, 5), "a1", "uploads")
    key = USAGE_PATTERN.format(segments)
    assert key == b"usage:2026-03-05:a1:uploads"
    assert USAGE_PATTERN.parse(key) == segments
    assert USAGE_PATTERN.format(list(segments)) == key


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (
            ("a",),
            "key template 'quota:{account}:{metric}' has 2 named segments, "
            "got 1 values",
        ),
        (("a:b", "m"), "segment account must not contain ':', got 'a:b'"),
        (("a", ""), "segment metric must not be empty, got ''"),
        (
            ("a\0", "m"),
            "segment account must not contain a NUL character, got 'a\\x00'",
        ),
        ((1, "m"), "segment account must be str, got int"),
    ],
)
def test_format_refuses_segments_that_cannot_be_read_back(
    segments: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        QUOTA_PATTERN.format(segments)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_format_wants_a_date_not_a_datetime() -> None:
    moment = datetime.datetime(2026, 3, 5, 1, 2, tzinfo=datetime.UTC)
    with pytest.raises(ValueError) as info:
        USAGE_PATTERN.format((moment, "a", "b"))
    assert str(info.value) == "segment day must be datetime.date, got datetime"
    with pytest.raises(ValueError) as info:
        USAGE_PATTERN.format(("2026-03-05", "a", "b"))
    assert str(info.value) == "segment day must be datetime.date, got str"


@given(keys(QUOTA))
def test_quota_parsing_agrees_with_the_reference(key: bytes) -> None:
    assert QUOTA_PATTERN.parse(key) == reference.Template.compile(QUOTA).parse(key)


@given(keys(USAGE))
def test_usage_parsing_agrees_with_the_reference(key: bytes) -> None:
    expected = reference.Template.compile(USAGE).parse(key)
    assert USAGE_PATTERN.parse(key) == expected
    if expected is not None:
        assert USAGE_PATTERN.format(expected) == key


@given(st.lists(st.text(min_size=1).filter(lambda t: ":" not in t and "\0" not in t)))
def test_text_segments_round_trip(texts: list[str]) -> None:
    template = ":".join(["k", *(f"{{s{i}}}" for i in range(len(texts)))])
    if not texts:
        return
    pattern = _core.KeyPattern(template)
    assert pattern.parse(pattern.format(texts)) == tuple(texts)
