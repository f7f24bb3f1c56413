"""Who may talk to the SIP port, and how fast: a source allowlist and per-source INVITE buckets.

Sans-IO. Datagrams from sources off the allowlist are dropped without an answer, so scanners
learn nothing. Each new INVITE (not a retransmission) spends a token of its source's bucket; an
empty bucket gets 503 with Retry-After.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Bounds the memory a flood from many spoofed sources can take.
MAX_TRACKED_SOURCES: Final = 10_000


def parse_networks(spec: str) -> list[Network]:
    """'10.0.0.0/8, 192.168.1.7' -> networks. Empty means every source. Raises ValueError."""
    networks: list[Network] = []
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as err:
                raise ValueError(f"bad network {part!r} in the SIP allowlist: {err}") from None
    return networks


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Guard:
    def __init__(self, allow: list[Network], invite_rate: float, invite_burst: int) -> None:
        self.allow = allow
        self.rate = invite_rate
        self.burst = max(1, invite_burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.stats = {"denied": 0, "limited": 0}

    def allowed(self, host: str) -> bool:
        if not self.allow:
            return True
        if not self._allowed(host):
            self.stats["denied"] += 1
            return False
        return True

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)

    def take_invite(self, host: str, now: float) -> bool:
        """Spend one token of ``host``'s INVITE bucket; False when it is empty."""
        if self.rate <= 0 or self._take(host, now):
            return True
        self.stats["limited"] += 1
        return False

    def _take(self, host: str, now: float) -> bool:
        bucket = self._buckets.pop(host, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[host] = bucket  # most recently seen last
        while len(self._buckets) > MAX_TRACKED_SOURCES:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False
