"""Settings from the environment, and the one-line errors for bad ones."""

from __future__ import annotations

import ipaddress

import pytest

from ferry.config import load
from ferry.errors import ConfigError
from ferry.workers.webhooks import WebhooksSettings


def test_defaults_are_those_of_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FERRY_CONFIG", "FERRY_WEBHOOKS_ALLOW_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    settings = load(WebhooksSettings)
    assert settings.poll_interval_s == 5.0
    assert settings.auto_interval_s == 10.0
    assert settings.claim_batch == 200
    assert settings.retry_schedule_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.allow_networks == ()
    assert settings.lease_s >= 10 * settings.attempt_deadline_s


def test_lists_are_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FERRY_WEBHOOKS_ALLOW_NETWORKS", "127.0.0.0/8, ::1")
    monkeypatch.setenv("FERRY_WEBHOOKS_RETRY_SCHEDULE_S", "1,2.5,10")
    settings = load(WebhooksSettings)
    assert settings.allow_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.retry_schedule_s == (1.0, 2.5, 10.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "FERRY_WEBHOOKS_ALLOW_NETWORKS",
            "10.0.0.1/8",
            "FERRY_WEBHOOKS_ALLOW_NETWORKS must be comma-separated networks such as"
            " 10.1.0.0/16 (10.0.0.1/8 has host bits set), got '10.0.0.1/8'",
        ),
        (
            "FERRY_WEBHOOKS_ALLOW_NETWORKS",
            "localhost",
            "FERRY_WEBHOOKS_ALLOW_NETWORKS must be comma-separated networks such as"
            " 10.1.0.0/16 ('localhost' does not appear to be an IPv4 or IPv6"
            " network), got 'localhost'",
        ),
        (
            "FERRY_WEBHOOKS_LEASE_S",
            "30",
            "FERRY_WEBHOOKS_LEASE_S must be at least 3 times"
            " FERRY_WEBHOOKS_ATTEMPT_DEADLINE_S (15.0 s), got '30'",
        ),
        (
            "FERRY_WEBHOOKS_RETRY_SCHEDULE_S",
            "5,-1",
            "FERRY_WEBHOOKS_RETRY_SCHEDULE_S must list delays of 0 seconds or more,"
            " got '5,-1'",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load(WebhooksSettings)
    assert str(caught.value) == message
