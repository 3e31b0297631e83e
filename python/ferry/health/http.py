"""The optional HTTP health endpoint: loopback only, bearer token required.

Off unless `FERRY_HEALTH_HTTP_PORT` is set; the listener process serves it
then (`ferry.health.listener`), and refuses to start without
`FERRY_HEALTH_HTTP_TOKEN`. It always binds to 127.0.0.1: anything wider is a
reverse proxy's job, with its own TLS and access rules.

    GET /health   200 {"healthy": true, "problems": []}, or 503 with the
                  problem lines of `ferry health`
    GET /status   200 with the document of `ferry status --json`

A request without `Authorization: Bearer <token>`, or with another token,
gets 401 and nothing else. Tokens are compared in constant time. A query
string is ignored (monitors add cache-busters). A connection that has not
sent its whole request within `REQUEST_TIMEOUT_S` is closed, so idle or
slow clients cannot pile up threads.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ferry.config import CommonSettings
from ferry.errors import ConfigError
from ferry.health.report import collect, problems
from ferry.health.settings import HealthSettings
from ferry.health.supervisor import Supervisor
from ferry.logs import kv

LOOPBACK_HOST = "127.0.0.1"
# A token shorter than this can be guessed; 16 characters of a random token
# are at least 64 bits.
TOKEN_MIN_CHARS = 16
# Each connection holds a thread; a client on loopback sends its request in
# milliseconds, so one still silent after this long is stuck or hostile.
REQUEST_TIMEOUT_S = 5.0

logger = logging.getLogger("ferry.health.http")


class HealthServer(ThreadingHTTPServer):
    """The endpoint's server; `port` is the one bound (useful with port 0)."""

    daemon_threads = True

    def __init__(
        self, settings: HealthSettings, common: CommonSettings, port: int
    ) -> None:
        token = settings.http_token.get_secret_value() if settings.http_token else ""
        if len(token) < TOKEN_MIN_CHARS:
            raise ConfigError(
                f"FERRY_HEALTH_HTTP_TOKEN must be at least {TOKEN_MIN_CHARS}"
                f" characters, got {len(token)}"
            )
        self.expected = f"Bearer {token}".encode()
        self.settings = settings
        self.common = common
        super().__init__((LOOPBACK_HOST, port), _Handler)

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self.server_address[1])

    def documents(self) -> tuple[dict[str, Any], list[str]]:
        """The status document and the problem lines, read afresh."""
        # One client per request: the XML-RPC connection is not thread-safe.
        supervisor = Supervisor(
            self.settings.socket_path, timeout_s=self.settings.rpc_timeout_s
        )
        try:
            report = collect(
                supervisor,
                self.common.state_dir,
                stale_limit_s=self.common.heartbeat_stale_s,
            )
        finally:
            supervisor.close()
        lines = problems(
            report, budget_margin_failures=self.settings.budget_margin_failures
        )
        return report.as_json(), lines


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    # The socket timeout of every read and write on the connection.
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        if not self._authorized():
            self._send(
                HTTPStatus.UNAUTHORIZED,
                {"error": "unauthorized"},
                {"WWW-Authenticate": 'Bearer realm="ferry"'},
            )
            return
        path = urlsplit(self.path).path
        if path not in ("/health", "/status"):
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        status, lines = self.server.documents()
        if path == "/status":
            self._send(HTTPStatus.OK, status)
            return
        code = HTTPStatus.SERVICE_UNAVAILABLE if lines else HTTPStatus.OK
        self._send(code, {"healthy": not lines, "problems": lines})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(errors="replace"), self.server.expected):
            return True
        logger.warning(
            "health_http_refused %s",
            kv(
                {
                    "client": self.client_address[0],
                    "path": self.path,
                    "reason": "wrong_token" if given else "no_token",
                }
            ),
        )
        return False

    def _send(
        self,
        code: HTTPStatus,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health_http_request %s", format % args)


def start(settings: HealthSettings, common: CommonSettings) -> HealthServer:
    """Serve on `FERRY_HEALTH_HTTP_PORT` from a daemon thread.

    Raises `ConfigError` for a token that is too short or a port that cannot
    be bound.
    """
    port = settings.http_port or 0
    try:
        server = HealthServer(settings, common, port)
    except OSError as exc:
        raise ConfigError(
            f"FERRY_HEALTH_HTTP_PORT {port} cannot be bound on {LOOPBACK_HOST}:"
            f" {exc.strerror or exc}; choose a free port"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever, name="health-http", daemon=True
    )
    thread.start()
    logger.info(
        "health_http_start %s", kv({"host": LOOPBACK_HOST, "port": server.port})
    )
    return server
