"""`FERRY_WEBHOOKS_*` settings, or the `[webhooks]` table of the config file.

List settings take comma-separated values in the environment
(`FERRY_WEBHOOKS_ALLOW_NETWORKS=127.0.0.0/8,::1`) and arrays in TOML.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from ferry.config import FerrySettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A row is attempted only with an attempt deadline plus a write margin (up
# to one more deadline) of lease left; a lease of this many deadlines leaves
# at least one deadline of it for the wait on the endpoint's slot.
LEASE_DEADLINES_MIN = 3


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class WebhooksSettings(FerrySettings):
    """Every knob of the webhooks worker, with its default."""

    toml_table = "webhooks"
    model_config = SettingsConfigDict(env_prefix="FERRY_WEBHOOKS_")

    # Postgres is polled this often (plus up to `poll_jitter_s`) when no
    # wake-up arrives; the wake-up list only cuts the latency below it.
    poll_interval_s: float = Field(5.0, gt=0)
    poll_jitter_s: float = Field(1.0, ge=0)
    startup_delay_s: float = Field(0.0, ge=0)
    # The auto pass runs at the start of a run once this much time has passed
    # since the previous one.
    auto_interval_s: float = Field(10.0, gt=0)
    # An auto webhook whose upload is still unverified after this long is
    # failed: a day covers any verification that is merely slow.
    verify_limit_s: float = Field(86_400.0, gt=0)
    claim_batch: int = Field(200, ge=1, le=10_000)
    # Overall time for one attempt: resolve, connect, send, read the answer.
    # 15 s is what large webhook senders allow their receivers.
    attempt_deadline_s: float = Field(15.0, gt=0)
    # Must outlive an attempt by a wide margin (see LEASE_DEADLINES_MIN):
    # a lease that runs out while its owner is alive lets a second process
    # send the same webhook at the same time.
    lease_s: float = Field(300.0, gt=0)
    # Payload bytes one process holds in claimed rows not yet done: 200 rows
    # of 5 MB would be 1 GB in one claim. A larger row is still taken, alone.
    claim_max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Response bytes read per attempt; past this the connection is dropped.
    body_cap_bytes: int = Field(64 * 1024, ge=1)
    # Deliveries in flight in one process, and to one endpoint from one
    # process: a dead endpoint holds at most its own share of the slots.
    max_in_flight: int = Field(100, ge=1)
    max_in_flight_per_endpoint: int = Field(8, ge=1)
    # Delay before the retry after attempt 1, 2, ...; the last entry repeats.
    retry_schedule_s: Annotated[tuple[float, ...], NoDecode] = (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        36000.0,
    )
    # Each delay is spread by up to this fraction either way, so that a burst
    # of failures does not come back as a burst.
    retry_jitter: float = Field(0.2, ge=0, lt=1)
    # A Retry-After longer than this is cut to it: a receiver cannot park a
    # webhook for days.
    retry_after_max_s: float = Field(3600.0, ge=0)
    # The first attempt plus one per retry-schedule entry.
    max_attempts: int = Field(8, ge=1)
    # No retry is scheduled later than this after the first attempt.
    max_window_s: float = Field(172_800.0, gt=0)
    # An endpoint failing this long without a single success is disabled.
    endpoint_disable_after_s: float = Field(432_000.0, gt=0)
    # Redis list the web application pushes webhook ids on; empty: no
    # wake-ups, polling only.
    wakeup_key: str = "ferry:webhooks:wakeup"
    # Networks admitted as targets although they are internal.
    allow_networks: Annotated[tuple[Network, ...], NoDecode] = ()

    @field_validator("retry_schedule_s", mode="before")
    @classmethod
    def _split_schedule(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("retry_schedule_s")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("must list at least one delay in seconds")
        if any(delay < 0 for delay in value):
            raise ValueError("must list delays of 0 seconds or more")
        return value

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        parts = _split(value)
        if not isinstance(parts, list | tuple):
            return parts
        networks: list[Network] = []
        for part in parts:
            try:
                networks.append(ipaddress.ip_network(str(part), strict=True))
            except ValueError as exc:
                raise ValueError(
                    f"must be comma-separated networks such as 10.1.0.0/16 ({exc})"
                ) from None
        return tuple(networks)

    @field_validator("lease_s")
    @classmethod
    def _check_lease(cls, value: float, info: ValidationInfo) -> float:
        deadline = info.data.get("attempt_deadline_s")
        if deadline is not None and value < LEASE_DEADLINES_MIN * deadline:
            raise ValueError(
                f"must be at least {LEASE_DEADLINES_MIN} times "
                f"FERRY_WEBHOOKS_ATTEMPT_DEADLINE_S ({deadline} s)"
            )
        return value
