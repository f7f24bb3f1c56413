"""SIP message parsing and serialization: real-world shapes, RFC 4475-style oddities, and errors."""

from __future__ import annotations

import re

import pytest

from telephony.sip.message import (
    MAX_MESSAGE_BYTES,
    REASONS,
    Address,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    canonical_name,
    is_keepalive,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_address,
    parse_cseq,
    parse_message,
    parse_uri,
    parse_via,
    serialize,
)

SDP = (
    b"v=0\r\n"
    b"o=- 1702031234 1702031234 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 10000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)

# Shaped like what baresip 3.x sends on an outgoing call.
BARESIP_INVITE = (
    b"INVITE sip:bot@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKb2d1c3a4e5f6a7b8;rport\r\n"
    b"Contact: <sip:alice-0x55d@192.168.1.20:5060;transport=udp>\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bot@127.0.0.1:5080>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=8f2a1c0b9d7e6f55\r\n'
    b"Call-ID: 3c9e1a7b5d2f4e60\r\n"
    b"CSeq: 28731 INVITE\r\n"
    b"Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER\r\n"
    b"Supported: replaces,norefersub\r\n"
    b"User-Agent: baresip v3.10.1 (x86_64/linux)\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

OK_WITH_RECORD_ROUTE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK74bf9;received=192.0.2.1;rport=5060\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKnashds8\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p3.example.com;lr>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# Compact names, odd case, folding, LF line endings and an unknown header together.
COMPACT_LF = (
    b"OPTIONS sip:bot@[2001:db8::10]:5060;transport=udp SIP/2.0\n"
    b"v: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK776asdhds, SIP/2.0/TCP proxy.example.com;"
    b"branch=z9hG4bKzzz\n"
    b"f: <sip:probe@example.com>;tag=abc\n"
    b"t: <sip:bot@example.com>\n"
    b"i: a84b4c76e66710@pc33.example.com\n"
    b"cSEQ: 63104 OPTIONS\n"
    b"m: <sip:probe@[2001:db8::1]:5062>\n"
    b"SUBJECT: a long\n"
    b"   folded\n"
    b"\tsubject\n"
    b"X-Custom-thing: keep me;as=is\n"
    b"l: 0\n"
    b"\n"
)


def _req(headers: bytes, start: bytes = b"INVITE sip:bob@example.com SIP/2.0", body: bytes = b"") -> bytes:
    return start + b"\r\n" + headers + b"\r\n" + body


BASE_HEADERS = (
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: c1@host\r\n"
    b"CSeq: 1 INVITE\r\n"
)


def test_baresip_invite() -> None:
    msg = parse_message(BARESIP_INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:bot@127.0.0.1:5080"
    assert msg.body == SDP
    assert msg.call_id == "3c9e1a7b5d2f4e60"
    assert msg.cseq == (28731, "INVITE")
    via = msg.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.168.1.20", 5060)
    assert via.branch == "z9hG4bKb2d1c3a4e5f6a7b8"
    assert via.param("rport") == ""
    assert msg.from_addr.display == "Alice"
    assert msg.from_addr.tag == "8f2a1c0b9d7e6f55"
    assert msg.to_addr.tag is None
    assert msg.headers.get("Max-Forwards") == "70"
    # Allow is not split: one value, as sent.
    assert msg.headers.get_all("Allow") == [
        "INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER"
    ]
    contact = parse_address(msg.headers.get("Contact") or "")
    assert contact.uri.param("transport") == "udp"


def test_ok_with_record_route() -> None:
    msg = parse_message(OK_WITH_RECORD_ROUTE)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason) == (200, "OK")
    assert msg.headers.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    assert len(msg.headers.get_all("Via")) == 2
    assert msg.top_via.param("received") == "192.0.2.1"
    assert msg.top_via.param("rport") == "5060"
    assert msg.to_addr.tag == "8321234356"
    assert msg.from_addr.display == "Alice"
    assert msg.body == b""


def test_compact_forms_folding_lf_and_ipv6() -> None:
    msg = parse_message(COMPACT_LF)
    assert isinstance(msg, SipRequest)
    names = [n for n, _ in msg.headers.items()]
    assert names == [
        "Via",
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Subject",
        "X-Custom-Thing",
        "Content-Length",
    ]
    assert msg.headers.get("subject") == "a long folded subject"
    assert msg.headers.get("x-custom-THING") == "keep me;as=is"
    assert msg.call_id == "a84b4c76e66710@pc33.example.com"
    top = msg.top_via
    assert (top.host, top.port, top.branch) == ("2001:db8::1", 5062, "z9hG4bK776asdhds")
    second = parse_via(msg.headers.get_all("Via")[1])
    assert (second.transport, second.host, second.port) == ("TCP", "proxy.example.com", None)
    uri = parse_uri(msg.uri)
    assert uri.host_port() == ("2001:db8::10", 5060)
    assert str(uri) == msg.uri
    wire = serialize(msg)
    assert b"\nv:" not in wire and b"Via: SIP/2.0/UDP [2001:db8::1]:5062" in wire
    assert all(line.endswith(b"\r") for line in wire.split(b"\n")[:-1])


@pytest.mark.parametrize("raw", [BARESIP_INVITE, OK_WITH_RECORD_ROUTE, COMPACT_LF])
def test_round_trip(raw: bytes) -> None:
    first = parse_message(raw)
    wire = serialize(first)
    second = parse_message(wire)
    assert second == first
    assert serialize(second) == wire


def test_torture_style_values() -> None:
    long_value = "x" * 3000
    raw = _req(
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1 , SIP/2.0/UDP  10.0.0.2:5070 ;branch=z9hG4bK2\r\n"
        b'From: "Bob \\"the\\" Builder, Esq." <sip:%61lice@example.com;user=phone>;tag=ab\r\n'
        b'To: "Semi;colon" <sip:+1-555-0100;phone-context=example.com@gw.example.com;user=phone>\r\n'
        b"Call-ID: weird!id~with'chars@[2001:db8::1]\r\n"
        b"CSeq:   7    INVITE  \r\n"
        b'Contact: "A, B" <sip:a@h>;q=0.5, <sip:c@h;transport=tcp>;expires=60\r\n'
        b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
        b"X-Long: " + long_value.encode() + b"\r\n"
    )
    msg = parse_message(raw)
    sender = msg.from_addr
    assert sender.display == 'Bob "the" Builder, Esq.'
    assert sender.uri.user == "%61lice" and sender.uri.user_text == "alice"
    assert sender.uri.param("user") == "phone"
    assert sender.tag == "ab"
    callee = msg.to_addr
    assert callee.display == "Semi;colon"
    assert callee.uri.user == "+1-555-0100;phone-context=example.com"
    assert callee.uri.host == "gw.example.com"
    assert msg.cseq == (7, "INVITE")
    assert msg.headers.get_all("Contact") == ['"A, B" <sip:a@h>;q=0.5', "<sip:c@h;transport=tcp>;expires=60"]
    assert parse_via(msg.headers.get_all("Via")[1]).port == 5070
    assert msg.headers.get("Newfangledheader") == "newfangled value continued newfangled value"
    assert msg.headers.get("X-Long") == long_value
    again = parse_message(serialize(msg))
    assert again.headers.get("Content-Length") == "0"  # serialize adds the one the peer left out
    again.headers.remove("Content-Length")
    assert again == msg


def test_addr_spec_params_belong_to_header() -> None:
    addr = parse_address("sip:alice@example.com;tag=77;transport=tcp")
    assert addr.uri.params == ()
    assert addr.tag == "77"
    assert addr.param("transport") == "tcp"
    name_addr = parse_address("<sip:alice@example.com;transport=tcp>;tag=77")
    assert name_addr.uri.param("transport") == "tcp"
    assert name_addr.params == (("tag", "77"),)


def test_address_str_and_with_tag() -> None:
    addr = parse_address('"Quote \\" and \\\\ slash" <sip:a@b>')
    assert addr.display == 'Quote " and \\ slash'
    text = str(addr.with_tag("t1"))
    assert text == '"Quote \\" and \\\\ slash" <sip:a@b>;tag=t1'
    assert parse_address(text) == Address(parse_uri("sip:a@b"), 'Quote " and \\ slash', (("tag", "t1"),))
    assert str(parse_address("sip:a@b")) == "<sip:a@b>"
    assert parse_address("<sip:a@b>;tag=1").with_tag("2").tag == "2"
    assert parse_address("Bob Smith <sip:b@h>").display == "Bob Smith"


def test_uri_forms() -> None:
    uri = parse_uri("sips:user:pw@[::1]:5061;transport=tls;lr?subject=hi&priority=urgent")
    assert uri == SipUri(
        "sips",
        "user",
        "::1",
        5061,
        "pw",
        (("transport", "tls"), ("lr", None)),
        (("subject", "hi"), ("priority", "urgent")),
    )
    assert str(uri) == "sips:user:pw@[::1]:5061;transport=tls;lr?subject=hi&priority=urgent"
    assert uri.param("LR") == ""
    assert uri.param("maddr") is None
    assert parse_uri("sip:example.com").host_port() == ("example.com", 5060)
    assert parse_uri("sip:example.com").host_port(5061) == ("example.com", 5061)
    assert parse_uri("SIP:Alice@Example.COM").scheme == "sip"
    tel = parse_uri("tel:+1-201-555-0123;ext=5")
    assert (tel.scheme, tel.user, str(tel)) == ("tel", "+1-201-555-0123", "tel:+1-201-555-0123;ext=5")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://example.com",
        "sip:",
        "sip:user@",
        "sip:a@b@c",
        "sip:a b@c",
        "sip:host:99999",
        "sip:host:port",
        "sip:[::1",
        "sip:[nothex]",
        "sip:2001:db8::1",
        "sip:%zzuser@host",
        "sip:-bad-.example.com",
        "sip:host;=x",
        "sip:host?novalue",
        "mailto:a@b",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_via_helpers() -> None:
    via = parse_via("SIP / 2.0 / udp 10.0.0.1:5060 ; branch=z9hG4bKx ; rport")
    assert via == Via("UDP", "10.0.0.1", 5060, (("branch", "z9hG4bKx"), ("rport", None)))
    updated = via.with_params(received="192.0.2.7", rport="40000")
    assert str(updated) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport=40000;received=192.0.2.7"
    assert parse_via(str(updated)) == updated
    assert str(Via("TCP", "::1", 5070, (("branch", "z9hG4bKy"),))) == "SIP/2.0/TCP [::1]:5070;branch=z9hG4bKy"
    for bad in ["SIP/2.0/UDP", "SIP/3.0/UDP h", "SIP/2.0/UDP h;branch=a b", "SIP/2.0/UDP h:x", "UDP h"]:
        with pytest.raises(SipParseError):
            parse_via(bad)


def test_cseq() -> None:
    assert parse_cseq("0 ACK") == (0, "ACK")
    assert parse_cseq(f"{2**31 - 1} BYE") == (2**31 - 1, "BYE")
    for bad in [f"{2**31} BYE", "-1 BYE", "1", "INVITE 1", "1 INV ITE", "１ INVITE", "99999999999 BYE"]:
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_canonical_name() -> None:
    expected = {
        "i": "Call-ID",
        "M": "Contact",
        "e": "Content-Encoding",
        "l": "Content-Length",
        "c": "Content-Type",
        "f": "From",
        "s": "Subject",
        "k": "Supported",
        "t": "To",
        "V": "Via",
        "r": "Refer-To",
        "b": "Referred-By",
        "o": "Event",
        "u": "Allow-Events",
        "x": "Session-Expires",
        "call-id": "Call-ID",
        "CSEQ": "CSeq",
        "www-authenticate": "WWW-Authenticate",
        "proxy-authenticate": "Proxy-Authenticate",
        "PROXY-AUTHORIZATION": "Proxy-Authorization",
        "max-forwards": "Max-Forwards",
        "record-route": "Record-Route",
        "content-length": "Content-Length",
        "user-agent": "User-Agent",
        "retry-after": "Retry-After",
        "subscription-state": "Subscription-State",
        "rack": "RAck",
        "rseq": "RSeq",
        "x-my-HEADER": "X-My-Header",
        "a": "A",
    }
    for given, canon in expected.items():
        assert canonical_name(given) == canon


def test_headers_multidict() -> None:
    h = Headers([("via", "a"), ("From", "f"), ("v", "b")])
    assert h.items() == [("Via", "a"), ("From", "f"), ("Via", "b")]
    h.prepend("Via", "top")
    assert h.get_all("VIA") == ["top", "a", "b"]
    assert h.items()[0] == ("Via", "top")
    h.prepend("Route", "r0")
    assert h.items()[0] == ("Route", "r0")
    h.set("via", "only")
    assert h.items() == [("Route", "r0"), ("Via", "only"), ("From", "f")]
    h.set("To", "t")
    assert h.items()[-1] == ("To", "t")
    h.add("X-A", "1")
    assert "x-a" in h and "X-B" not in h and 3 not in h
    h.remove("x-a")
    assert "X-A" not in h
    assert h.get("missing") is None and h.get("missing", "d") == "d"
    c = h.copy()
    c.add("X-Z", "z")
    assert "X-Z" not in h and len(c) == len(h) + 1
    with pytest.raises(ValueError):
        h.add("X-Inject", "a\r\nVia: evil")
    with pytest.raises(ValueError):
        h.add("Bad Name", "x")


def test_serialize_writes_correct_content_length() -> None:
    msg = parse_message(BARESIP_INVITE)
    msg.body = b"hello"
    msg.headers.set("Content-Length", "999")
    wire = serialize(msg)
    assert b"Content-Length: 5\r\n\r\nhello" in wire
    msg.headers.remove("Content-Length")
    assert serialize(msg).endswith(b"Content-Length: 5\r\n\r\nhello")
    assert wire.count(b"\r\n\r\n") == 1
    bare = SipRequest("OPTIONS", "sip:x@y")
    assert serialize(bare) == b"OPTIONS sip:x@y SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_content_length_rules() -> None:
    extra = parse_message(_req(BASE_HEADERS + b"Content-Length: 3\r\n", body=b"abcdef"))
    assert extra.body == b"abc"
    absent = parse_message(_req(BASE_HEADERS, body=b"udp body"))
    assert absent.body == b"udp body"
    zero = parse_message(_req(BASE_HEADERS + b"l: 0\r\n", body=b"junk"))
    assert zero.body == b""


def test_leading_crlf_ignored_and_keepalive() -> None:
    assert parse_message(b"\r\n\r\n" + BARESIP_INVITE).method == "INVITE"  # type: ignore[union-attr]
    assert is_keepalive(b"\r\n") and is_keepalive(b"\r\n\r\n")
    assert not is_keepalive(b"") and not is_keepalive(BARESIP_INVITE)


def test_make_response() -> None:
    req = parse_message(
        _req(
            b"Via: SIP/2.0/UDP p1;branch=z9hG4bKa, SIP/2.0/UDP p2;branch=z9hG4bKb\r\n"
            b"Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n"
            b'From: "A" <sip:a@x>;tag=ft\r\n'
            b"To: sip:b@y\r\n"
            b"Call-ID: cid\r\n"
            b"CSeq: 5 INVITE\r\n"
            b"Max-Forwards: 70\r\n"
            b"Subject: not copied\r\n"
        )
    )
    assert isinstance(req, SipRequest)
    ok = make_response(
        req,
        200,
        to_tag="tt",
        headers=[("Contact", "<sip:bot@h>")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    assert (ok.status, ok.reason) == (200, "OK")
    assert ok.headers.items() == [
        ("Via", "SIP/2.0/UDP p1;branch=z9hG4bKa"),
        ("Via", "SIP/2.0/UDP p2;branch=z9hG4bKb"),
        ("From", '"A" <sip:a@x>;tag=ft'),
        ("To", "sip:b@y;tag=tt"),
        ("Call-ID", "cid"),
        ("CSeq", "5 INVITE"),
        ("Record-Route", "<sip:p1;lr>"),
        ("Record-Route", "<sip:p2;lr>"),
        ("Contact", "<sip:bot@h>"),
        ("Content-Type", "application/sdp"),
    ]
    assert ok.to_addr.tag == "tt"
    again = parse_message(serialize(ok))
    assert isinstance(again, SipResponse) and again.body == b"v=0\r\n"

    trying = make_response(req, 100)
    assert trying.reason == "Trying"
    assert "Record-Route" not in trying.headers
    assert trying.to_addr.tag is None
    busy = make_response(req, 486, to_tag="tt")
    assert busy.reason == "Busy Here" and "Record-Route" not in busy.headers
    ringing = make_response(req, 180, to_tag="tt")
    assert len(ringing.headers.get_all("Record-Route")) == 2

    tagged = make_response(ok_request_with_to_tag(), 200, to_tag="new")
    assert tagged.to_addr.tag == "existing"
    assert make_response(req, 499).reason == "Client Error"
    with pytest.raises(ValueError):
        make_response(req, 99)


def ok_request_with_to_tag() -> SipRequest:
    msg = parse_message(
        _req(
            BASE_HEADERS.replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE").replace(
                b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=existing"
            ),
            start=b"BYE sip:b@h SIP/2.0",
        )
    )
    assert isinstance(msg, SipRequest)
    return msg


def test_identifiers_and_reasons() -> None:
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) > 7 + 8
    assert new_branch() != branch
    assert re.fullmatch(r"[0-9a-f]+", new_tag())
    cid = new_call_id("10.0.0.1")
    assert cid.endswith("@10.0.0.1")
    for code, reason in {
        100: "Trying",
        180: "Ringing",
        183: "Session Progress",
        200: "OK",
        202: "Accepted",
        401: "Unauthorized",
        407: "Proxy Authentication Required",
        481: "Call/Transaction Does Not Exist",
        486: "Busy Here",
        487: "Request Terminated",
        488: "Not Acceptable Here",
        513: "Message Too Large",
        603: "Decline",
    }.items():
        assert REASONS[code] == reason


# --- malformed input: every category gives SipParseError with a useful message -----------------

BAD_CASES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty message"),
    ("only crlf", b"\r\n\r\n", "empty message"),
    ("bad start line", _req(BASE_HEADERS, start=b"HELLO"), "bad request line"),
    ("bad method", _req(BASE_HEADERS, start=b"INV@ITE sip:a@b SIP/2.0"), "bad method"),
    ("bad request version", _req(BASE_HEADERS, start=b"INVITE sip:a@b SIP/3.0"), "unsupported SIP version"),
    ("http", _req(BASE_HEADERS, start=b"GET / HTTP/1.1"), "bad request line"),
    ("bad response version", _req(BASE_HEADERS, start=b"SIP/1.0 200 OK"), "unsupported SIP version"),
    ("status too low", _req(BASE_HEADERS, start=b"SIP/2.0 099 Odd"), "bad status line"),
    ("status too high", _req(BASE_HEADERS, start=b"SIP/2.0 700 Odd"), "bad status line"),
    ("status not numeric", _req(BASE_HEADERS, start=b"SIP/2.0 2x0 OK"), "bad status line"),
    ("status four digits", _req(BASE_HEADERS, start=b"SIP/2.0 2000 OK"), "bad status line"),
    ("bad request uri", _req(BASE_HEADERS, start=b"INVITE sip:a@b:notaport SIP/2.0"), "bad Request-URI"),
    ("uri without scheme", _req(BASE_HEADERS, start=b"INVITE bob SIP/2.0"), "bad Request-URI"),
    ("missing via", _req(BASE_HEADERS.split(b"\r\n", 1)[1]), "missing required header: Via"),
    (
        "missing call-id",
        _req(BASE_HEADERS.replace(b"Call-ID: c1@host\r\n", b"")),
        "missing required header: Call-ID",
    ),
    ("missing from", _req(BASE_HEADERS.replace(b"From: <sip:alice@example.com>;tag=1\r\n", b"")), "From"),
    ("missing cseq", _req(BASE_HEADERS.replace(b"CSeq: 1 INVITE\r\n", b"")), "missing required header: CSeq"),
    ("bad cseq", _req(BASE_HEADERS.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")), "bad CSeq"),
    (
        "cseq too big",
        _req(BASE_HEADERS.replace(b"CSeq: 1 INVITE", b"CSeq: 2147483648 INVITE")),
        "out of range",
    ),
    ("cseq mismatch", _req(BASE_HEADERS.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")), "does not match"),
    ("negative content-length", _req(BASE_HEADERS + b"Content-Length: -1\r\n"), "bad Content-Length"),
    ("non-numeric content-length", _req(BASE_HEADERS + b"Content-Length: ten\r\n"), "bad Content-Length"),
    ("huge content-length", _req(BASE_HEADERS + b"Content-Length: 99999999999999999999\r\n"), "too large"),
    ("truncated body", _req(BASE_HEADERS + b"Content-Length: 10\r\n", body=b"short"), "truncated body"),
    (
        "duplicate content-length",
        _req(BASE_HEADERS + b"Content-Length: 0\r\nl: 0\r\n"),
        "duplicate Content-Length",
    ),
    ("non-utf8 header", _req(BASE_HEADERS + b"Subject: caf\xe9\r\n"), "invalid UTF-8 in header line 6"),
    ("header without colon", _req(BASE_HEADERS + b"NoColonHere\r\n"), "without ':'"),
    ("empty header name", _req(BASE_HEADERS + b": value\r\n"), "empty header name"),
    ("bad header name", _req(BASE_HEADERS + b"Bad Name: v\r\n"), "bad header name"),
    ("continuation first", _req(b" folded\r\n" + BASE_HEADERS), "continuation line"),
    ("max-forwards text", _req(BASE_HEADERS + b"Max-Forwards: seventy\r\n"), "bad Max-Forwards"),
    ("max-forwards 256", _req(BASE_HEADERS + b"Max-Forwards: 256\r\n"), "bad Max-Forwards"),
    ("max-forwards negative", _req(BASE_HEADERS + b"Max-Forwards: -1\r\n"), "bad Max-Forwards"),
    ("bad via", _req(BASE_HEADERS.replace(b"SIP/2.0/UDP 10.0.0.1:5060", b"SIP/2.0/UDP")), "bad Via"),
    (
        "bad from",
        _req(BASE_HEADERS.replace(b"<sip:alice@example.com>", b"<sip:alice@example.com")),
        "missing '>'",
    ),
    ("bad to uri", _req(BASE_HEADERS.replace(b"To: <sip:bob@example.com>", b"To: <http://x>")), "scheme"),
    ("unterminated quote", _req(BASE_HEADERS.replace(b"From: ", b'From: "Alice ')), "unterminated quoted"),
    ("no end of headers", b"INVITE sip:a@b SIP/2.0\r\n" + BASE_HEADERS, "not terminated"),
    ("control char", _req(BASE_HEADERS + b"Subject: a\x07b\r\n"), "control character"),
    ("bare cr", _req(BASE_HEADERS + b"Subject: a\rb\r\n"), "control character"),
    ("empty call-id", _req(BASE_HEADERS.replace(b"Call-ID: c1@host", b"Call-ID:")), "bad Call-ID"),
    ("oversize", _req(BASE_HEADERS + b"X-Pad: " + b"p" * MAX_MESSAGE_BYTES + b"\r\n"), "message too large"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [(raw, frag) for _, raw, frag in BAD_CASES], ids=[name for name, _, _ in BAD_CASES]
)
def test_malformed(raw: bytes, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    text = str(info.value)
    assert fragment in text
    assert "\n" not in text and "\r" not in text and len(text) < 200


def test_error_message_escapes_input() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_req(BASE_HEADERS, start=b"INVITE sip:a@b SIP/2.0 \x1b[31mred" + b"A" * 500))
    text = str(info.value)
    assert "\x1b" not in text and len(text) < 200


def test_max_bytes_parameter() -> None:
    raw = _req(BASE_HEADERS)
    with pytest.raises(SipParseError, match=f"message too large: {len(raw)} bytes"):
        parse_message(raw, max_bytes=len(raw) - 1)
    assert parse_message(raw, max_bytes=len(raw))


def test_response_needs_required_headers_but_no_method_match() -> None:
    resp = parse_message(_req(BASE_HEADERS, start=b"SIP/2.0 481 Call/Transaction Does Not Exist"))
    assert isinstance(resp, SipResponse)
    assert resp.reason == "Call/Transaction Does Not Exist"
    assert parse_message(_req(BASE_HEADERS, start=b"SIP/2.0 200")).reason == ""  # type: ignore[union-attr]
    with pytest.raises(SipParseError, match="missing required header: To"):
        parse_message(
            _req(BASE_HEADERS.replace(b"To: <sip:bob@example.com>\r\n", b""), start=b"SIP/2.0 200 OK")
        )


def test_properties_raise_parse_error_when_missing() -> None:
    msg = SipRequest("OPTIONS", "sip:a@b")
    for attr in ("call_id", "cseq", "top_via", "from_addr", "to_addr"):
        with pytest.raises(SipParseError):
            getattr(msg, attr)


def test_contact_star_and_tel_request_uri() -> None:
    register = parse_message(
        _req(
            BASE_HEADERS.replace(b"CSeq: 1 INVITE", b"CSeq: 9 REGISTER") + b"Contact: *\r\nExpires: 0\r\n",
            start=b"REGISTER sip:registrar.example.com SIP/2.0",
        )
    )
    assert register.headers.get_all("Contact") == ["*"]
    call = parse_message(_req(BASE_HEADERS, start=b"INVITE tel:+15550100;phone-context=example.com SIP/2.0"))
    assert isinstance(call, SipRequest) and call.uri == "tel:+15550100;phone-context=example.com"
    with pytest.raises(SipParseError, match="bad Request-URI"):
        parse_message(_req(BASE_HEADERS, start=b"INVITE tel:\t1 SIP/2.0"))
