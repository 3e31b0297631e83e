"""Hypothesis strategies for Redis keys and values near the rules' edges."""

from __future__ import annotations

from hypothesis import strategies as st

QUOTA = "quota:{account}:{metric}"
USAGE = "usage:{day:date}:{account}:{metric}"

_TEXT_PIECES = [b"a", b"a1", b"uploads", "café".encode(), b"", b"\x00", b"\xff", b" "]
_DATE_PIECES = [
    b"2024-02-29",
    b"2025-02-29",
    b"2026-02-30",
    b"0000-01-01",
    b"9999-12-31",
    b"2026-1-01",
    b"2026-03-05",
]


def _piece(pool: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(pool) | st.binary(max_size=4)


def keys(template: str) -> st.SearchStrategy[bytes]:
    """Keys drawn from arbitrary bytes and from near-valid structured keys."""
    prefix = st.sampled_from([b"quota", b"usage", b"quotas", b""])
    text = _piece(_TEXT_PIECES)
    date = _piece(_DATE_PIECES)
    shapes = [
        st.tuples(prefix, text, text),
        st.tuples(prefix, date, text, text),
        st.tuples(prefix, text),
        st.tuples(prefix, date, text, text, text),
    ]
    structured = st.one_of(shapes).map(b":".join)
    # A small fixed set of valid keys makes duplicates and remembered values
    # likely within one example, which arbitrary bytes almost never produce.
    if template == QUOTA:
        common = [f"quota:a{i}:m{j}".encode() for i in range(3) for j in range(2)]
    else:
        common = [
            f"usage:2026-03-0{i + 1}:a:m{j}".encode()
            for i in range(3)
            for j in range(2)
        ]
    return st.sampled_from(common) | structured | st.binary(max_size=24)


def values() -> st.SearchStrategy[bytes | None]:
    """MGET replies: None, integers at and past the i64 edges, near misses."""
    near = st.sampled_from(
        [b"", b"0", b"-0", b"007", b" 1", b"1 ", b"+1", b"-", b"12x", b"1", b"2"]
    )
    numbers = st.integers(min_value=-(2**63) - 2, max_value=2**63 + 1).map(
        lambda n: str(n).encode()
    )
    small = st.integers(min_value=-2, max_value=3).map(lambda n: str(n).encode())
    return st.none() | near | small | numbers | st.binary(max_size=8)
