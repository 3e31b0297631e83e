"""CounterSync: encoding MGET pages into COPY rows against remembered values."""

from __future__ import annotations

import datetime
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ferry import _core
from tests.core import reference
from tests.core.copy_format import decode_tuples
from tests.core.strategies import QUOTA, USAGE, keys, values


def text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def bigint(value: int) -> bytes:
    return struct.pack(">iq", 8, value)


def quota_row(account: str, metric: str, value: int) -> bytes:
    return struct.pack(">h", 3) + text(account) + text(metric) + bigint(value)


def new_sync(template: str = QUOTA) -> _core.CounterSync:
    sync = _core.CounterSync(_core.KeyPattern(template))
    sync.begin_run()
    return sync


def counts(page: _core.PageResult) -> tuple[int, ...]:
    return (
        page.rows,
        page.invalid,
        page.malformed,
        page.missing,
        page.duplicates,
        page.unchanged,
    )


def test_page_becomes_copy_rows_with_exact_counts_and_examples() -> None:
    sync = new_sync()
    page = sync.encode_page(
        [
            b"quota:a:up",
            b"quota:b:up",
            b"quota:c:up",
            b"quota:a1:uploads",
            b"quota:acct",
            b"quota:a:up",
        ],
        [b"3", None, b"", b"12x", b"1", b"4"],
    )
    assert counts(page) == (3, 1, 1, 1, 1, 0)
    assert page.copy_data == (
        quota_row("a", "up", 3) + quota_row("b", "up", 0) + quota_row("c", "up", 0)
    )
    assert page.examples == [
        "invalid value b'12x' for key quota:a1:uploads",
        "malformed key b'quota:acct'",
    ]


def test_date_segments_are_postgres_dates() -> None:
    sync = new_sync(USAGE)
    page = sync.encode_page([b"usage:2000-01-02:a:m"], [b"-1"])
    day = struct.pack(">ii", 4, 1)
    assert page.copy_data == struct.pack(">h", 4) + day + text("a") + text("m") + (
        bigint(-1)
    )


def test_examples_stop_at_five_and_stay_short() -> None:
    sync = new_sync()
    long_keys = [b"quota:" + b"x" * 100 + bytes([48 + i]) for i in range(7)]
    page = sync.encode_page(long_keys, [b"1"] * 7)
    assert page.malformed == 7
    assert page.examples == ["malformed key b'quota:" + "x" * 51 + "'..."] * 5


def test_a_bad_key_seen_twice_in_a_run_is_malformed_once() -> None:
    sync = new_sync()
    page = sync.encode_page([b"quota:a", b"quota:a"], [b"1", b"1"])
    assert (page.malformed, page.duplicates) == (1, 1)
    sync.begin_run()
    assert sync.encode_page([b"quota:a"], [b"1"]).malformed == 1


def test_accepts_tuples_and_rejects_wrong_shapes() -> None:
    sync = new_sync()
    assert sync.encode_page((b"quota:a:m",), (b"1",)).rows == 1
    with pytest.raises(ValueError) as info:
        sync.encode_page([b"quota:a:m"], [])
    assert str(info.value) == (
        "keys and values must have the same length, got 1 keys and 0 values"
    )
    with pytest.raises(ValueError) as info:
        sync.encode_page([b"quota:a:m", "quota:b:m"], [b"1", b"1"])  # type: ignore[list-item]
    assert str(info.value) == "keys[1] must be bytes, got str"
    with pytest.raises(ValueError) as info:
        sync.encode_page([b"quota:a:m"], [1])  # type: ignore[list-item]
    assert str(info.value) == "values[0] must be bytes or None, got int"
    with pytest.raises(ValueError) as info:
        sync.encode_page(b"quota:a:m", [b"1"])  # type: ignore[arg-type]
    assert str(info.value) == "keys must be a sequence, got bytes"


def test_unchanged_values_are_skipped_after_commit() -> None:
    sync = new_sync()
    sync.encode_page([b"quota:a:m", b"quota:b:m"], [b"3", b"0"])
    sync.commit_run()
    assert len(sync) == 2

    sync.begin_run()
    page = sync.encode_page([b"quota:a:m", b"quota:b:m"], [b"3", None])
    assert counts(page) == (0, 0, 0, 1, 0, 2)
    page = sync.encode_page([b"quota:a:m"], [b"4"])
    assert counts(page) == (0, 0, 0, 0, 1, 0)


def test_uncommitted_writes_are_dropped_by_begin_run() -> None:
    sync = new_sync()
    sync.encode_page([b"quota:a:m"], [b"5"])
    sync.begin_run()
    assert len(sync) == 0
    assert sync.encode_page([b"quota:a:m"], [b"5"]).rows == 1


def test_invalid_value_keeps_memory_and_is_not_zeroed_by_absent_pass() -> None:
    sync = new_sync()
    assert sync.seed([("a", "m", 7)]) == 1
    sync.begin_run()
    page = sync.encode_page([b"quota:a:m"], [b"-0"])
    assert counts(page) == (0, 1, 0, 0, 0, 0)
    assert sync.encode_absent().rows == 0
    sync.commit_run()
    sync.begin_run()
    assert sync.encode_page([b"quota:a:m"], [b"7"]).unchanged == 1


def test_absent_pass_zeroes_unseen_non_zero_keys_once() -> None:
    sync = new_sync()
    sync.seed([("gone", "m", 9), ("zero", "m", 0), ("kept", "m", 2)])
    sync.begin_run()
    sync.encode_page([b"quota:kept:m"], [b"2"])
    absent = sync.encode_absent()
    assert counts(absent) == (1, 0, 0, 0, 0, 0)
    assert absent.examples == []
    assert absent.copy_data == quota_row("gone", "m", 0)
    assert sync.encode_absent().rows == 0
    sync.commit_run()
    sync.begin_run()
    assert sync.encode_absent().copy_data == quota_row("kept", "m", 0)


def test_forget_drops_all_memory() -> None:
    sync = new_sync()
    sync.seed([("a", "m", 1)])
    sync.forget()
    assert len(sync) == 0
    sync.begin_run()
    assert sync.encode_page([b"quota:a:m"], [b"1"]).rows == 1


def test_seed_reads_postgres_rows_and_refuses_bad_shapes() -> None:
    sync = new_sync(USAGE)
    day = datetime.date(2026, 3, 5)
    assert sync.seed([(day, "a", "m", 4), [day, "b", "m", 0]]) == 2
    assert len(sync) == 2
    sync.begin_run()
    assert sync.encode_page([b"usage:2026-03-05:a:m"], [b"4"]).unchanged == 1

    bad_rows: list[tuple[list[tuple[object, ...]], str]] = [
        (
            [(day, "a", 1)],
            "seed row 0 must have 4 items (3 segments and the value), got 3",
        ),
        (
            [(day, "a", "m", "4")],
            "seed row 0 must end with an int within 64 bits, got str",
        ),
        (
            [(day, "a", "m", 2**63)],
            "seed row 0 must end with an int within 64 bits, got int",
        ),
        ([("2026-03-05", "a", "m", 1)], "segment day must be datetime.date, got str"),
    ]
    for rows, message in bad_rows:
        with pytest.raises(ValueError) as info:
            sync.seed(rows)
        assert str(info.value) == message
    assert len(sync) == 2


def test_seed_skips_rows_no_key_could_produce() -> None:
    sync = new_sync()
    rows = [("a:b", "m", 1), ("", "m", 1), ("a\0", "m", 1), ("x" * 2048, "m", 1)]
    assert sync.seed([*rows, ("good", "m", 3)]) == 1
    assert len(sync) == 1
    sync.begin_run()
    assert sync.encode_page([b"quota:good:m"], [b"3"]).unchanged == 1


def test_len_never_fails_while_another_thread_encodes() -> None:
    sync = new_sync()
    keys = [f"quota:a{i}:m".encode() for i in range(200_000)]
    values: list[bytes | None] = [b"1"] * len(keys)
    sizes: list[int] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                sizes.append(len(sync))
            except RuntimeError as exc:
                errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            sync.begin_run()
            sync.encode_page(keys, values)
            sync.commit_run()
    finally:
        stop.set()
        watcher.join()
    assert errors == []
    assert sizes
    assert len(sync) == len(keys)
    assert set(sizes) <= {0, len(keys)}


def test_seed_with_a_bad_row_seeds_nothing() -> None:
    sync = new_sync()
    with pytest.raises(ValueError):
        sync.seed([("a", "m", 1), ("b",)])
    assert len(sync) == 0


def test_page_result_is_read_only() -> None:
    page = new_sync().encode_page([b"quota:a:m"], [b"1"])
    with pytest.raises(AttributeError):
        page.rows = 2  # type: ignore[misc]
    assert repr(page) == (
        "PageResult(rows=1, invalid=0, malformed=0, missing=0, duplicates=0, "
        "unchanged=0, copy_data=<24 bytes>)"
    )


@given(
    st.lists(st.tuples(keys(USAGE), values()), max_size=40),
)
def test_one_page_agrees_with_the_reference(
    pairs: list[tuple[bytes, bytes | None]],
) -> None:
    core = new_sync(USAGE)
    ref = reference.ReferenceSync(USAGE)
    page_keys = [key for key, _ in pairs]
    page_values = [value for _, value in pairs]
    got = core.encode_page(page_keys, page_values)
    expected = ref.encode_page(page_keys, page_values)
    assert got.copy_data == expected.copy_data
    assert counts(got) == (
        expected.rows,
        expected.invalid,
        expected.malformed,
        expected.missing,
        expected.duplicates,
        expected.unchanged,
    )
    assert got.examples == expected.examples


class CoreAgreesWithReference(RuleBasedStateMachine):
    """Runs of pages, absent passes, commits and forgets on both implementations."""

    def __init__(self) -> None:
        super().__init__()
        self.core = _core.CounterSync(_core.KeyPattern(QUOTA))
        self.ref = reference.ReferenceSync(QUOTA)

    @rule()
    def begin_run(self) -> None:
        self.core.begin_run()
        self.ref.begin_run()

    @rule(pairs=st.lists(st.tuples(keys(QUOTA), values()), max_size=12))
    def encode_page(self, pairs: list[tuple[bytes, bytes | None]]) -> None:
        page_keys = [key for key, _ in pairs]
        page_values = [value for _, value in pairs]
        got = self.core.encode_page(page_keys, page_values)
        expected = self.ref.encode_page(page_keys, page_values)
        assert got.copy_data == expected.copy_data
        assert (got.rows, got.invalid, got.malformed) == (
            expected.rows,
            expected.invalid,
            expected.malformed,
        )
        assert (got.missing, got.duplicates, got.unchanged) == (
            expected.missing,
            expected.duplicates,
            expected.unchanged,
        )
        assert got.examples == expected.examples

    @rule()
    def encode_absent(self) -> None:
        got = self.core.encode_absent()
        expected = self.ref.encode_absent()
        # The absent pass walks a hash map, so only the set of rows is defined.
        assert sorted(decode_tuples(got.copy_data)) == sorted(
            decode_tuples(expected.copy_data)
        )
        assert got.rows == expected.rows

    @rule()
    def commit_run(self) -> None:
        self.core.commit_run()
        self.ref.commit_run()

    @rule()
    def forget(self) -> None:
        self.core.forget()
        self.ref.forget()

    @rule(
        rows=st.lists(
            st.tuples(
                st.sampled_from(["a0", "a1", "a2"]),
                st.sampled_from(["m0", "m1"]),
                st.integers(min_value=-1, max_value=2),
            ),
            max_size=4,
        )
    )
    def seed(self, rows: list[tuple[str, str, int]]) -> None:
        assert self.core.seed(rows) == self.ref.seed(rows)

    @invariant()
    def same_memory_size(self) -> None:
        assert len(self.core) == len(self.ref)


CoreAgreesWithReference.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None
)
test_core_agrees_with_reference_over_runs = CoreAgreesWithReference.TestCase
