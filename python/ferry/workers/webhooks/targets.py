"""Which addresses a webhook may reach, and the resolution that checks them.

A customer chooses the URL, so without a check a webhook is a way into the
network the worker runs in (databases, cloud metadata, admin consoles). The
worker therefore resolves the host itself, refuses it when any address is
internal, and connects only to an address it checked (see
`ferry.workers.webhooks.transport`), so a name that resolves differently the
second time cannot slip through.

Internal means loopback, private, link-local, shared (100.64.0.0/10),
multicast, unspecified, reserved or otherwise not globally routable, and the
cloud metadata addresses. IPv6 forms that carry an IPv4 address (mapped
`::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, compatible `::a.b.c.d`,
6to4 `2002::/16`, NAT64 `64:ff9b::/96`) are judged by the IPv4 address they
carry; Teredo and the local-use NAT64 prefix are refused outright. Networks in
`FERRY_WEBHOOKS_ALLOW_NETWORKS` are admitted anyway, except the metadata
addresses, which are never a webhook's business.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from ferry.workers.webhooks.errors import RefusedTargetError, ResolveError, TargetError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
# Instance metadata services: AWS, GCP, Azure and OpenStack (169.254.169.254),
# AWS ECS task metadata (169.254.170.2), AWS over IPv6 (fd00:ec2::254),
# Alibaba Cloud (100.100.100.200), Oracle Cloud (192.0.0.192).
METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "192.0.0.192",
    )
)
SHARED_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
NAT64_NETWORK = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215 local-use NAT64 prefix: where it leads is site-specific.
NAT64_LOCAL_NETWORK = ipaddress.IPv6Network("64:ff9b:1::/48")
COMPATIBLE_NETWORK = ipaddress.IPv6Network("::/96")
# SIIT's IPv4-translated form (RFC 2765), ::ffff:0:a.b.c.d.
TRANSLATED_NETWORK = ipaddress.IPv6Network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if it is one of those forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (
        address in NAT64_NETWORK
        or address in TRANSLATED_NETWORK
        or (address in COMPATIBLE_NETWORK and int(address) > 1)
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address) -> str | None:
    """Why `address` is internal ("loopback", "private", ...), or None."""
    if address in METADATA_ADDRESSES:
        return "metadata"
    if isinstance(address, ipaddress.IPv6Address):
        verdict = _ipv6_refusal(address)
        if verdict != "judge":
            return verdict
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link_local", address.is_link_local),
        (
            "site_local",
            isinstance(address, ipaddress.IPv6Address) and address.is_site_local,
        ),
        ("multicast", address.is_multicast),
        ("shared", address in SHARED_NETWORK),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not_global", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    # A reason, None for an address judged by the IPv4 one it carries, or
    # "judge" when the IPv6 address must go through the ordinary checks.
    if address in NAT64_LOCAL_NETWORK:
        return "nat64_local"
    # Teredo tunnels through a relay to an obfuscated IPv4 client; no
    # webhook receiver lives there, and the relay hides where it leads.
    if address.teredo is not None:
        return "teredo"
    inner = embedded_ipv4(address)
    if inner is None:
        return "judge"
    reason = refusal(inner)
    if reason is not None:
        return reason
    # Mapped, translated, compatible and NAT64 forms reach the IPv4 host
    # itself (NAT64 is how IPv6-only hosts reach IPv4 receivers); a 6to4
    # address is then judged as the IPv6 address it is.
    if address.sixtofour is not None:
        return "judge"
    return None


@dataclass(frozen=True)
class TargetPolicy:
    """The allow-list, and the checks every resolved address goes through."""

    allow_networks: tuple[Network, ...] = ()

    def admitted(self, address: Address) -> bool:
        """True when `address` is public, or internal but allow-listed."""
        reason = refusal(address)
        if reason is None:
            return True
        if reason == "metadata":
            return False
        forms: list[Address] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                forms.append(inner)
        return any(form in net for form in forms for net in self.allow_networks)

    def check(self, host: str, addresses: Iterable[Address]) -> list[str]:
        """The addresses as connect targets; raises `RefusedTargetError` if any is bad.

        One bad address refuses the whole host: a connection that falls back
        from a public address to an internal one would get through otherwise.
        """
        checked: list[str] = []
        for address in addresses:
            if not self.admitted(address):
                raise RefusedTargetError(
                    f"host {host!r} resolves to {address} ({refusal(address)}),"
                    " which webhooks may not reach; FERRY_WEBHOOKS_ALLOW_NETWORKS"
                    " admits internal networks"
                )
            text = str(address)
            if text not in checked:
                checked.append(text)
        return checked

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host` once and return the checked addresses, in order.

        Raises `ResolveError` when the name has no address and
        `RefusedTargetError` when any address is internal and not allow-listed.
        """
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            return self.check(host, [literal])

        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolveError(f"host {host!r} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise ResolveError(f"host {host!r} resolves to no address")
        return self.check(host, addresses)


def parse_url(url: str) -> httpx.URL:
    """The endpoint URL, checked for what a webhook target may be.

    Raises `TargetError` for a URL that is not http(s), has no host, or
    carries credentials (they would travel in clear to whoever answers).
    The message names the problem, never the URL, whose path and query often
    hold the receiver's own token.
    """
    try:
        parsed = httpx.URL(url)
        # Decoding the host's A-labels raises UnicodeError for one that is
        # not valid punycode (`xn--`): a bad URL, not a failed run.
        host = parsed.host
    except httpx.InvalidURL as exc:
        raise TargetError(f"endpoint URL is malformed: {exc}") from None
    except UnicodeError as exc:
        raise TargetError(f"endpoint URL host is not valid IDNA: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise TargetError(
            f"endpoint URL scheme must be http or https, got {parsed.scheme!r}"
        )
    if not host:
        raise TargetError("endpoint URL has no host")
    if parsed.userinfo:
        raise TargetError("endpoint URL must not carry a user name or password")
    return parsed
