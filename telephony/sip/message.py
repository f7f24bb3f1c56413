"""SIP messages (RFC 3261 subset), sans-IO: bytes in, dataclasses out, and back.

Nothing here touches a socket or a clock. ``parse_message`` turns one datagram (or one framed
stream message) into a :class:`SipRequest` or :class:`SipResponse`; ``serialize`` turns it back
into bytes with a correct Content-Length.

The parser is strict on purpose. It sits on a public UDP port, so every malformed input must end
in :class:`SipParseError` (and nothing else) with a short message that is safe to log. The header
fields the transaction layer keys on (Via, From, To, Call-ID, CSeq) are validated at parse time,
so a message that parses can always be answered or matched.

Header values are kept as the text the peer sent (after unfolding and list splitting), which is
why a parse -> serialize -> parse cycle reproduces every value exactly. Structured views
(:class:`SipUri`, :class:`Address`, :class:`Via`) are parsed on demand from that text.

The pieces live in their own modules (:mod:`telephony.sip.grammar`, :mod:`telephony.sip.headers`,
:mod:`telephony.sip.uri`); every name is re-exported here, so ``telephony.sip.message`` stays
the one import for users of the parser.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from telephony.sip.grammar import (
    _CTL_RE,
    _DIGITS_RE,
    _SCHEME_RE,
    _STATUS_RE,
    SipParseError,
    _excerpt,
    _is_token,
    _read_quoted,
)
from telephony.sip.headers import (
    _REQUIRED,
    _SINGLETONS,
    _SPLIT_HEADERS,
    Headers,
    Via,
    canonical_name,
    parse_cseq,
    parse_via,
)
from telephony.sip.headers import MAX_CSEQ as MAX_CSEQ  # re-exported
from telephony.sip.uri import Address, SipUri, parse_address, parse_uri

__all__ = [
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "Address",
    "Headers",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "Via",
    "canonical_name",
    "is_keepalive",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_address",
    "parse_cseq",
    "parse_message",
    "parse_uri",
    "parse_via",
    "serialize",
]

#: Larger than any sane UDP SIP message (RFC 3261 18.1.1 wants TCP above ~1300 bytes anyway).
MAX_MESSAGE_BYTES: Final = 16384

MAGIC_COOKIE: Final = "z9hG4bK"


# --- messages --------------------------------------------------------------------------------


class _MessageViews:
    """Typed views of the headers every request and response carries."""

    headers: Headers

    def _one(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    @property
    def call_id(self) -> str:
        return self._one("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self._one("CSeq"))

    @property
    def top_via(self) -> Via:
        return parse_via(self._one("Via"))

    @property
    def from_addr(self) -> Address:
        return parse_address(self._one("From"))

    @property
    def to_addr(self) -> Address:
        return parse_address(self._one("To"))


@dataclass
class SipRequest(_MessageViews):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""


@dataclass
class SipResponse(_MessageViews):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""


SipMessage = SipRequest | SipResponse


def is_keepalive(data: bytes) -> bool:
    """A CRLF or CRLFCRLF keep-alive (RFC 5626 4.4.1): nothing to parse and nothing to answer."""
    return bool(data) and len(data) <= 4 and not data.strip(b"\r\n")


def _split_list(value: str, name: str) -> list[str]:
    """Split a comma list, honouring quoted strings and <...>; empty elements are dropped."""
    parts: list[str] = []
    begin = 0
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"' and not in_angle:
            _, i = _read_quoted(value, i)
            continue
        if c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[begin:i])
            begin = i + 1
        i += 1
    if in_angle:
        raise SipParseError(f"unbalanced '<' in {name}: {_excerpt(value)}")
    parts.append(value[begin:])
    out = [p.strip(" \t") for p in parts if p.strip(" \t")]
    if not out:
        raise SipParseError(f"empty {name} header")
    return out


def _decode_line(line: bytes, index: int) -> str:
    where = "start line" if index == 0 else f"header line {index}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(f"invalid UTF-8 in {where}") from None
    if _CTL_RE.search(text):
        raise SipParseError(f"control character in {where}: {_excerpt(text)}")
    return text


def _parse_start_line(line: str) -> SipRequest | SipResponse:
    first = line.split(" ", 1)[0]
    if first.upper().startswith("SIP/"):
        parts = line.split(" ", 2)
        if first.upper() != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version: {_excerpt(first)}")
        if len(parts) < 2 or not _STATUS_RE.fullmatch(parts[1]):
            raise SipParseError(f"bad status line: {_excerpt(line)}")
        return SipResponse(int(parts[1]), parts[2] if len(parts) == 3 else "")
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"bad request line: {_excerpt(line)}")
    method, uri, version = parts
    if not _is_token(method):
        raise SipParseError(f"bad method: {_excerpt(method)}")
    if not version.upper().startswith("SIP/"):
        raise SipParseError(f"bad request line: {_excerpt(line)}")
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version: {_excerpt(version)}")
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest or not _SCHEME_RE.fullmatch(scheme) or "\t" in uri:
        raise SipParseError(f"bad Request-URI: {_excerpt(uri)}")
    if scheme.lower() in ("sip", "sips"):
        try:
            parse_uri(uri)
        except SipParseError as exc:
            raise SipParseError(f"bad Request-URI: {exc}") from None
    return SipRequest(method, uri)


def _split_header_section(data: bytes) -> tuple[list[bytes], bytes]:
    pos = 0
    n = len(data)
    # RFC 3261 7.5: CRLFs before the start line are ignored (stream keep-alive leftovers).
    while pos < n and data[pos] in b"\r\n":
        pos += 1
    if pos >= n:
        raise SipParseError("empty message")
    lines: list[bytes] = []
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise SipParseError("headers not terminated by an empty line")
        line = data[pos:nl]
        pos = nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return lines, data[pos:]
        lines.append(line)


def parse_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> SipMessage:
    """Parse one SIP message. Raises :class:`SipParseError` (only) when it is malformed."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise SipParseError(f"message too large: {len(data)} bytes")
    raw_lines, rest = _split_header_section(data)
    lines = [_decode_line(line, i) for i, line in enumerate(raw_lines)]
    msg = _parse_start_line(lines[0])

    fields: list[list[str]] = []
    for index, line in enumerate(lines[1:], start=1):
        if line[0] in " \t":
            # Folded continuation (RFC 3261 7.3.1): joined to the previous value by one space.
            if not fields:
                raise SipParseError("continuation line before the first header")
            extra = line.strip(" \t")
            if extra:
                prev = fields[-1][1]
                fields[-1][1] = f"{prev} {extra}" if prev else extra
            continue
        colon = line.find(":")
        if colon < 0:
            raise SipParseError(f"header line {index} without ':': {_excerpt(line)}")
        name = line[:colon].rstrip(" \t")
        if not name:
            raise SipParseError(f"empty header name on line {index}")
        if not _is_token(name):
            raise SipParseError(f"bad header name on line {index}: {_excerpt(name)}")
        fields.append([name, line[colon + 1 :].strip(" \t")])

    headers = msg.headers
    for name, value in fields:
        canon = canonical_name(name)
        if canon in _SPLIT_HEADERS and not (canon == "Contact" and value == "*"):
            for part in _split_list(value, canon):
                headers.add(canon, part)
        else:
            headers.add(canon, value)

    _validate(msg)
    msg.body = _take_body(headers, rest)
    return msg


def _validate(msg: SipMessage) -> None:
    headers = msg.headers
    for name in _REQUIRED:
        if name not in headers:
            raise SipParseError(f"missing required header: {name}")
    for name in _SINGLETONS:
        if len(headers.get_all(name)) > 1:
            raise SipParseError(f"duplicate {name} header")
    for via in headers.get_all("Via"):
        parse_via(via)
    msg.from_addr  # noqa: B018  # parsed for validation only
    msg.to_addr  # noqa: B018
    call_id = msg.call_id
    if not call_id or any(c in call_id for c in " \t"):
        raise SipParseError(f"bad Call-ID: {_excerpt(call_id)}")
    _, cseq_method = msg.cseq
    if isinstance(msg, SipRequest) and cseq_method != msg.method:
        raise SipParseError(
            f"CSeq method {_excerpt(cseq_method)} does not match request method {_excerpt(msg.method)}"
        )
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and (
        not _DIGITS_RE.fullmatch(max_forwards) or len(max_forwards) > 3 or int(max_forwards) > 255
    ):
        raise SipParseError(f"bad Max-Forwards: {_excerpt(max_forwards)}")


def _take_body(headers: Headers, rest: bytes) -> bytes:
    length_text = headers.get("Content-Length")
    if length_text is None:
        return rest  # datagram transports may omit it: the body is the rest of the packet
    if not _DIGITS_RE.fullmatch(length_text):
        raise SipParseError(f"bad Content-Length: {_excerpt(length_text)}")
    if len(length_text) > 10:
        raise SipParseError(f"Content-Length too large: {_excerpt(length_text)}")
    length = int(length_text)
    if length > len(rest):
        raise SipParseError(f"truncated body: Content-Length {length} but {len(rest)} bytes follow")
    return rest[:length]


def serialize(msg: SipMessage) -> bytes:
    """Bytes for the wire: CRLF line endings and a Content-Length that matches the body."""
    if isinstance(msg, SipRequest):
        start = f"{msg.method} {msg.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {msg.status:03d} {msg.reason}"
    if "\r" in start or "\n" in start:
        raise ValueError(f"CR or LF in start line: {_excerpt(start)}")
    body = bytes(msg.body)
    lines = [start]
    wrote_length = False
    for name, value in msg.headers.items():
        if name == "Content-Length":
            if wrote_length:
                continue
            value = str(len(body))
            wrote_length = True
        lines.append(f"{name}: {value}")
    if not wrote_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += ["", ""]
    return "\r\n".join(lines).encode("utf-8") + body


# --- identifiers -----------------------------------------------------------------------------


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie and 64 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


# --- responses -------------------------------------------------------------------------------

REASONS: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_CLASS_REASONS: Final = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """Build a response per RFC 3261 8.2.6.2: Via, From, To, Call-ID and CSeq copied from the request.

    Record-Route is copied for dialog-creating responses (101-299, RFC 3261 12.1.1).
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status out of range: {status}")
    if reason is None:
        reason = REASONS.get(status, _CLASS_REASONS[status // 100])
    out = Headers()
    src = request.headers
    for via in src.get_all("Via"):
        out.add("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = src.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and parse_address(value).tag is None:
            # Appending keeps the peer's exact To text, which it may compare byte for byte.
            value = f"{value};tag={to_tag}"
        out.add(name, value)
    if 100 < status < 300:
        for rr in src.get_all("Record-Route"):
            out.add("Record-Route", rr)
    for name, value in headers:
        out.add(name, value)
    if content_type is not None and "Content-Type" not in out:
        out.add("Content-Type", content_type)
    return SipResponse(status, reason, out, bytes(body))
