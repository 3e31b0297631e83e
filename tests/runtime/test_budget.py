from __future__ import annotations

from ferry.runtime.budget import ErrorBudget


def test_failures_are_counted_over_the_window_not_consecutively() -> None:
    budget = ErrorBudget(failures=3, window=5)
    for failed in (True, False, True, False):
        budget.record(failed)
    assert budget.failures == 2
    assert not budget.exhausted
    budget.record(True)
    assert budget.exhausted


def test_old_failures_leave_the_window() -> None:
    budget = ErrorBudget(failures=2, window=3)
    for failed in (True, False, False, False, True):
        budget.record(failed)
    assert budget.failures == 1
    assert not budget.exhausted
