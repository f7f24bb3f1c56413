"""Hand-written SIP requests over UDP, as a phone, sipp or a fuzzer would put them on the wire.

One builder for every test that writes SIP by hand (the raw-socket e2e tests and the sans-IO agent
tests), so a request always has the same shape:

    Request-Line
    Via: SIP/2.0/UDP <sent_by>;branch=<branch>[;rport]
    Max-Forwards: 70
    From: ["<from_name>"] <from_uri>;tag=<from_tag>
    To: <to_uri>[;tag=<to_tag>]
    Call-ID, CSeq: <cseq> <cseq_method or method>
    [Contact: <contact>]
    ...extra headers, in the order given...
    [Content-Type]  Content-Length  (always; counted in bytes)

Example::

    data = sip_request(
        "OPTIONS", "sip:bot@127.0.0.1:5060",
        sent_by="127.0.0.3:40000", from_uri="sip:tester@127.0.0.3", call_id=new_call_id(),
        headers=["Accept: application/sdp"],
    )
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

#: RFC 3261's magic cookie: every branch a compliant UA makes starts with it.
BRANCH_COOKIE = "z9hG4bK"

Header = str | tuple[str, str]


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 16 hex digits."""
    return BRANCH_COOKIE + uuid.uuid4().hex[:16]


def new_tag() -> str:
    """A fresh From/To tag (10 hex digits)."""
    return uuid.uuid4().hex[:10]


def new_call_id(host: str | None = None) -> str:
    """A fresh Call-ID, ``<hex>`` or ``<hex>@host``."""
    return uuid.uuid4().hex + (f"@{host}" if host else "")


def sip_request(
    method: str,
    uri: str,
    *,
    sent_by: str,
    from_uri: str,
    call_id: str,
    from_tag: str | None = None,
    from_name: str | None = None,
    to_uri: str | None = None,
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    branch: str | None = None,
    rport: bool = True,
    max_forwards: int | None = 70,
    contact: str | None = None,
    headers: Iterable[Header] = (),
    body: bytes | str = b"",
    content_type: str = "application/sdp",
) -> bytes:
    """One SIP request as wire bytes (CRLF line ends, blank line, body).

    ``uri``: the Request-URI. ``sent_by``: the Via's "host:port". ``from_uri``/``to_uri``: the bare
    URIs of From and To (written in angle brackets); To defaults to the Request-URI. ``from_tag``:
    a fresh one when None. ``to_tag``: only in-dialog requests have one. ``cseq_method``: the CSeq
    method when it differs from ``method`` (a broken request, on purpose). ``branch``: a fresh one
    when None; ``rport`` adds RFC 3581's ``;rport`` to the Via. ``max_forwards``: None leaves the
    header out. ``contact``: a bare URI, written in angle brackets, or None for no Contact.
    ``headers``: extra headers, as "Name: value" lines or (name, value) pairs, after Contact.
    ``body``: str bodies are UTF-8; a non-empty body gets ``Content-Type: content_type``.
    """
    via = f"SIP/2.0/UDP {sent_by};branch={branch or new_branch()}" + (";rport" if rport else "")
    name = f'"{from_name}" ' if from_name else ""
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: {name}<{from_uri}>;tag={from_tag or new_tag()}",
        f"To: <{to_uri or uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact is not None:
        lines.append(f"Contact: <{contact}>")
    lines += [header if isinstance(header, str) else f"{header[0]}: {header[1]}" for header in headers]
    payload = body.encode() if isinstance(body, str) else body
    if payload:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def sdp_offer(
    host: str,
    rtp_port: int,
    *,
    formats: str = "0 101",
    rtpmaps: Iterable[str] = ("0 PCMU/8000", "101 telephone-event/8000"),
    direction: str = "sendrecv",
    user: str = "tester",
) -> str:
    """A one-stream audio SDP offer from ``host``, receiving RTP on ``rtp_port``.

    ``formats``: the m= line's payload types; ``rtpmaps``: "pt encoding/rate" per a=rtpmap line."""
    lines = [
        "v=0",
        f"o={user} 1 1 IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {rtp_port} RTP/AVP {formats}",
        *(f"a=rtpmap:{m}" for m in rtpmaps),
        f"a={direction}",
    ]
    return "\r\n".join(lines) + "\r\n"
