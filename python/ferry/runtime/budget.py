"""Error budget over a rolling window of recent runs."""

from __future__ import annotations

from collections import deque


class ErrorBudget:
    """Counts failures among the last `window` runs.

    A success does not reset the count; it only pushes an old failure out of
    the window, so a worker that fails every other run still runs out.
    """

    def __init__(self, failures: int, window: int) -> None:
        self.allowed = failures
        self.window = max(window, failures)
        self._recent: deque[bool] = deque(maxlen=self.window)

    def record(self, failed: bool) -> None:
        """Add one run's result."""
        self._recent.append(failed)

    @property
    def failures(self) -> int:
        """Failures among the runs in the window."""
        return sum(self._recent)

    @property
    def exhausted(self) -> bool:
        """True once the failures in the window reach the allowance."""
        return self.failures >= self.allowed
