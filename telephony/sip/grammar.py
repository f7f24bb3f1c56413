"""SIP lexical grammar (RFC 3261 25.1) shared by the parsers of URIs, header fields and messages.

The parse error every malformed input ends in, the character classes, tokens, quoted strings,
generic ``;name=value`` parameters, and ``host[:port]``. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final


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


# --- hosts and ports -----------------------------------------------------------------------


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
