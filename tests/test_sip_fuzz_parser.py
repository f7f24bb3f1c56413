"""Property and mutation fuzzing of the SIP parser.

Two properties, over hypothesis-generated and mutated messages:

* ``parse_message`` returns a SipRequest/SipResponse or raises SipParseError, never anything else,
  and the error text is one line;
* whatever parses survives serialize -> parse with the same start line, header values and body,
  and serializing again gives the same bytes.

The example total is counted and asserted in the last test, so a run proves the figure (``-s``
prints it).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_message,
    serialize,
)

EXAMPLES: Counter[str] = Counter()
MIN_TOTAL_EXAMPLES = 10_000

_FUZZ_BASE = settings(
    deadline=None,
    derandomize=False,
    database=None,  # keep runs from leaving a .hypothesis/ folder in the shared tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(max_examples: int) -> settings:
    return settings(_FUZZ_BASE, max_examples=max_examples)


_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n"
)

SEEDS: list[bytes] = [
    b"INVITE sip:bot@10.0.0.2:5080;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1a2b3c;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice, A." <sip:alice@example.com>;tag=77aa\r\n'
    b"To: <sip:bot@10.0.0.2:5080>\r\n"
    b"Call-ID: 5f1e2d3c@10.0.0.9\r\n"
    b"CSeq: 101 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.9:5060>;expires=3600\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n\r\n" + _SDP,
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1;received=192.0.2.1, "
    b"SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bKx\r\n"
    b"Record-Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"To: Bob <sip:bob@example.com>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"REGISTER sips:registrar.example.com SIP/2.0\n"
    b"v: SIP/2.0/TLS 10.1.1.1:5061;branch=z9hG4bKreg\n"
    b"f: <sips:1001@example.com>;tag=r1\n"
    b"t: <sips:1001@example.com>\n"
    b"i: reg-1@10.1.1.1\n"
    b"CSeq: 2 REGISTER\n"
    b'Authorization: Digest username="1001", realm="example.com", nonce="abc",\n'
    b' uri="sips:registrar.example.com",\n response="0123456789abcdef0123456789abcdef", algorithm=MD5\n'
    b"m: <sips:1001@10.1.1.1:5061;transport=tls>;expires=600\n"
    b"l: 0\n\n",
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKreg\r\n"
    b"From: <sip:1001@example.com>;tag=r1\r\n"
    b"To: <sip:1001@example.com>;tag=srv\r\n"
    b"Call-ID: reg-1@10.1.1.1\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="example.com", nonce="n0n", qop="auth", algorithm=MD5\r\n'
    b"\r\n",
    b"BYE sip:alice@10.0.0.9:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5080;branch=z9hG4bKbye\r\n"
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"From: <sip:bot@10.0.0.2:5080>;tag=b0t\r\n"
    b'To: "Alice" <sip:alice@example.com>;tag=77aa\r\n'
    b"Call-ID: 5f1e2d3c@10.0.0.9\r\n"
    b"CSeq: 1 BYE\r\n"
    b"X-Unknown-Header: something; with=params, and, commas\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"NOTIFY sip:alice@h SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP h;branch=z9hG4bKn\r\n"
    b"From: sip:srv@h;tag=s\r\n"
    b"To: sip:alice@h;tag=a\r\n"
    b"Call-ID: n@h\r\n"
    b"CSeq: 3 NOTIFY\r\n"
    b"o: refer\r\n"
    b"Subscription-State: active;expires=60\r\n"
    b"c: message/sipfrag\r\n"
    b"\r\n"
    b"SIP/2.0 200 OK\r\n",
]

_INTERESTING = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n ",
    b"\r\n\r\n",
    b":",
    b",",
    b";",
    b'"',
    b"\\",
    b"<",
    b">",
    b"@",
    b"%",
    b"%zz",
    b"[",
    b"]",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xe2\x82\xac",
    b"=",
    b"?",
    b"&",
    b"SIP/2.0",
    b"sip:",
    b"-1",
    b"99999999999999999999",
    b"Content-Length: 5",
    b"l: 1000",
    b"Via: ",
    b"CSeq: 1 INVITE",
]

_HEADER_NAMES = [
    "Via",
    "v",
    "From",
    "f",
    "To",
    "t",
    "Call-ID",
    "i",
    "CSeq",
    "Content-Length",
    "l",
    "Contact",
    "m",
    "Route",
    "Record-Route",
    "Max-Forwards",
    "Content-Type",
    "Subject",
    "X-Fuzz",
]


def _count(name: str) -> None:
    EXAMPLES[name] += 1


def _without_length(headers: Headers) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers.items() if n != "Content-Length"]


def check(data: bytes) -> SipRequest | SipResponse | None:
    """The fuzz oracle. Returns the parsed message, or None if it was rejected (correctly)."""
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        text = str(exc)
        assert text and "\n" not in text and "\r" not in text and len(text) < 300, text
        return None
    assert isinstance(msg, SipRequest | SipResponse)
    wire = serialize(msg)
    # The wire form can outgrow the input (LF -> CRLF, added Content-Length), so lift the limit.
    again = parse_message(wire, max_bytes=len(wire))
    assert type(again) is type(msg)
    if isinstance(msg, SipRequest):
        assert isinstance(again, SipRequest)
        assert (again.method, again.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(again, SipResponse)
        assert (again.status, again.reason) == (msg.status, msg.reason)
    assert _without_length(again.headers) == _without_length(msg.headers)
    assert again.headers.get_all("Content-Length") == [str(len(msg.body))]
    assert again.body == msg.body
    assert serialize(again) == wire
    # The typed views must work on anything the parser accepted.
    assert again.call_id == msg.call_id
    assert again.cseq == msg.cseq
    assert again.top_via == msg.top_via
    assert again.from_addr == msg.from_addr and again.to_addr == msg.to_addr
    return msg


# --- mutation of valid fixtures ---------------------------------------------------------------

_pos = st.integers(min_value=0, max_value=1 << 16)
_mutation = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(min_value=1, max_value=255)),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("special"), _pos, st.sampled_from(_INTERESTING)),
    st.tuples(st.just("delete"), _pos, st.integers(min_value=1, max_value=16)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("swap_lines"), _pos, _pos),
    st.tuples(st.just("dup_line"), _pos),
    st.tuples(st.just("drop_line"), _pos),
    st.tuples(st.just("fold"), _pos, _pos),
    st.tuples(st.just("header_value"), _pos, st.text(max_size=30)),
    st.tuples(
        st.just("add_header"),
        _pos,
        st.sampled_from(_HEADER_NAMES) | st.text(max_size=10),
        st.text(max_size=30),
    ),
    st.tuples(
        st.just("content_length"),
        st.integers(min_value=-10, max_value=10**12).map(str) | st.text(max_size=6),
    ),
    st.tuples(st.just("lf_only")),
)


def _head_and_body(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    return head.split(b"\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\n".join(lines) + b"\r\n\r\n" + body


def mutate(data: bytes, op: tuple) -> bytes:  # type: ignore[type-arg]
    kind = op[0]
    n = max(len(data), 1)
    if kind == "flip":
        i = op[1] % n
        return data[:i] + bytes([data[i] ^ op[2]]) + data[i + 1 :] if data else data
    if kind in ("insert", "special"):
        i = op[1] % (len(data) + 1)
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = op[1] % n
        return data[:i] + data[i + op[2] :]
    if kind == "truncate":
        return data[: op[1] % n]
    if kind == "lf_only":
        return data.replace(b"\r\n", b"\n")
    if kind == "content_length":
        if re.search(rb"(?im)^(content-length|l)[ \t]*:", data):
            return re.sub(
                rb"(?im)^((?:content-length|l)[ \t]*:)[^\r\n]*",
                lambda m: m.group(1) + b" " + op[1].encode(),
                data,
            )
        lines, body = _head_and_body(data)
        return _join([*lines, b"Content-Length: " + op[1].encode()], body)
    lines, body = _head_and_body(data)
    if not lines:
        return data
    k = len(lines)
    if kind == "swap_lines":
        i, j = op[1] % k, op[2] % k
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "dup_line":
        i = op[1] % k
        lines.insert(i, lines[i])
    elif kind == "drop_line":
        del lines[op[1] % k]
    elif kind == "fold":
        i = op[1] % k
        j = op[2] % (len(lines[i]) + 1)
        lines[i] = lines[i][:j] + b"\r\n " + lines[i][j:]
    elif kind == "header_value":
        i = op[1] % k
        name, sep, _ = lines[i].partition(b":")
        if sep:
            lines[i] = name + b": " + op[2].encode()
    elif kind == "add_header":
        lines.insert(1 + op[1] % k, op[2].encode() + b": " + op[3].encode())
    return _join(lines, body)


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        assert check(seed) is not None


@fuzz(4500)
@given(seed=st.sampled_from(SEEDS), ops=st.lists(_mutation, min_size=1, max_size=5))
def test_mutated_fixtures(seed: bytes, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    _count("mutated")
    data = seed
    for op in ops:
        data = mutate(data, op)
    check(data)


# --- generated messages ----------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
_label = st.text(alphabet="abcxyz0189-", min_size=1, max_size=8).map(lambda s: s.strip("-") or "h")
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[2001:db8::7]", "[fe80::1:2]"]),
)
_port = st.none() | st.integers(min_value=0, max_value=65535)
_user = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
_uri_param = st.tuples(
    st.text(alphabet="abcdefxyz019-", min_size=1, max_size=6),
    st.none()
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/:&+$", min_size=1, max_size=8),
)


# Printable ASCII plus a few multi-byte characters; sampling a fixed alphabet is much cheaper for
# hypothesis than st.characters() with category filters.
_PRINTABLE: Final = "".join(chr(c) for c in range(0x20, 0x7F)) + "\téß€漢😀"
_display_text = st.text(alphabet=_PRINTABLE.replace("\t", ""), max_size=15)
_free_value = st.text(alphabet=_PRINTABLE, max_size=40).map(lambda s: s.strip(" \t"))

# Strategies are built once at import: building them inside @composite functions costs hypothesis
# a re-validation on every draw, which made generation several times slower than parsing.
_scheme = st.sampled_from(["sip", "sips", "SIP"])
_opt_user = st.none() | _user
_uri_params = st.lists(_uri_param, max_size=3)
_opt_token = st.none() | _token
_form = st.integers(0, 2)
_plain_user = st.text(alphabet="abcdefghij0123456789-_.!~*'()&=+$", min_size=1, max_size=8)
_transport = st.sampled_from(["UDP", "TCP", "TLS", "ws", "SCTP"])
_via_params = st.lists(st.tuples(_token, _opt_token), max_size=2)
_method = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO"]) | _token
_cseq_n = st.integers(min_value=0, max_value=2**31 - 1)
_call_id_host = st.sampled_from(["", "@host", "@10.0.0.1"])
_names = {
    canon: st.sampled_from(spellings)
    for canon, spellings in {
        "Via": ["Via", "v", "VIA"],
        "From": ["From", "f", "from"],
        "To": ["To", "t", "tO"],
        "Call-ID": ["Call-ID", "i", "call-id"],
        "CSeq": ["CSeq", "cseq"],
        "Content-Length": ["Content-Length", "l"],
    }.items()
}
_RESERVED: Final = frozenset(
    {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "content-length", "l", "max-forwards"}
    | {"contact", "m", "route", "record-route", "content-type", "c"}
)
_extras = st.lists(
    st.tuples(st.sampled_from(["X-A", "Subject", "User-Agent", "s"]) | _token, _free_value), max_size=4
)
_opt_max_forwards = st.none() | st.integers(0, 255)
_body = st.binary(max_size=64)
_length_mode = st.sampled_from(["exact", "absent", "shorter"])
_status = st.integers(min_value=100, max_value=699)
_eol = st.sampled_from(["\r\n", "\n"])


def _format_params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    user = draw(_opt_user)
    port = draw(_port)
    out = draw(_scheme) + ":" + ("" if user is None else f"{user}@") + draw(_host)
    return out + ("" if port is None else f":{port}") + _format_params(draw(_uri_params))


_sip_uri = sip_uris()


@st.composite
def addresses(draw: st.DrawFn) -> str:
    tag = draw(_opt_token)
    tail = "" if tag is None else f";tag={tag}"
    form = draw(_form)
    if form == 0:
        display = draw(_display_text).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{display}" <{draw(_sip_uri)}>{tail}'
    if form == 1:
        return f"<{draw(_sip_uri)}>{tail}"
    # RFC 3261 20.10: an addr-spec may not hold ';', ',' or '?', so draw a plain one.
    return f"sip:{draw(_plain_user)}@{draw(_host)}{tail}"


_address = addresses()


@st.composite
def vias(draw: st.DrawFn) -> str:
    port = draw(_port)
    params = [("branch", "z9hG4bK" + draw(_token)), *draw(_via_params)]
    sent_by = draw(_host) + ("" if port is None else f":{port}")
    return f"SIP/2.0/{draw(_transport)} {sent_by}{_format_params(params)}"


_vias = st.lists(vias(), min_size=1, max_size=3)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A well-formed message plus the facts the parser must report for it."""
    method = draw(_method)
    cseq_n = draw(_cseq_n)
    via_values = draw(_vias)
    call_id = draw(_token) + draw(_call_id_host)
    fields: list[tuple[str, str]] = [
        (draw(_names["Via"]), ", ".join(via_values)),
        (draw(_names["From"]), draw(_address)),
        (draw(_names["To"]), draw(_address)),
        (draw(_names["Call-ID"]), call_id),
        (draw(_names["CSeq"]), f"{cseq_n} {method}"),
    ]
    fields += [(n, v) for n, v in draw(_extras) if n.lower() not in _RESERVED]
    fields = draw(st.permutations(fields))
    max_forwards = draw(_opt_max_forwards)
    if max_forwards is not None:
        fields.append(("Max-Forwards", str(max_forwards)))
    body = draw(_body)
    length_mode = draw(_length_mode)
    if length_mode == "exact":
        fields.append((draw(_names["Content-Length"]), str(len(body))))
    elif length_mode == "shorter":
        fields.append(("Content-Length", str(len(body) // 2)))
    expected_body = body if length_mode != "shorter" else body[: len(body) // 2]
    facts: dict[str, object]
    if draw(st.booleans()):
        uri = draw(_sip_uri)
        start = f"{method} {uri} SIP/2.0"
        facts = {"method": method, "uri": uri}
    else:
        status, reason = draw(_status), draw(_free_value)
        start = f"SIP/2.0 {status} {reason}"
        facts = {"status": status, "reason": reason}
    eol = draw(_eol)
    head = eol.join([start, *(f"{n}: {v}" for n, v in fields)]) + eol + eol
    facts.update(call_id=call_id, cseq=(cseq_n, method), vias=len(via_values), body=expected_body)
    return head.encode() + body, facts


_valid_message = valid_messages()


@fuzz(1300)
@given(case=_valid_message)
def test_generated_valid_messages(case: tuple[bytes, dict[str, object]]) -> None:
    _count("generated_valid")
    data, facts = case
    msg = check(data)
    assert msg is not None, data
    if isinstance(msg, SipRequest):
        assert (msg.method, msg.uri) == (facts["method"], facts["uri"])
    else:
        assert (msg.status, msg.reason) == (facts["status"], facts["reason"])
    assert msg.call_id == facts["call_id"]
    assert msg.cseq == facts["cseq"]
    assert len(msg.headers.get_all("Via")) == facts["vias"]
    assert msg.body == facts["body"]


@fuzz(900)
@given(case=_valid_message, ops=st.lists(_mutation, min_size=1, max_size=3))
def test_generated_then_mutated(case: tuple[bytes, dict[str, object]], ops: list[tuple]) -> None:  # type: ignore[type-arg]
    _count("generated_mutated")
    data = case[0]
    for op in ops:
        data = mutate(data, op)
    check(data)


_soup_start = st.sampled_from(
    [b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 180 Ringing", b"BYE sips:[::1]:5061 SIP/2.0"]
) | st.binary(max_size=40)
_soup_name = st.sampled_from([n.encode() for n in _HEADER_NAMES]) | st.binary(max_size=12)
_soup_value = st.sampled_from(
    [b"SIP/2.0/UDP h;branch=z9hG4bKq", b"<sip:x@y>;tag=1", b"1 INVITE", b"0", b"c@d"]
) | st.binary(max_size=40)
_soup_lines = st.lists(st.tuples(_soup_name, _soup_value), max_size=12)
_soup_eol = st.sampled_from([b"\r\n", b"\n"])
_soup_body = st.binary(max_size=40)


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    """A plausible start line, then random header lines with random names, values and lengths."""
    start = draw(_soup_start)
    lines = draw(_soup_lines)
    eol = draw(_soup_eol)
    return eol.join([start, *(n + b":" + v for n, v in lines)]) + eol + eol + draw(_soup_body)


_header_soup = header_soup()


@fuzz(1500)
@given(data=_header_soup)
def test_header_soup(data: bytes) -> None:
    _count("header_soup")
    check(data)


@fuzz(2300)
@given(data=st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _count("random_bytes")
    check(data)


def test_zz_example_count() -> None:
    """Runs last (file order): proves how many examples the fuzz tests above went through."""
    total = sum(EXAMPLES.values())
    print(f"\nSIP parser fuzz examples: {total} ({dict(EXAMPLES)})")
    if set(EXAMPLES) != {"mutated", "generated_valid", "generated_mutated", "header_soup", "random_bytes"}:
        return  # run with -k or alone: nothing to prove
    assert total >= MIN_TOTAL_EXAMPLES, dict(EXAMPLES)
