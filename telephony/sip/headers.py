"""SIP header fields: canonical names, the ordered :class:`Headers` multi-dict, Via and CSeq values."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final

from telephony.sip.grammar import (
    _CSEQ_RE,
    _VIA_RE,
    SipParseError,
    _excerpt,
    _find_param,
    _format_host,
    _format_params,
    _is_token,
    _parse_gen_params,
    _parse_host_port,
    _split_outside_quotes,
)

MAX_CSEQ: Final = 2**31 - 1


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
