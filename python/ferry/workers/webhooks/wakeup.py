"""The optional low-latency wake-up: a Redis list the web application pushes on.

A daemon thread blocks on BLPOP and asks the runtime for a run whenever an
item arrives. It only cuts latency: Postgres stays the source of truth and
is polled on the interval whatever Redis does. When Redis is down the thread
logs one WARNING, backs off, and keeps trying; when Redis is back it logs
one INFO line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from ferry.errors import StoreError
from ferry.logs import kv
from ferry.stores import redis as redis_store

# BLPOP gives up after this long and starts again, so a stop request is seen
# within it; well under the client's socket timeout, which would otherwise
# take a quiet list for a dead server.
BLOCK_S = 2.0
# Reconnect attempts while Redis is down back off from the first to the last.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0

logger = logging.getLogger("ferry.webhooks.wakeup")


class WakeupListener:
    """Calls `wake()` for each item pushed on the list `key`."""

    def __init__(
        self,
        url: str,
        key: str,
        wake: Callable[[], None],
        *,
        block_s: float = BLOCK_S,
    ) -> None:
        self.url = url
        self.key = key
        self.wake = wake
        self.block_s = block_s
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="webhooks-wakeup", daemon=True
        )

    def start(self) -> None:
        """Start the listening thread."""
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the thread to stop; waits up to `timeout_s` for it to end."""
        self._stop.set()
        if timeout_s is not None and self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        client: redis.Redis | None = None
        backoff = BACKOFF_FIRST_S
        failing = False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = redis_store.connect(self.url)
                item = client.blpop([self.key], timeout=self.block_s)
            except (redis.RedisError, StoreError) as exc:
                if not failing:
                    logger.warning(
                        "wakeup_unavailable %s",
                        kv(
                            {
                                "worker": "webhooks",
                                "key": self.key,
                                "error": type(exc).__name__,
                                "action": "polling postgres on the interval,"
                                " retrying redis with backoff",
                            }
                        ),
                    )
                    failing = True
                if client is not None:
                    client.close()
                    client = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if failing:
                logger.info(
                    "wakeup_restored %s", kv({"worker": "webhooks", "key": self.key})
                )
                failing = False
            backoff = BACKOFF_FIRST_S
            if item is not None:
                self.received += 1
                self.wake()
        if client is not None:
            client.close()
