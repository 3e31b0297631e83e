"""What an attempt's result means, and when the next attempt is due.

Only 2xx is delivered. 410 Gone ends the webhook and disables its endpoint.
Everything else (other statuses, 3xx included since redirects are not
followed, timeouts, refused targets, connection errors) is retried after the
schedule's delay for that attempt, spread by jitter and never sooner than a
`Retry-After` the receiver sent (cut to a maximum), until the attempts or
the window run out; the window itself is judged by Postgres's clock in
`ferry.workers.webhooks.claims`.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

HTTP_GONE = 410
# Only these statuses mean the receiver took the webhook.
SUCCESS_STATUSES = range(200, 300)
# Ten digits of seconds are over 300 years; a longer Retry-After only asks
# for a very long wait, and converting it would fail (int() refuses more
# than 4300 digits, float() overflows past about 309).
RETRY_AFTER_DIGITS_MAX = 10


class Verdict(enum.StrEnum):
    """What becomes of a webhook after one attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAIL = "fail"
    # 410: the webhook fails and its endpoint is disabled.
    GONE = "gone"
    # The endpoint was already disabled; no request was sent.
    DISABLED = "disabled"
    # The webhook fails unsent: attempts lost with processes that died used
    # up its limit. Bounds a row that kills every process that sends it.
    EXHAUSTED = "exhausted"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a `Retry-After` header, or None if absent or bad.

    Takes both forms of RFC 9110: a number of seconds, or an HTTP date (a
    date in the past asks for 0 s). A number too long to convert is
    infinity, which the caller bounds. Never raises: the header is the
    receiver's to write, and any text at all may come.
    `now` must be timezone-aware.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        if len(text.lstrip("0")) > RETRY_AFTER_DIGITS_MAX:
            return math.inf
        return float(int(text))
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """The retry schedule and its limits."""

    schedule_s: tuple[float, ...]
    jitter: float
    retry_after_max_s: float
    max_attempts: int

    def judge(self, status_code: int | None, attempt: int) -> Verdict:
        """The verdict for attempt number `attempt` (1-based) of this round.

        `status_code` is None when no response came back.
        """
        if status_code in SUCCESS_STATUSES:
            return Verdict.DELIVERED
        if status_code == HTTP_GONE:
            return Verdict.GONE
        if attempt >= self.max_attempts:
            return Verdict.FAIL
        return Verdict.RETRY

    def delay_s(
        self, attempt: int, retry_after_s: float | None, rng: random.Random
    ) -> float:
        """Seconds from now until the attempt after attempt `attempt`.

        The schedule's entry for `attempt` (the last one repeats) spread by
        up to `jitter` either way, and at least `retry_after_s` cut to
        `retry_after_max_s`.
        """
        base = self.schedule_s[min(max(attempt, 1), len(self.schedule_s)) - 1]
        delay = base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay
