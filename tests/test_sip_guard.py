"""The SIP source allowlist and per-source INVITE token buckets."""

from __future__ import annotations

import ipaddress

import pytest

from telephony.sip import guard as guard_module
from telephony.sip.guard import MAX_TRACKED_SOURCES, Guard, parse_networks

# --- parse_networks ----------------------------------------------------------------------------


def test_parse_networks_list() -> None:
    nets = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert nets == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


def test_parse_networks_accepts_semicolons_blanks_ipv6_and_host_bits() -> None:
    nets = parse_networks(" 192.168.1.7/24 ;; 2001:db8::/32 ,, ::1 ")
    assert nets == [
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("::1/128"),
    ]


@pytest.mark.parametrize("spec", ["", "   ", ",", " ; , "])
def test_parse_networks_empty(spec: str) -> None:
    assert parse_networks(spec) == []


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("10.0.0.0/8, nonsense", "nonsense"),
        ("300.1.1.1", "300.1.1.1"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("127.0.0.1, example.com", "example.com"),
        ("10.0.0.0/8/8", "10.0.0.0/8/8"),
    ],
)
def test_parse_networks_names_the_bad_entry(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match="allowlist") as info:
        parse_networks(spec)
    assert repr(bad) in str(info.value)


# --- allowlist -----------------------------------------------------------------------------------


def test_empty_allowlist_allows_everything() -> None:
    guard = Guard([], invite_rate=0, invite_burst=1)
    for host in ("10.1.2.3", "::1", "not-an-ip", ""):
        assert guard.allowed(host)
    assert guard.stats["denied"] == 0


def test_allowlist_matches_networks_and_counts_denials() -> None:
    guard = Guard(parse_networks("10.0.0.0/8, 127.0.0.1, 2001:db8::/32"), invite_rate=0, invite_burst=1)
    assert guard.allowed("10.200.3.4")
    assert guard.allowed("127.0.0.1")
    assert guard.allowed("2001:db8::5")
    assert guard.allowed("fe80::1%eth0") is False
    assert not guard.allowed("127.0.0.2")
    assert not guard.allowed("11.0.0.1")
    assert not guard.allowed("garbage")
    assert not guard.allowed("")
    assert guard.stats["denied"] == 5


def test_allowlist_ipv4_mapped_ipv6_and_scope_ids() -> None:
    guard = Guard(parse_networks("10.0.0.0/8, fe80::/10"), invite_rate=0, invite_burst=1)
    assert guard.allowed("::ffff:10.1.2.3")
    assert not guard.allowed("::ffff:192.168.0.1")
    assert guard.allowed("fe80::1%eth0")


# --- token bucket --------------------------------------------------------------------------------


def test_rate_zero_disables_the_limit() -> None:
    guard = Guard([], invite_rate=0, invite_burst=1)
    assert all(guard.take_invite("10.0.0.1", 0.0) for _ in range(1000))
    assert guard.stats["limited"] == 0


def test_burst_then_refill_at_rate() -> None:
    guard = Guard([], invite_rate=2.0, invite_burst=3)
    assert [guard.take_invite("1.1.1.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert guard.stats["limited"] == 1
    assert not guard.take_invite("1.1.1.1", 0.25)  # half a token
    assert guard.take_invite("1.1.1.1", 0.5)  # 0.5 + 0.5 = 1 token
    assert not guard.take_invite("1.1.1.1", 0.5)
    # a long pause refills only up to the burst
    assert [guard.take_invite("1.1.1.1", 1000.0) for _ in range(4)] == [True, True, True, False]
    assert guard.stats["limited"] == 4


def test_buckets_are_per_source() -> None:
    guard = Guard([], invite_rate=0.1, invite_burst=1)
    assert guard.take_invite("1.1.1.1", 0.0)
    assert not guard.take_invite("1.1.1.1", 0.0)
    assert guard.take_invite("2.2.2.2", 0.0)
    assert guard.take_invite("1.1.1.1", 10.0)


def test_burst_is_at_least_one() -> None:
    guard = Guard([], invite_rate=1.0, invite_burst=0)
    assert guard.burst == 1
    assert guard.take_invite("1.1.1.1", 0.0)
    assert not guard.take_invite("1.1.1.1", 0.0)


def test_source_table_is_bounded_and_evicts_the_least_recent() -> None:
    guard = Guard([], invite_rate=0.001, invite_burst=1)
    for i in range(MAX_TRACKED_SOURCES + 500):
        guard.take_invite(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
    assert len(guard._buckets) == MAX_TRACKED_SOURCES
    assert "10.0.0.0" not in guard._buckets  # the oldest went first
    # a source evicted comes back with a full bucket
    assert guard.take_invite("10.0.0.0", 0.0)


def test_recently_seen_source_survives_eviction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "MAX_TRACKED_SOURCES", 3)
    guard = Guard([], invite_rate=0.001, invite_burst=1)
    for host in ("a", "b", "c"):
        guard.take_invite(host, 0.0)
    assert not guard.take_invite("a", 1.0)  # touches a: now the most recent
    guard.take_invite("d", 1.0)  # evicts b
    assert list(guard._buckets) == ["c", "a", "d"]
    assert not guard.take_invite("a", 1.0)  # a's empty bucket was kept
