"""SIP URIs (sip:, sips:, minimal tel:) and name-addr / addr-spec values (From, To, Contact, Route)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from telephony.sip.grammar import (
    _CTL_RE,
    _PASSWORD_RE,
    _SCHEME_RE,
    _TEL_RE,
    _URI_HEADER_RE,
    _URI_PARAM_RE,
    _USER_RE,
    SipParseError,
    _check_chars,
    _excerpt,
    _find_param,
    _format_host,
    _format_params,
    _parse_gen_params,
    _parse_host_port,
    _read_quoted,
    _split_outside_quotes,
)

# --- URIs ------------------------------------------------------------------------------------


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
