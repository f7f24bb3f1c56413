"""Which SIP targets the dialer may call: an allow list, and addresses no call may ever go to.

Sans-IO: pure functions over a parsed target URI and the address its INVITE would be sent to
(resolved by the caller: the proxy when one is configured, else the target's host). They answer
None, or why the call is refused.

The rules, in order:

- The target's host must match the allow list: an exact host name, a ``*.example.com`` wildcard
  (any name below example.com, not example.com itself), or an IP address or CIDR. Names match
  name entries only and IP literals match address entries only: a CIDR never lets a name in by
  the address it happens to resolve to, so no DNS lookup is made for a name that is not listed.
  Through a proxy (a trunk), a target whose host is the proxy's own host is allowed too: the trunk
  is trusted to route ``sip:+15551234567@trunk.example.com`` to any number. An empty allow list
  and no proxy refuse every target.
- Whatever the list says, never: the bot itself (a loopback, unspecified, bound or advertised
  address with the bot's SIP port, where the bot would talk to itself), link-local addresses
  (169.254.0.0/16, fe80::/10), cloud metadata services (169.254.169.254, fd00:ec2::254,
  100.100.100.200, 168.63.129.16, metadata.google.internal), the unspecified address, multicast or
  broadcast. These apply to the literal host and to the resolved destination both, so a DNS name
  that points at one of them is refused too, and to IPv4 written as IPv6 (``::ffff:169.254.169.254``,
  NAT64 ``64:ff9b::a9fe:a9fe``) or in the legacy forms resolvers accept (``2852039166``, ``127.1``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from telephony.sip.message import SipUri

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance metadata services: they hand out cloud credentials to whoever on the host asks.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure's WireServer
    )
)
METADATA_NAMES: Final = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})

BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_LEGACY_IPV4_CHARS: Final = frozenset("0123456789abcdefxABCDEFX.")


@dataclass(frozen=True)
class AllowList:
    """Parsed allow list. ``source`` names it in refusals (the setting an operator would change)."""

    names: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()  # ".example.com" for the entry *.example.com
    networks: tuple[Network, ...] = ()
    source: str = "the dial allow list"

    @classmethod
    def parse(cls, spec: str, source: str = "the dial allow list") -> AllowList:
        """'pbx.example.com, *.trunk.example.com, 10.0.0.0/8, 192.0.2.7'. Raises ValueError."""
        names: set[str] = set()
        domains: list[str] = []
        networks: list[Network] = []
        for raw in spec.replace(";", ",").split(","):
            entry = raw.strip()
            if not entry:
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
                continue
            wildcard = entry.startswith("*.")
            name = _normalise_name(entry[2:] if wildcard else entry)
            if not _is_hostname(name):
                raise ValueError(
                    f"bad entry {entry!r} in {source}: give a host name, *.domain, an IP address or a CIDR"
                )
            if wildcard:
                domains.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(domains), tuple(networks), source)

    @property
    def empty(self) -> bool:
        return not (self.names or self.domains or self.networks)

    def allows(self, host: str) -> bool:
        """Whether a URI's host (a name or an IP literal, without brackets) is on the list."""
        address = literal_address(host)
        if address is not None:
            return any(address in network for network in self.networks)
        name = _normalise_name(host)
        return name in self.names or any(name.endswith(domain) for domain in self.domains)


@dataclass(frozen=True)
class OwnSip:
    """Where the bot itself takes SIP: a call there would have it talk to itself."""

    addresses: frozenset[Address]
    port: int

    @classmethod
    def of(cls, hosts: Iterable[str], port: int) -> OwnSip:
        """From the bound and advertised hosts (names and unparsable entries are skipped)."""
        found = {a for a in (literal_address(h) for h in hosts if h) if a is not None}
        return cls(frozenset(found), port)

    def is_self(self, address: Address, port: int) -> bool:
        if port != self.port:
            return False
        return address.is_loopback or address.is_unspecified or address in self.addresses


def dial_refusal(
    uri: SipUri,
    dest_ip: str,
    dest_port: int,
    allow: AllowList,
    own: OwnSip,
    proxy_host: str = "",
) -> str | None:
    """None when ``uri`` may be called with its INVITE sent to ``dest_ip:dest_port``; else why not.

    ``proxy_host`` is the configured proxy's host ("" when calls go direct); the destination is then
    the proxy's address."""
    return target_refusal(uri, allow, own, proxy_host) or destination_refusal(dest_ip, dest_port, own)


def target_refusal(uri: SipUri, allow: AllowList, own: OwnSip, proxy_host: str = "") -> str | None:
    """The checks that need no DNS: the URI itself and the allow list. Run this before resolving,
    so a name that is refused anyway is never looked up."""
    if uri.scheme not in ("sip", "sips") or not uri.host:
        return f"only sip: and sips: URIs with a host can be dialled, not {str(uri)!r}"
    host = uri.host.strip("[]")
    if uri.has_param("maddr"):
        # maddr sends the request somewhere other than the host the list was checked against.
        return "a target with a maddr parameter cannot be dialled"
    port = uri.host_port()[1]
    forbidden = _forbidden_host(host, port, own)
    if forbidden is not None:
        return f"refusing to dial {host} (port {port}): {forbidden}"
    through_proxy = bool(proxy_host) and _same_host(host, proxy_host)
    if not through_proxy and not allow.allows(host):
        if allow.empty and not proxy_host:
            return (
                f"outbound calls are off: {allow.source} is empty, so no target may be dialled; "
                f"set it to the hosts or networks the bot may call"
            )
        via = f" (nor is it the proxy {proxy_host})" if proxy_host else ""
        return f"host {host!r} is not on {allow.source}{via}"
    return None


def destination_refusal(ip: str, port: int, own: OwnSip) -> str | None:
    """The checks on the address the INVITE would really go to (after DNS)."""
    address = literal_address(ip)
    if address is None:
        return f"refusing to dial: {ip!r} is not an IP address"
    reason = _forbidden_address(address, port, own)
    return None if reason is None else f"refusing to dial {ip} (port {port}): {reason}"


def literal_address(host: str) -> Address | None:
    """The IP address a host literal stands for, with IPv4 carried in IPv6 unwrapped; None for a
    name. Accepts the legacy IPv4 forms (``127.1``, ``0x7f.0.0.1``, ``2130706433``) that resolvers
    turn into addresses without asking DNS."""
    text = host.strip("[]")
    try:
        return _unwrap(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text and set(text) <= _LEGACY_IPV4_CHARS and any(c.isdigit() for c in text[:1]):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))  # parses only; no I/O
        except OSError:
            return None
    return None


# --- helpers -----------------------------------------------------------------------------------


def _forbidden_host(host: str, port: int, own: OwnSip) -> str | None:
    address = literal_address(host)
    if address is not None:
        return _forbidden_address(address, port, own)
    name = _normalise_name(host)
    if name in METADATA_NAMES:
        return "a cloud metadata service"
    if (name == "localhost" or name.endswith(".localhost")) and port == own.port:
        return "the bot's own SIP port (it would call itself)"
    return None


def _forbidden_address(address: Address, port: int, own: OwnSip) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata service"
    if address.is_unspecified:
        return "the unspecified address"
    if own.is_self(address, port):
        return "the bot's own SIP port (it would call itself)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address == BROADCAST:
        return "the broadcast address"
    return None


def _unwrap(address: Address) -> Address:
    """IPv4 reached through an IPv6 form is judged as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        # IPv4-compatible (::a.b.c.d, deprecated, still routed as IPv4 by some stacks); :: and ::1 stay.
        if int(address) >> 32 == 0 and int(address) > 1:
            return ipaddress.IPv4Address(int(address))
    return address


def _network(entry: str) -> Network | None:
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.0/104 is how 10.0.0.0/8 looks in IPv6
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def _normalise_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return bool(name) and len(name) <= 253 and all(_is_label(label) for label in labels)


def _is_label(label: str) -> bool:
    if not 0 < len(label) <= 63 or label.startswith("-") or label.endswith("-"):
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in label)


def _same_host(host: str, other: str) -> bool:
    mine, theirs = literal_address(host), literal_address(other)
    if mine is not None or theirs is not None:
        return mine == theirs
    return _normalise_name(host) == _normalise_name(other)
