"""The dialer's target policy: the allow list, and the addresses no call may go to (sans-IO)."""

from __future__ import annotations

import ipaddress

import pytest

from telephony.sip.dialpolicy import (
    AllowList,
    OwnSip,
    destination_refusal,
    dial_refusal,
    literal_address,
    target_refusal,
)
from telephony.sip.message import parse_uri

OUR_PORT = 5060
#: Bound to every interface, advertised as 192.0.2.5: the shape of a real deployment.
OWN = OwnSip.of(["0.0.0.0", "192.0.2.5"], OUR_PORT)
ALLOW = AllowList.parse(
    "pbx.corp.example, *.trunk.example.com, 203.0.113.7, 10.0.0.0/8, 127.0.0.1, 2001:db8::/32",
    source="VOICEBOT_DIAL_ALLOW",
)


def refusal(target: str, dest_ip: str, dest_port: int = OUR_PORT + 10, **kw: object) -> str | None:
    allow = kw.pop("allow", ALLOW)
    assert isinstance(allow, AllowList)
    proxy = str(kw.pop("proxy", ""))
    return dial_refusal(parse_uri(target), dest_ip, dest_port, allow, OWN, proxy)


# --- the allow list ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, ip",
    [
        ("sip:alice@pbx.corp.example:5070", "198.51.100.20"),
        ("sip:alice@PBX.Corp.Example.:5070", "198.51.100.20"),  # case and a trailing dot
        ("sip:alice@203.0.113.7:5070", "203.0.113.7"),
        ("sip:alice@[2001:db8::7]:5070", "2001:db8::7"),
        ("sips:alice@pbx.corp.example:5071", "198.51.100.20"),
    ],
)
def test_listed_hosts_are_allowed(target: str, ip: str) -> None:
    assert refusal(target, ip, 5070) is None


@pytest.mark.parametrize("host", ["a.trunk.example.com", "x.y.trunk.example.com"])
def test_a_wildcard_allows_names_below_its_domain(host: str) -> None:
    assert refusal(f"sip:bob@{host}:5070", "198.51.100.30", 5070) is None


@pytest.mark.parametrize("host", ["trunk.example.com", "eviltrunk.example.com", "trunk.example.com.evil.net"])
def test_a_wildcard_does_not_allow_its_domain_or_lookalikes(host: str) -> None:
    reason = refusal(f"sip:bob@{host}:5070", "198.51.100.30", 5070)
    assert reason is not None and "not on VOICEBOT_DIAL_ALLOW" in reason, reason


@pytest.mark.parametrize("host", ["10.0.0.1", "10.255.255.254", "167772161"])  # the last: 10.0.0.1
def test_a_cidr_allows_the_addresses_in_it(host: str) -> None:
    assert refusal(f"sip:bob@{host}:5070", "10.0.0.1", 5070) is None


def test_a_cidr_does_not_let_a_name_in_by_what_it_resolves_to() -> None:
    """Else any name could be listed by pointing its DNS into the network, and every unlisted name
    would cost a lookup before it was refused."""
    reason = refusal("sip:bob@anything.example.net:5070", "10.0.0.1", 5070)
    assert reason is not None and "'anything.example.net' is not on VOICEBOT_DIAL_ALLOW" in reason


@pytest.mark.parametrize("host", ["11.0.0.1", "203.0.113.8", "pbx2.corp.example", "corp.example"])
def test_hosts_off_the_list_are_refused(host: str) -> None:
    reason = refusal(f"sip:bob@{host}:5070", "198.51.100.40", 5070)
    assert reason == f"host {host!r} is not on VOICEBOT_DIAL_ALLOW", reason


@pytest.mark.parametrize("spec", ["", "  ", " , ;"])
def test_an_empty_list_and_no_proxy_refuses_everything_and_says_what_to_set(spec: str) -> None:
    empty = AllowList.parse(spec, source="VOICEBOT_DIAL_ALLOW")
    assert empty.empty
    reason = refusal("sip:bob@203.0.113.7:5070", "203.0.113.7", 5070, allow=empty)
    assert reason is not None and "set it" in reason and "VOICEBOT_DIAL_ALLOW is empty" in reason, reason


def test_through_a_proxy_the_trunk_is_allowed_and_other_hosts_must_be_listed() -> None:
    empty = AllowList.parse("", source="VOICEBOT_DIAL_ALLOW")
    trunk = "sip.trunk-provider.example"
    assert refusal(f"sip:+15551234567@{trunk}", "198.51.100.50", 5060, allow=empty, proxy=trunk) is None
    assert (
        refusal(f"sip:+15551234567@{trunk.upper()}", "198.51.100.50", 5060, allow=empty, proxy=trunk) is None
    )
    reason = refusal("sip:bob@elsewhere.example", "198.51.100.50", 5060, allow=empty, proxy=trunk)
    assert reason is not None and "not on VOICEBOT_DIAL_ALLOW" in reason and trunk in reason, reason
    # A listed target is allowed through the proxy too.
    assert refusal("sip:bob@pbx.corp.example", "198.51.100.50", 5060, proxy=trunk) is None


def test_through_a_proxy_the_forbidden_targets_stay_forbidden() -> None:
    trunk = "sip.trunk-provider.example"
    reason = refusal("sip:x@169.254.169.254", "198.51.100.50", 5060, proxy=trunk)
    assert reason is not None and "metadata" in reason, reason
    # ... and so does a proxy that resolves to the bot itself.
    reason = refusal(f"sip:x@{trunk}", "127.0.0.1", OUR_PORT, proxy=trunk)
    assert reason is not None and "own SIP port" in reason, reason


@pytest.mark.parametrize("entry", ["bad host!", "*.", "*", "a..b", "-x.example", "http://x"])
def test_a_bad_entry_is_an_error_that_names_it(entry: str) -> None:
    with pytest.raises(ValueError, match="VOICEBOT_DIAL_ALLOW") as info:
        AllowList.parse(f"pbx.example, {entry}", source="VOICEBOT_DIAL_ALLOW")
    assert repr(entry.strip()) in str(info.value)


def test_ipv4_mapped_cidr_entries_match_ipv4_targets() -> None:
    allow = AllowList.parse("::ffff:10.0.0.0/104")
    assert allow.allows("10.1.2.3") and allow.allows("::ffff:10.1.2.3") and not allow.allows("11.0.0.1")


# --- never, whatever the list says ------------------------------------------------------------

#: A list that would let anything in, to show these refusals do not depend on it.
EVERYTHING = AllowList.parse(
    "0.0.0.0/0, ::/0, localhost, metadata.google.internal, metadata, self.example, meta.example"
)


def refused(target: str, dest_ip: str, dest_port: int = OUR_PORT) -> str:
    reason = dial_refusal(parse_uri(target), dest_ip, dest_port, EVERYTHING, OWN)
    assert reason is not None, f"{target} -> {dest_ip}:{dest_port} was allowed"
    return reason


@pytest.mark.parametrize(
    "target, ip",
    [
        (f"sip:x@127.0.0.1:{OUR_PORT}", "127.0.0.1"),
        ("sip:x@127.0.0.1", "127.0.0.1"),  # the default port is ours
        (f"sip:x@127.0.0.2:{OUR_PORT}", "127.0.0.2"),  # all of 127/8 is this machine
        (f"sip:x@[::1]:{OUR_PORT}", "::1"),
        (f"sip:x@[::ffff:127.0.0.1]:{OUR_PORT}", "::ffff:127.0.0.1"),
        (f"sip:x@127.1:{OUR_PORT}", "127.0.0.1"),
        (f"sip:x@localhost:{OUR_PORT}", "127.0.0.1"),
        (f"sip:x@192.0.2.5:{OUR_PORT}", "192.0.2.5"),  # the advertised address
    ],
)
def test_the_bot_itself_is_refused(target: str, ip: str) -> None:
    assert "own SIP port" in refused(target, ip)


@pytest.mark.parametrize("target", [f"sip:x@0.0.0.0:{OUR_PORT}", "sip:x@0.0.0.0:5070", "sip:x@[::]:5070"])
def test_the_unspecified_address_is_refused(target: str) -> None:
    host = parse_uri(target).host
    assert "unspecified" in refused(target, host, parse_uri(target).host_port()[1])


def test_the_bound_address_is_the_bot_too() -> None:
    own = OwnSip.of(["10.9.8.7"], 5080)
    uri = parse_uri("sip:x@10.9.8.7:5080")
    reason = dial_refusal(uri, "10.9.8.7", 5080, EVERYTHING, own)
    assert reason is not None and "own SIP port" in reason
    assert dial_refusal(parse_uri("sip:x@10.9.8.7:5081"), "10.9.8.7", 5081, EVERYTHING, own) is None


def test_loopback_on_another_port_is_not_the_bot() -> None:
    """Local SIP peers (a PBX on the same host, the test peers) are fine when listed."""
    assert dial_refusal(parse_uri("sip:x@127.0.0.1:5070"), "127.0.0.1", 5070, EVERYTHING, OWN) is None


def test_a_name_that_resolves_to_the_bot_is_refused() -> None:
    """The literal host looks harmless; the resolved address is what counts."""
    reason = refused(f"sip:x@self.example:{OUR_PORT}", "127.0.0.1", OUR_PORT)
    assert "own SIP port" in reason and "127.0.0.1" in reason, reason


@pytest.mark.parametrize(
    "target, ip, why",
    [
        ("sip:x@169.254.169.254", "169.254.169.254", "metadata"),
        ("sip:x@169.254.169.254:80", "169.254.169.254", "metadata"),
        ("sip:x@[::ffff:169.254.169.254]", "::ffff:169.254.169.254", "metadata"),
        ("sip:x@[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe", "metadata"),
        ("sip:x@[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe", "metadata"),  # NAT64
        ("sip:x@2852039166", "169.254.169.254", "metadata"),  # decimal IPv4, as resolvers read it
        ("sip:x@0xa9.0xfe.0xa9.0xfe", "169.254.169.254", "metadata"),
        ("sip:x@[fd00:ec2::254]", "fd00:ec2::254", "metadata"),
        ("sip:x@100.100.100.200", "100.100.100.200", "metadata"),
        ("sip:x@metadata.google.internal", "169.254.169.254", "metadata"),
        ("sip:x@Metadata.Google.Internal.", "169.254.169.254", "metadata"),
        ("sip:x@169.254.1.1", "169.254.1.1", "link-local"),
        ("sip:x@[fe80::1]", "fe80::1", "link-local"),
        ("sip:x@[::ffff:169.254.1.1]", "::ffff:169.254.1.1", "link-local"),
        ("sip:x@224.0.0.1", "224.0.0.1", "multicast"),
        ("sip:x@[ff02::1]", "ff02::1", "multicast"),
        ("sip:x@255.255.255.255", "255.255.255.255", "broadcast"),
    ],
)
def test_forbidden_literal_hosts_are_refused(target: str, ip: str, why: str) -> None:
    reason = refused(target, ip, 5060 if ":80" not in target else 80)
    assert why in reason, reason


@pytest.mark.parametrize(
    "ip, why",
    [
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("169.254.7.7", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("239.1.2.3", "multicast"),
    ],
)
def test_a_listed_name_resolving_to_a_forbidden_address_is_refused(ip: str, why: str) -> None:
    reason = refused("sip:x@meta.example:5070", ip, 5070)
    assert why in reason, reason


def test_maddr_cannot_redirect_a_listed_target() -> None:
    reason = refused("sip:x@pbx.example;maddr=169.254.169.254", "198.51.100.1", 5060)
    assert "maddr" in reason


def test_target_refusal_needs_no_dns_and_destination_refusal_checks_the_address() -> None:
    assert target_refusal(parse_uri("sip:x@nowhere.example"), ALLOW, OWN) is not None
    assert target_refusal(parse_uri("sip:x@pbx.corp.example"), ALLOW, OWN) is None
    assert destination_refusal("198.51.100.1", 5060, OWN) is None
    assert destination_refusal("not-an-ip", 5060, OWN) is not None


@pytest.mark.parametrize(
    "host, address",
    [
        ("10.0.0.1", "10.0.0.1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::a9fe:a9fe", "169.254.169.254"),  # IPv4-compatible
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::", "::"),
        ("pbx.example", None),
        ("deadbeef", None),
        ("1.example", None),
    ],
)
def test_literal_address(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert found == (None if address is None else ipaddress.ip_address(address))
