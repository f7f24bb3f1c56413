"""HTTP Digest authentication for SIP (RFC 2617, RFC 7616 algorithms, RFC 3261 22.4).

The client side answers a 401/407 challenge (``WWW-Authenticate`` / ``Proxy-Authenticate``) with
an ``Authorization`` / ``Proxy-Authorization`` value. The server-side check exists so tests (and
a test registrar) can verify what the client produced without trusting the same code path: it
re-parses the header text rather than reusing the client's inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from telephony.sip.message import SipParseError

__all__ = ["Challenge", "authorization", "check_authorization", "parse_challenge"]

# Canonical spelling per RFC 7616 3.3; lookups are case-insensitive.
_ALGORITHMS: Final[dict[str, str]] = {a.upper(): a for a in ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")}
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
# Unquoted values are tokens in the grammar, but nonces and opaques sent bare often contain
# base64 characters; accept anything up to the next separator.
_BARE_VALUE_RE: Final = re.compile(r"[^\s,\"]+")
_SCHEME_RE: Final = re.compile(r"[ \t]*([A-Za-z0-9.!%*_+`'~-]+)(?:[ \t]+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def _parse_params(text: str) -> dict[str, str]:
    """``name=value`` pairs separated by commas; values are tokens or quoted strings."""
    out: dict[str, str] = {}
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return out
        m = _TOKEN_RE.match(text, i)
        if m is None:
            raise SipParseError(f"bad auth parameter at {text[i : i + 20]!a}")
        name = m.group(0).lower()
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise SipParseError(f"auth parameter {name[:20]!a} without value")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise SipParseError("unterminated quoted string in auth header")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
        else:
            vm = _BARE_VALUE_RE.match(text, i)
            if vm is None:
                raise SipParseError(f"auth parameter {name[:20]!a} without value")
            value = vm.group(0)
            i = vm.end()
        out.setdefault(name, value)  # a repeated parameter must not override the first
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            raise SipParseError(f"junk after auth parameter {name[:20]!a}")


def _parse_digest(value: str) -> dict[str, str]:
    m = _SCHEME_RE.fullmatch(value)
    if m is None or m.group(1).lower() != "digest":
        raise SipParseError(f"not a Digest header: {value[:30]!a}")
    return _parse_params(m.group(2) or "")


def _canonical_algorithm(name: str) -> str:
    algorithm = _ALGORITHMS.get(name.upper())
    if algorithm is None:
        raise SipParseError(f"unsupported digest algorithm: {name[:30]!a}")
    return algorithm


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value offering the Digest scheme."""
    params = _parse_digest(value)
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None:
        raise SipParseError("Digest challenge without realm")
    if not nonce:
        raise SipParseError("Digest challenge without nonce")
    qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def _hash(algorithm: str, text: str) -> str:
    data = text.encode("utf-8")
    if algorithm.startswith("SHA-256"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str,
    body: bytes,
) -> str:
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        body_hash = (
            hashlib.sha256(body).hexdigest()
            if algorithm.startswith("SHA-256")
            else hashlib.md5(body, usedforsecurity=False).hexdigest()
        )
        ha2 = _hash(algorithm, f"{method}:{uri}:{body_hash}")
    else:
        ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 compatibility form
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``.

    qop=auth is used whenever offered; qop=auth-int (which hashes ``body``) only when it is the
    sole option. ``nc`` counts the requests made with this nonce, starting at 1.
    """
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError(f"nc out of range: {nc}")
    qop: str | None = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise ValueError(f"no supported qop in {challenge.qop!r}")
    needs_cnonce = qop is not None or challenge.algorithm.endswith("-sess")
    if needs_cnonce and cnonce is None:
        cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = _response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce or "",
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}"]
    if needs_cnonce and cnonce is not None:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def check_authorization(
    value: str, method: str, password: str, realm: str, nonce: str, *, body: bytes = b""
) -> bool:
    """Server side: does ``value`` prove knowledge of ``password`` for this realm and nonce?

    The caller still has to check that the ``uri`` parameter names the Request-URI and that the
    username is the expected one; this only verifies the digest itself. Malformed input is False.
    """
    try:
        params = _parse_digest(value)
        algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
    except SipParseError:
        return False
    username = params.get("username")
    uri = params.get("uri")
    given = params.get("response")
    if username is None or uri is None or given is None:
        return False
    if params.get("realm") != realm or params.get("nonce") != nonce:
        return False
    qop = params.get("qop")
    nc = params.get("nc", "")
    cnonce = params.get("cnonce", "")
    if qop is not None:
        if qop not in ("auth", "auth-int") or not re.fullmatch(r"[0-9a-fA-F]{8}", nc) or not cnonce:
            return False
    elif algorithm.endswith("-sess") and not cnonce:
        return False
    expected = _response(
        algorithm=algorithm,
        username=username,
        realm=realm,
        password=password,
        nonce=nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )
    return hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "replace"))
