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
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Final

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

MAX_CSEQ: Final = 2**31 - 1
MAGIC_COOKIE: Final = "z9hG4bK"


class SipParseError(ValueError):
    """A malformed SIP message or header. ``str(err)`` is one short line, safe to log."""


def _excerpt(text: str | bytes, limit: int = 40) -> str:
    # ascii() escapes CR/LF and control bytes, so peer-controlled text can't forge log lines.
    out = ascii(text[:limit])
    if len(out) > 2 * limit:  # non-ASCII escapes can be ten times the width of the character
        return out[: 2 * limit] + "..."
    return out + "..." if len(text) > limit else out


# --- character classes (RFC 3261 25.1) -------------------------------------------------------

_ALNUM: Final = "A-Za-z0-9"
_MARK: Final = re.escape("-_.!~*'()")


def _charset(extra: str) -> re.Pattern[str]:
    return re.compile(f"[{_ALNUM}{_MARK}{re.escape(extra)}]*")


_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_USER_RE: Final = _charset("&=+$,;?/%")
_PASSWORD_RE: Final = _charset("&=+$,%")
_URI_PARAM_RE: Final = _charset("[]/:&+$%")
_URI_HEADER_RE: Final = _charset("[]/?:+$%")
# gen-value = token / host / quoted-string; host adds the IPv6 brackets and colons.
_GEN_VALUE_RE: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~\[\]:-]+")
_TEL_RE: Final = re.compile(r"[0-9a-fA-F*#+.()pPwW-]+")
_HOST_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")

_CTL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
_STATUS_RE: Final = re.compile(r"[1-6][0-9][0-9]")
_CSEQ_RE: Final = re.compile(r"[ \t]*([0-9]+)[ \t]+([A-Za-z0-9.!%*_+`'~-]+)[ \t]*")
_VIA_RE: Final = re.compile(
    r"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9.!%*_+`'~-]+)[ \t]+(.*)",
    re.IGNORECASE | re.DOTALL,
)
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


# --- header names ----------------------------------------------------------------------------

_COMPACT: Final[dict[str, str]] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "r": "Refer-To",
    "b": "Referred-By",
    "o": "Event",
    "u": "Allow-Events",
    "x": "Session-Expires",
}

# Only spellings that plain Title-Case would get wrong need to be listed, but listing the common
# ones keeps this table a readable inventory of what the stack expects to meet.
_WELL_KNOWN: Final[dict[str, str]] = {
    n.lower(): n
    for n in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Replaces",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "Session-Expires",
        "SIP-ETag",
        "SIP-If-Match",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}


@lru_cache(maxsize=1024)
def canonical_name(name: str) -> str:
    """Canonical spelling of a header name: compact forms expanded, case normalized."""
    key = name.lower()
    if len(key) == 1 and key in _COMPACT:
        return _COMPACT[key]
    known = _WELL_KNOWN.get(key)
    if known is not None:
        return known
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


# Headers whose comma-separated values are split into one stored value each, so that "the top
# Via" or "the first Route" is simply the first stored value however the peer packed them.
_SPLIT_HEADERS: Final = frozenset({"Via", "Route", "Record-Route", "Contact"})
# Fields that must appear at most once; two Content-Lengths in particular are a smuggling vector.
_SINGLETONS: Final = ("From", "To", "Call-ID", "CSeq", "Content-Length", "Max-Forwards", "Content-Type")
_REQUIRED: Final = ("Via", "From", "To", "Call-ID", "CSeq")


class Headers:
    """Ordered multi-dict of header fields; names are case-insensitive and stored canonically."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _check(name: str, value: str) -> str:
        if not _is_token(name):
            raise ValueError(f"invalid header name: {_excerpt(name)}")
        if "\r" in value or "\n" in value or "\x00" in value:
            # A CR/LF here would let a value inject extra header lines on the wire.
            raise ValueError(f"header value contains CR, LF or NUL: {_excerpt(value)}")
        return canonical_name(name)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical_name(name)
        for n, v in self._items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [v for n, v in self._items if n == key]

    def add(self, name: str, value: str) -> None:
        self._items.append((self._check(name, value), value))

    def prepend(self, name: str, value: str) -> None:
        key = self._check(name, value)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items.insert(i, (key, value))
                return
        self._items.insert(0, (key, value))

    def set(self, name: str, value: str) -> None:
        key = self._check(name, value)
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if n != key:
                out.append((n, v))
            elif not placed:
                out.append((key, value))
                placed = True
        if not placed:
            out.append((key, value))
        self._items = out

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        self._items = [(n, v) for n, v in self._items if n != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        return any(n == key for n, _ in self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# --- URIs ------------------------------------------------------------------------------------


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_port(text: str, where: str) -> int:
    if not _DIGITS_RE.fullmatch(text) or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"bad port in {where}: {_excerpt(text)}")
    return int(text)


def _parse_host_port(text: str, where: str) -> tuple[str, int | None]:
    """host [":" port] with IPv6 references in brackets; the host comes back without brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {where}: {_excerpt(text)}")
        inner = text[1:end]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise SipParseError(f"bad IPv6 address in {where}: {_excerpt(inner)}") from None
        rest = text[end + 1 :]
        if not rest:
            return inner, None
        if not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 reference in {where}: {_excerpt(rest)}")
        return inner, _parse_port(rest[1:], where)
    host, sep, port_text = text.partition(":")
    _check_hostname(host, where)
    return host, (_parse_port(port_text, where) if sep else None)


def _check_hostname(host: str, where: str) -> None:
    labels = host.split(".")
    if labels and labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]  # a fully qualified name may end in a dot
    for label in labels:
        if _HOST_LABEL_RE.fullmatch(label) is None:
            raise SipParseError(f"bad host in {where}: {_excerpt(host)}")


def _check_chars(text: str, allowed: re.Pattern[str], what: str) -> None:
    if allowed.fullmatch(text) is None or _BAD_ESCAPE_RE.search(text):
        raise SipParseError(f"bad {what}: {_excerpt(text)}")


@dataclass(frozen=True)
class SipUri:
    """A sip:/sips: URI (or a minimal tel: URI, whose number is in ``user`` and host is "").

    ``user`` and ``password`` keep any %-escapes as written, so ``str()`` reproduces the input;
    :attr:`user_text` gives the unescaped form. ``host`` never carries IPv6 brackets.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    password: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of a URI parameter ("" for a flag like ``lr``), or None when absent."""
        key = name.lower()
        for n, v in self.params:
            if n.lower() == key:
                return "" if v is None else v
        return None

    def has_param(self, name: str) -> bool:
        key = name.lower()
        return any(n.lower() == key for n, _ in self.params)

    @property
    def user_text(self) -> str | None:
        return None if self.user is None else _unescape(self.user)

    def host_port(self, default_port: int = 5060) -> tuple[str, int]:
        if self.scheme == "tel":
            raise SipParseError("tel: URI has no host")
        return self.host, (default_port if self.port is None else self.port)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.scheme == "tel":
            out.append(self.user or "")
        else:
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out += [":", self.password]
                out.append("@")
            out.append(_format_host(self.host))
            if self.port is not None:
                out += [":", str(self.port)]
        out += [f";{n}" if v is None else f";{n}={v}" for n, v in self.params]
        if self.headers:
            out += ["?", "&".join(f"{n}={v}" for n, v in self.headers)]
        return "".join(out)


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    raw = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    # Escapes encode UTF-8 octets; go through latin-1 to get the bytes back.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _parse_uri_params(segments: list[str], where: str) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for seg in segments:
        name, sep, value = seg.partition("=")
        if not name:
            raise SipParseError(f"empty parameter name in {where}")
        _check_chars(name, _URI_PARAM_RE, f"parameter name in {where}")
        if sep:
            _check_chars(value, _URI_PARAM_RE, f"parameter value in {where}")
        out.append((name, value if sep else None))
    return tuple(out)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips: or tel: URI. Anything else raises :class:`SipParseError`."""
    if not text or _CTL_RE.search(text) or any(c in text for c in ' \t<>"\\{}|^`'):
        raise SipParseError(f"bad URI: {_excerpt(text)}")
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        raise SipParseError(f"URI without scheme: {_excerpt(text)}")
    if scheme == "tel":
        number, *param_segs = rest.split(";")
        if not number:
            raise SipParseError("tel: URI without a number")
        _check_chars(number, _TEL_RE, "tel: number")
        return SipUri("tel", number, "", params=_parse_uri_params(param_segs, "URI"))
    if scheme not in ("sip", "sips"):
        raise SipParseError(f"unsupported URI scheme: {_excerpt(scheme)}")

    user: str | None = None
    password: str | None = None
    if "@" in rest:
        # '@' is never legal unescaped after the userinfo, so a second one is an error, not a guess.
        if rest.count("@") > 1:
            raise SipParseError(f"more than one '@' in URI: {_excerpt(text)}")
        userinfo, _, rest = rest.partition("@")
        user, psep, pw = userinfo.partition(":")
        if not user:
            raise SipParseError(f"empty user in URI: {_excerpt(text)}")
        _check_chars(user, _USER_RE, "URI user")
        if psep:
            _check_chars(pw, _PASSWORD_RE, "URI password")
            password = pw

    rest, qsep, header_text = rest.partition("?")
    hostport, *param_segs = rest.split(";")
    if not hostport:
        raise SipParseError(f"URI without host: {_excerpt(text)}")
    host, port = _parse_host_port(hostport, "URI")
    params = _parse_uri_params(param_segs, "URI")
    headers: list[tuple[str, str]] = []
    if qsep:
        for part in header_text.split("&"):
            name, hsep, value = part.partition("=")
            if not name or not hsep:
                raise SipParseError(f"bad URI header: {_excerpt(part)}")
            _check_chars(name, _URI_HEADER_RE, "URI header name")
            _check_chars(value, _URI_HEADER_RE, "URI header value")
            headers.append((name, value))
    return SipUri(scheme, user, host, port, password, params, tuple(headers))


# --- generic header parameters (";name=value" lists in Via, From, To, Contact ...) ----------


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string at ``text[start] == '"'``; return (unescaped content, index after)."""
    i = start + 1
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise SipParseError(f"unterminated quoted string: {_excerpt(text[start:])}")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    i = 0
    begin = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            _, i = _read_quoted(text, i)
            continue
        if c == sep:
            parts.append(text[begin:i])
            begin = i + 1
        i += 1
    parts.append(text[begin:])
    return parts


def _parse_gen_params(segments: list[str], where: str) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for seg in segments:
        name, sep, value = seg.partition("=")
        name = name.strip(" \t")
        value = value.strip(" \t")
        if not _is_token(name):
            raise SipParseError(f"bad parameter name in {where}: {_excerpt(name)}")
        if sep:
            if value.startswith('"'):
                _, end = _read_quoted(value, 0)
                if end != len(value):
                    raise SipParseError(f"junk after quoted parameter in {where}: {_excerpt(value)}")
            elif _GEN_VALUE_RE.fullmatch(value) is None:
                raise SipParseError(f"bad parameter value in {where}: {_excerpt(value)}")
        out.append((name, value if sep else None))
    return tuple(out)


def _find_param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    key = name.lower()
    for n, v in params:
        if n.lower() == key:
            return "" if v is None else v
    return None


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


# --- name-addr / addr-spec -------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A From/To/Contact/Route value: URI, optional display name, header parameters."""

    uri: SipUri
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return _find_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def with_tag(self, tag: str) -> Address:
        kept = tuple((n, v) for n, v in self.params if n.lower() != "tag")
        return replace(self, params=(*kept, ("tag", tag)))

    def __str__(self) -> str:
        out = f"<{self.uri}>{_format_params(self.params)}"
        if self.display is None:
            return out
        quoted = self.display.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" {out}'


def parse_address(text: str) -> Address:
    """Parse ``"Display" <uri;uri-params>;hdr-params``, ``Name <uri>`` or a bare addr-spec.

    In a bare addr-spec every ``;param`` belongs to the header, not the URI (RFC 3261 20.10).
    """
    s = text.strip(" \t")
    if not s:
        raise SipParseError("empty address")
    display: str | None = None
    if s.startswith('"'):
        display, end = _read_quoted(s, 0)
        rest = s[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError(f"expected '<' after display name: {_excerpt(text)}")
    else:
        lt = s.find("<")
        if lt < 0:
            uri_text, *param_segs = _split_outside_quotes(s, ";")
            uri = parse_uri(uri_text.strip(" \t"))
            return Address(uri, None, _parse_gen_params(param_segs, "address"))
        token_display = s[:lt].strip(" \t")
        if any(c in token_display for c in '"<>'):
            raise SipParseError(f"bad display name: {_excerpt(token_display)}")
        display = token_display or None
        rest = s[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise SipParseError(f"missing '>' in address: {_excerpt(text)}")
    uri = parse_uri(rest[1:gt])
    tail = rest[gt + 1 :].strip(" \t")
    if tail and not tail.startswith(";"):
        raise SipParseError(f"junk after address: {_excerpt(tail)}")
    param_segs = _split_outside_quotes(tail, ";")[1:] if tail else []
    return Address(uri, display, _parse_gen_params(param_segs, "address"))


# --- Via -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Via:
    """One Via value: ``SIP/2.0/<transport> host[:port];params``. ``transport`` is upper case."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return _find_param(self.params, "branch")

    def param(self, name: str) -> str | None:
        """Value of a parameter ("" for a flag like a bare ``rport``), or None when absent."""
        return _find_param(self.params, name)

    def with_params(self, **kv: str | None) -> Via:
        """Set parameters in place (or append them); a None value writes a flag like ``;rport``."""
        todo = dict(kv)
        out: list[tuple[str, str | None]] = []
        for n, v in self.params:
            key = next((k for k in todo if k.lower() == n.lower()), None)
            if key is None:
                out.append((n, v))
            else:
                out.append((n, todo.pop(key)))
        out += list(todo.items())
        return replace(self, params=tuple(out))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {_format_host(self.host)}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    m = _VIA_RE.fullmatch(text)
    if m is None:
        raise SipParseError(f"bad Via: {_excerpt(text)}")
    transport, rest = m.group(1).upper(), m.group(2)
    sent_by, *param_segs = _split_outside_quotes(rest, ";")
    sent_by = sent_by.strip(" \t")
    if not sent_by:
        raise SipParseError(f"Via without sent-by: {_excerpt(text)}")
    host, port = _parse_host_port(sent_by, "Via")
    return Via(transport, host, port, _parse_gen_params(param_segs, "Via"))


def parse_cseq(text: str) -> tuple[int, str]:
    m = _CSEQ_RE.fullmatch(text)
    if m is None:
        raise SipParseError(f"bad CSeq: {_excerpt(text)}")
    digits = m.group(1)
    if len(digits) > 10 or int(digits) > MAX_CSEQ:
        raise SipParseError(f"CSeq number out of range: {_excerpt(digits)}")
    return int(digits), m.group(2)


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
