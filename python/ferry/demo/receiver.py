"""A customer's webhook endpoint: `python -m ferry.demo.receiver`.

Listens on 127.0.0.1:`FERRY_DEMO_RECEIVER_PORT` and verifies every delivery
with the `standardwebhooks` library against the endpoint's secret, read from
`webhook_endpoints` by the URL it was sent to (so a secret rotated by
the application is picked up once the cache expires). A delivery whose
signature does not verify gets 401. Verified ones are answered the way the
path says, as real customers do:

    /hooks/ok/N      200, but 2% of the time a 500 (a deploy, a blip)
    /hooks/flaky/N   500 a third of the time
    /hooks/slow/N    200 after 1 to 20 seconds
    /hooks/gone/N    410 Gone: the customer removed the endpoint

Each request is one log line with the endpoint, the webhook id, the
verdict and the status sent; a webhook id already answered with 2xx is
logged as a duplicate (deliveries are at least once).
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import psycopg
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ferry.config import CommonSettings, load
from ferry.demo.data import DemoSettings
from ferry.errors import ConfigError
from ferry.logs import configure, kv
from ferry.stores import postgres

LOOPBACK_HOST = "127.0.0.1"
# Secrets are read again after this long, so a rotation takes effect.
SECRET_CACHE_S = 30.0
OK_FAILURE_SHARE = 0.02
FLAKY_FAILURE_SHARE = 0.33
SLOW_MIN_S = 1.0
SLOW_MAX_S = 20.0
# A body larger than this is refused before it is read; the webhooks worker
# sends payloads far smaller.
MAX_BODY_BYTES = 1024 * 1024

logger = logging.getLogger("ferry.demo.receiver")


class SecretBook:
    """Each endpoint's secrets by URL, read from Postgres and cached."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._cache: dict[str, tuple[float, list[str]]] = {}

    def secrets(self, url: str) -> list[str]:
        """The current secret then the old ones; empty for an unknown URL."""
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and time.monotonic() - cached[0] < SECRET_CACHE_S:
                return cached[1]
            if self._conn is None or self._conn.closed:
                self._conn = postgres.connect(self.database_url, application="receiver")
                self._conn.autocommit = True
            row = self._conn.execute(
                "SELECT secret, old_secrets FROM webhook_endpoints WHERE url = %s",
                (url,),
            ).fetchone()
            found = [str(row[0]), *cast(list[str], row[1])] if row else []
            self._cache[url] = (time.monotonic(), found)
            return found


class ReceiverServer(ThreadingHTTPServer):
    """The demo receiver; `answered` remembers ids answered with 2xx."""

    daemon_threads = True

    def __init__(self, port: int, book: SecretBook) -> None:
        self.book = book
        self.answered: set[str] = set()
        self.rng = random.Random()
        super().__init__((LOOPBACK_HOST, port), _Handler)

    @property
    def port(self) -> int:
        """The TCP port the receiver listens on."""
        return int(self.server_address[1])


def verify(body: bytes, headers: dict[str, str], secrets: list[str]) -> bool:
    """True if any of `secrets` verifies the delivery."""
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError):
            continue
        return True
    return False


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer

    def do_POST(self) -> None:
        started = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "-", "unread", started)
            return
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        webhook_id = headers.get("webhook-id", "-")
        url = f"http://{LOOPBACK_HOST}:{self.server.port}{self.path}"

        secrets = self.server.book.secrets(url)
        if not secrets:
            self._answer(HTTPStatus.NOT_FOUND, webhook_id, "unknown_endpoint", started)
            return
        if not verify(body, headers, secrets):
            self._answer(HTTPStatus.UNAUTHORIZED, webhook_id, "bad_signature", started)
            return
        self._answer(self._behave(), webhook_id, "verified", started)

    def _behave(self) -> HTTPStatus:
        rng = self.server.rng
        behaviour = self.path.split("/")[2] if self.path.count("/") >= 3 else ""
        if behaviour == "gone":
            return HTTPStatus.GONE
        if behaviour == "slow":
            time.sleep(rng.uniform(SLOW_MIN_S, SLOW_MAX_S))
            return HTTPStatus.OK
        share = FLAKY_FAILURE_SHARE if behaviour == "flaky" else OK_FAILURE_SHARE
        if rng.random() < share:
            return HTTPStatus.INTERNAL_SERVER_ERROR
        return HTTPStatus.OK

    def _answer(
        self, code: HTTPStatus, webhook_id: str, verdict: str, started: float
    ) -> None:
        duplicate = webhook_id in self.server.answered
        if code == HTTPStatus.OK:
            self.server.answered.add(webhook_id)
        body = b'{"ok": true}' if code == HTTPStatus.OK else b'{"ok": false}'
        # A slow answer can outlast the worker's deadline, which then hangs
        # up: that is a fact for the log line, not a traceback.
        client_gone = False
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            client_gone = True
        level = logging.INFO if verdict == "verified" else logging.WARNING
        logger.log(
            level,
            "receiver_request %s",
            kv(
                {
                    "path": self.path,
                    "webhook_id": webhook_id,
                    "verdict": verdict,
                    "status": int(code),
                    "duplicate": duplicate,
                    "client_gone": client_gone,
                    "duration_ms": round((time.monotonic() - started) * 1000),
                }
            ),
        )

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("receiver_http %s", format % args)


def main() -> int:
    """Serve until TERM or INT; returns the exit code."""
    try:
        common = load(CommonSettings)
        demo = load(DemoSettings)
    except ConfigError as exc:
        sys.stderr.write(f"ferry demo receiver: configuration error: {exc}\n")
        return 2
    configure(common.log_level)
    server = ReceiverServer(demo.receiver_port, SecretBook(common.database_url))
    logger.info("receiver_start %s", kv({"host": LOOPBACK_HOST, "port": server.port}))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    _wait_for_stop()
    server.shutdown()
    logger.info("receiver_stop %s", kv({"answered": len(server.answered)}))
    return 0


def _wait_for_stop() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()


if __name__ == "__main__":
    sys.exit(main())
