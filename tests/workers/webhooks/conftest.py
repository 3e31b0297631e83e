"""Fixtures for the webhooks tests: a loopback receiver per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workers.webhooks.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()
