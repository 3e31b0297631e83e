"""Target checks: internal addresses refused in every encoding, the allow-list,
and connections made only to the address that was checked."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpcore
import httpx
import pytest

from ferry.workers.webhooks.errors import RefusedTargetError, ResolveError, TargetError
from ferry.workers.webhooks.targets import TargetPolicy, parse_url, refusal
from ferry.workers.webhooks.transport import CheckedBackend, CheckedTransport
from tests.workers.webhooks import helpers as h
from tests.workers.webhooks.receiver import Receiver

LOOPBACK = TargetPolicy((ipaddress.ip_network("127.0.0.0/8"),))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("169.254.1.1", "link_local"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "private"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),
        ("198.18.0.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link_local"),
        ("fec0::1", "site_local"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        ("100::1", "private"),
        # IPv6 encodings of internal IPv4 addresses.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:100.64.0.1", "shared"),
        ("::ffff:0:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),
        ("::10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a00:1::1", "private"),
        ("2002:a9fe:a9fe::1", "metadata"),
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b::10.0.0.1", "private"),
        ("64:ff9b:1::808:808", "nat64_local"),
        ("2001::1", "teredo"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    ],
)
def test_internal_addresses_are_refused(text: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(text)) == reason
    assert not TargetPolicy().admitted(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    "text",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::8.8.8.8",
    ],
)
def test_public_addresses_are_admitted(text: str) -> None:
    assert refusal(ipaddress.ip_address(text)) is None
    assert TargetPolicy().admitted(ipaddress.ip_address(text))


def test_allow_list_admits_its_networks_in_every_encoding() -> None:
    assert LOOPBACK.admitted(ipaddress.ip_address("127.0.0.1"))
    assert LOOPBACK.admitted(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not LOOPBACK.admitted(ipaddress.ip_address("::1"))
    assert not LOOPBACK.admitted(ipaddress.ip_address("10.0.0.1"))


def test_allow_list_never_admits_metadata_addresses() -> None:
    policy = TargetPolicy((ipaddress.ip_network("169.254.0.0/16"),))
    assert policy.admitted(ipaddress.ip_address("169.254.1.1"))
    assert not policy.admitted(ipaddress.ip_address("169.254.169.254"))


def test_one_internal_address_refuses_the_whole_host() -> None:
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.7")]
    with pytest.raises(RefusedTargetError) as caught:
        TargetPolicy().check("mixed.example", addresses)
    assert str(caught.value) == (
        "host 'mixed.example' resolves to 10.0.0.7 (private), which webhooks may"
        " not reach; FERRY_WEBHOOKS_ALLOW_NETWORKS admits internal networks"
    )


def test_literal_internal_address_is_refused_without_dns() -> None:
    with pytest.raises(RefusedTargetError, match=r"resolves to 10\.0\.0\.1 \("):
        asyncio.run(TargetPolicy().resolve("10.0.0.1", 80))


def test_host_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(RefusedTargetError) as caught:
        asyncio.run(TargetPolicy().resolve("localhost", 80))
    assert str(caught.value).startswith("host 'localhost' resolves to ")
    assert "(loopback)" in str(caught.value)


def test_decimal_encoded_loopback_name_is_refused() -> None:
    # The C resolver reads "2130706433" as 127.0.0.1.
    with pytest.raises(RefusedTargetError, match=r"resolves to 127\.0\.0\.1"):
        asyncio.run(TargetPolicy().resolve("2130706433", 80))


def test_unknown_host_is_a_resolve_error() -> None:
    with pytest.raises(ResolveError, match=r"^host 'nonexistent\.invalid' does not"):
        asyncio.run(TargetPolicy().resolve("nonexistent.invalid", 80))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "endpoint URL scheme must be http or https, got 'ftp'"),
        ("http:///path", "endpoint URL has no host"),
        (
            "https://user:pw@example.com/",
            "endpoint URL must not carry a user name or password",
        ),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_url(url)
    assert str(caught.value) == message


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """The real backend, noting the host each connection was opened to."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.hosts: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await self.inner.connect_tcp(
            host, port, timeout, local_address, socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def test_connection_goes_to_the_checked_address_not_the_name(
    receiver: Receiver,
) -> None:
    recording = RecordingBackend()
    backend = CheckedBackend(LOOPBACK, recording)

    async def fetch() -> int:
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            response = await pool.request("GET", receiver.url("/ok", host="localhost"))
            return response.status

    assert asyncio.run(fetch()) == 200
    assert recording.hosts == ["127.0.0.1"]
    [seen] = receiver.requests()
    assert seen.headers["host"] == f"localhost:{receiver.port}"


def test_transport_refuses_before_connecting(receiver: Receiver) -> None:
    async def fetch() -> None:
        transport = CheckedTransport(TargetPolicy(), max_connections=1)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(receiver.url("/ok", host="localhost"))

    with pytest.raises(RefusedTargetError):
        asyncio.run(fetch())
    assert receiver.record.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_worker_refuses_internal_target_and_sends_nothing(
    ferry_env: dict[str, str], db: h.Conn, receiver: Receiver, host: str
) -> None:
    endpoint_id = h.add_endpoint(db, receiver.url("/ok", host=host))
    [webhook_id] = h.add_webhooks(db, endpoint_id)
    worker = h.worker(allow_networks="")

    outcome = h.run(worker)

    assert outcome.fields["refused"] == 1
    assert outcome.fields["retried"] == 1
    assert worker.counters()["refused"] == 1
    row = h.webhook(db, webhook_id)
    assert row["status"] == "pending"
    assert row["last_error"].startswith("refused_target: host ")
    [attempt] = h.attempts(db, webhook_id)
    assert attempt["error"] == "refused_target"
    assert attempt["status_code"] is None
    assert receiver.record.connections == 0


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for the name `localhost`, key beside it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path / "cert.pem"


@pytest.fixture
def tls_receiver(certificate: Path) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, certificate.with_name("key.pem"))
    server = Receiver(tls=context).start()
    yield server
    server.stop()


def _https_get(url: str, certificate: Path) -> int:
    async def fetch() -> int:
        trust = ssl.create_default_context(cafile=str(certificate))
        transport = CheckedTransport(LOOPBACK, max_connections=1, ssl_context=trust)
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get(url)).status_code

    return asyncio.run(fetch())


def test_tls_verifies_the_name_while_connecting_to_the_checked_address(
    tls_receiver: Receiver, certificate: Path
) -> None:
    status = _https_get(tls_receiver.url("/ok", host="localhost"), certificate)
    assert status == 200
    assert tls_receiver.record.server_names == ["localhost"]


def test_tls_refuses_a_certificate_for_another_name(
    tls_receiver: Receiver, certificate: Path
) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _https_get(tls_receiver.url("/ok", host="127.0.0.1"), certificate)
    assert tls_receiver.requests() == []
