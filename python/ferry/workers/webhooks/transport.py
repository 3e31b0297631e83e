"""An httpx transport that connects only to addresses the target policy checked.

httpx has no hook for name resolution, but httpcore, under it, opens every
connection through a network backend. `CheckedBackend` is that backend: it
resolves the host once with `TargetPolicy.resolve`, refuses internal
addresses, and connects to the checked address itself, so nothing resolves
the name a second time. The connection pool is still keyed by host name, so
TLS verifies the certificate against the name and a connection made for one
host is never reused for another that shares its address.

For HTTPS, httpcore passes the host name as the TLS server name (SNI) and
the context checks the certificate against that name, not the address.

`CheckedTransport` carries requests from httpx to that pool and translates
httpcore's errors into httpx's here, in one place; the policy's own errors
(`RefusedTargetError`, `ResolveError`) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import httpcore
import httpx

from ferry.workers.webhooks.errors import TargetError
from ferry.workers.webhooks.targets import TargetPolicy

# Idle keep-alive connections are closed after this long; receivers commonly
# drop them after 5 to 60 s, and a stale one costs a failed first write.
KEEPALIVE_EXPIRY_S = 5.0
# Request extension naming the pool a request belongs to (the worker passes
# the endpoint id); requests without it share their origin's pool.
POOL_EXTENSION = "ferry.pool"

# Most specific first: the first match names the httpx error raised.
_TRANSLATIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except httpcore.ProxyError as exc:
        raise httpx.ProxyError(str(exc)) from exc
    except Exception as exc:
        for core_type, httpx_type in _TRANSLATIONS:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc)) from exc
        raise


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks each host, then connects to a checked address."""

    def __init__(
        self, policy: TargetPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first checked address that accepts.

        Raises `RefusedTargetError` or `ResolveError` before any connection is
        tried, and httpcore's `ConnectError` when no address accepts.
        """
        addresses = await self.policy.resolve(host, port)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        if failure is None:
            raise httpcore.ConnectError(f"host {host!r} has no address to connect to")
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: webhooks go over TCP only."""
        raise TargetError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does."""
        await self._inner.sleep(seconds)


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes] | Iterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated():
            if isinstance(self._stream, AsyncIterable):
                async for chunk in self._stream:
                    yield chunk
            else:
                for chunk in self._stream:
                    yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _translated():
                await close()


class CheckedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over connections made by `CheckedBackend`; no proxies, no retries.

    Each origin (scheme, host, port), and within it each value of the
    `ferry.pool` request extension, gets its own connection pool: httpcore
    looks through every connection of a pool for each request, which with
    one pool for a hundred endpoints cost more than the requests themselves
    (benches/bench_webhooks.py: most of the CPU time). Environment proxies
    are ignored on purpose: a proxy would resolve the name itself, out of
    the policy's reach.
    """

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._backend = CheckedBackend(policy)
        self._ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self._max_connections = max_connections
        self._pools: dict[tuple[object, ...], httpcore.AsyncConnectionPool] = {}

    def _pool(self, request: httpx.Request) -> httpcore.AsyncConnectionPool:
        url = request.url
        origin = (
            url.raw_scheme,
            url.raw_host,
            url.port,
            request.extensions.get(POOL_EXTENSION),
        )
        pool = self._pools.get(origin)
        if pool is None:
            pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
                http1=True,
                http2=False,
                retries=0,
                network_backend=self._backend,
            )
            self._pools[origin] = pool
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through its origin's pool; errors come out as httpx's."""
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme,
                host=url.raw_host,
                port=url.port,
                target=url.raw_path,
            ),
            headers=request.headers.raw,
            content=_request_body(request),
            extensions={
                k: v for k, v in request.extensions.items() if k != POOL_EXTENSION
            },
        )
        with _translated():
            core_response = await self._pool(request).handle_async_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(core_response.stream),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def _request_body(request: httpx.Request) -> bytes:
    # Webhook bodies are built in memory before the request, so the content
    # is always there to hand over whole.
    return request.content
