"""A real HTTP/1.1 receiver on 127.0.0.1 for webhook tests, in its own thread.

It speaks HTTP over asyncio streams by hand so that it can misbehave in the
ways the worker must survive. The path picks the behaviour:

    /ok                    200 at once (keep-alive)
    /status/CODE           that status; `?retry_after=V` adds Retry-After: V
    /flaky/N               500 for the first N requests of each webhook-id,
                           then 200
    /redirect              302 to /ok
    /hang                  reads the request and never answers
    /drip?interval=S       a 200 response written one byte every S seconds
    /huge?bytes=N          200 with an N-byte body, written as fast as the
                           client reads it
    /slow?s=S              200 after S seconds
    /stall/N               never answers the first N requests of each
                           webhook-id, then 200

Every request is recorded (path, headers, body), and the receiver tracks
which webhook-ids are in flight at once, to catch a webhook delivered twice
concurrently.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

# Size of each write of a huge body; a typical socket buffer share.
HUGE_CHUNK_BYTES = 64 * 1024
START_TIMEOUT_S = 10

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Record:
    """Everything the receiver saw, guarded by `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Received] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    overlaps: list[str] = field(default_factory=list)
    max_in_flight: int = 0
    path_in_flight: Counter[str] = field(default_factory=Counter)
    path_max_in_flight: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    drip_bytes_sent: int = 0
    drip_finished: bool = False
    huge_bytes_sent: int = 0
    huge_finished: bool = False
    connections: int = 0
    # TLS server names the clients asked for (SNI), when serving HTTPS.
    server_names: list[str | None] = field(default_factory=list)


class Receiver:
    """Serves until `stop()`; `url(path)` names an address on it."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.record = Record()
        self.tls = tls
        if tls is not None:
            tls.sni_callback = self._note_server_name
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("receiver did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(START_TIMEOUT_S)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def _note_server_name(
        self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> None:
        with self.record.lock:
            self.record.server_names.append(name)

    def requests(self, path_prefix: str = "") -> list[Received]:
        with self.record.lock:
            return [r for r in self.record.requests if r.path.startswith(path_prefix)]

    # -- the server thread ---------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(
                self._connection, "127.0.0.1", 0, backlog=1024, ssl=self.tls
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.close()

    def _shutdown(self) -> None:
        assert self._server is not None and self._loop is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        with self.record.lock:
            self.record.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # A client that went away, or the receiver stopping: either ends
            # the connection, and neither is the test's business.
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        _method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        message_id = headers.get("webhook-id", "")

        record = self.record
        with record.lock:
            record.requests.append(Received(split.path, headers, body, time.time()))
            record.seen[message_id] += 1
            seen = record.seen[message_id]
            if record.in_flight[message_id]:
                record.overlaps.append(message_id)
            record.in_flight[message_id] += 1
            record.max_in_flight = max(
                record.max_in_flight, sum(record.in_flight.values())
            )
            record.path_in_flight[split.path] += 1
            record.path_max_in_flight[split.path] = max(
                record.path_max_in_flight[split.path],
                record.path_in_flight[split.path],
            )
        try:
            return await self._answer(split.path, query, seen, (reader, writer))
        finally:
            with record.lock:
                record.in_flight[message_id] -= 1
                record.path_in_flight[split.path] -= 1

    async def _answer(
        self, path: str, query: dict[str, str], seen: int, stream: Stream
    ) -> bool:
        name, _, arg = path.strip("/").partition("/")
        route = getattr(self, f"_route_{name}", None)
        if route is None:
            return await _respond(stream[1], 404, b"no such behaviour")
        keep_alive: bool = await route(stream, arg, query, seen)
        return keep_alive

    async def _route_ok(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        return await _respond(writer, 200, b"ok")

    async def _route_status(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        extra = {}
        if "retry_after" in query:
            extra["retry-after"] = query["retry_after"]
        return await _respond(writer, int(arg), b"status", extra)

    async def _route_flaky(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        return await _respond(writer, 500 if seen <= int(arg) else 200, b"flaky")

    async def _route_redirect(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        return await _respond(writer, 302, b"", {"location": "/ok"})

    async def _route_hang(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        reader, _writer = stream
        await reader.read()
        return False

    async def _route_stall(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        reader, writer = stream
        if seen <= int(arg):
            # Until the client gives up: a dead client ends the request.
            await reader.read()
            return False
        return await _respond(writer, 200, b"after stall")

    async def _route_drip(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        await self._drip(writer, float(query.get("interval", "0.1")))
        return False

    async def _route_huge(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        await self._huge(writer, int(query["bytes"]))
        return False

    async def _route_slow(
        self, stream: Stream, arg: str, query: dict[str, str], seen: int
    ) -> bool:
        _reader, writer = stream
        await asyncio.sleep(float(query.get("s", "1")))
        return await _respond(writer, 200, b"slow")

    async def _drip(self, writer: asyncio.StreamWriter, interval_s: float) -> None:
        payload = b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n" + b"d" * 40
        for byte in payload:
            writer.write(bytes([byte]))
            await writer.drain()
            with self.record.lock:
                self.record.drip_bytes_sent += 1
            await asyncio.sleep(interval_s)
        with self.record.lock:
            self.record.drip_finished = True

    async def _huge(self, writer: asyncio.StreamWriter, size: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        chunk = b"x" * HUGE_CHUNK_BYTES
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            writer.write(part)
            await writer.drain()
            sent += len(part)
            with self.record.lock:
                self.record.huge_bytes_sent = sent
        with self.record.lock:
            self.record.huge_finished = True


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    extra: dict[str, str] | None = None,
) -> bool:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    return True
