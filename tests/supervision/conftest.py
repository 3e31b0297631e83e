"""Fixtures that start the repository's supervisord.conf for real."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.supervision.stack import Stack


@pytest.fixture
def start_stack(
    ferry_env: dict[str, str],
) -> Iterator[Callable[..., Stack]]:
    """Start a stack (optionally with an override file and extra environment);
    every stack started is shut down at the end of the test."""
    stacks: list[Stack] = []

    def start(override: str = "", **env: str) -> Stack:
        stack = Stack({**ferry_env, **env}, override)
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()
