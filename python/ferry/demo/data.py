"""The demo's accounts, metrics and values, shared by seed and traffic.

Usage on a real service is heavily skewed: a few accounts do most of it.
Traffic sends most of its events to a hot 1% of accounts, and counter values
follow a Pareto distribution, so the demo keyspace has a long tail of small
counters and a few huge ones, as the real one would.
"""

from __future__ import annotations

import random

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ferry.config import FerrySettings

METRICS = ("uploads", "bytes_stored", "api_calls", "transcode_seconds")
# Typical value of each metric for a median account; the Pareto tail
# multiplies it by up to thousands for the heaviest accounts.
METRIC_SCALE = {
    "uploads": 40,
    "bytes_stored": 250_000_000,
    "api_calls": 3_000,
    "transcode_seconds": 600,
}
# Pareto shape: 1.16 is the classic 80/20 split.
PARETO_ALPHA = 1.16
# 80% of the traffic goes to the busiest 1% of accounts.
HOT_SHARE = 0.8
HOT_FRACTION = 0.01


class DemoSettings(FerrySettings):
    """`FERRY_DEMO_*`: the size of the demo and where the receiver listens."""

    toml_table = "demo"
    model_config = SettingsConfigDict(env_prefix="FERRY_DEMO_")

    accounts: int = Field(100_000, ge=1)
    receiver_port: int = Field(8765, ge=1, le=65535)
    # Counter increments per second; about a third also append an audit event.
    events_per_s: float = Field(40.0, ge=0)
    # New uploads per second, each with a manual webhook and an auto one.
    uploads_per_s: float = Field(1.0, ge=0)
    # An upload stays unverified (its auto webhook in `verifying`) this long.
    verify_after_s: float = Field(5.0, ge=0)


def account_id(number: int) -> str:
    """The demo's id of account `number` (1-based)."""
    return f"acct_{number:06d}"


def pick_account(rng: random.Random, accounts: int) -> str:
    """An account, the hot few (the lowest numbers) far more often."""
    hot = max(int(accounts * HOT_FRACTION), 1)
    top = hot if rng.random() < HOT_SHARE else accounts
    return account_id(rng.randint(1, top))


def counter_value(rng: random.Random, metric: str) -> int:
    """A skewed total for `metric`, always within signed 64 bits."""
    scale = METRIC_SCALE[metric]
    return min(int(scale * (rng.paretovariate(PARETO_ALPHA) - 1)), 2**62)
