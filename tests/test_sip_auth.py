"""Digest authentication against the RFC worked examples and independently computed vectors."""

from __future__ import annotations

import hashlib

import pytest

from telephony.sip.auth import Challenge, authorization, check_authorization, parse_challenge
from telephony.sip.message import SipParseError

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def _params(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    out: dict[str, str] = {}
    for part in value[len("Digest ") :].split(", "):
        name, _, v = part.partition("=")
        out[name] = v.strip('"')
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_rfc2617_worked_example() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge == Challenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        algorithm="MD5",
        qop=("auth", "auth-int"),
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    value = authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b")
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, qop=auth, '
        'nc=00000001, cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert check_authorization(value, "GET", "Circle Of Life", challenge.realm, challenge.nonce)
    assert not check_authorization(value, "GET", "circle of life", challenge.realm, challenge.nonce)
    assert not check_authorization(value, "POST", "Circle Of Life", challenge.realm, challenge.nonce)
    assert not check_authorization(value, "GET", "Circle Of Life", challenge.realm, "othernonce")
    assert not check_authorization(value, "GET", "Circle Of Life", "other realm", challenge.nonce)


def test_rfc7616_examples() -> None:
    # RFC 7616 3.9.1: same credentials, MD5 and SHA-256 answers to one challenge.
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    opaque = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    for algorithm, expected in [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ]:
        challenge = parse_challenge(
            f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{nonce}", opaque="{opaque}"'
        )
        value = authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=cnonce)
        assert _params(value)["response"] == expected
        assert check_authorization(value, "GET", "Circle of Life", "http-auth@example.org", nonce)


def test_sip_register_vector_without_qop() -> None:
    # Computed here from the RFC 2617 formulas, independent of the module's code path.
    challenge = parse_challenge('Digest realm="asterisk",nonce="1a2b3c4d"')
    assert challenge.qop == () and challenge.algorithm == "MD5"
    value = authorization(challenge, "REGISTER", "sip:pbx.example.com", "1001", "s3cret")
    ha1 = _md5("1001:asterisk:s3cret")
    ha2 = _md5("REGISTER:sip:pbx.example.com")
    params = _params(value)
    assert params["response"] == _md5(f"{ha1}:1a2b3c4d:{ha2}")
    assert "qop" not in params and "cnonce" not in params and "nc" not in params and "opaque" not in params
    assert check_authorization(value, "REGISTER", "s3cret", "asterisk", "1a2b3c4d")


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256", "SHA-256-sess"])
def test_other_algorithms_match_independent_computation(algorithm: str) -> None:
    h = _sha256 if algorithm.startswith("SHA-256") else _md5
    challenge = parse_challenge(
        f'Digest realm="voip.example", nonce="n0nce", qop="auth", algorithm={algorithm.lower()}, stale=TRUE'
    )
    assert challenge.algorithm == algorithm and challenge.stale
    value = authorization(challenge, "INVITE", "sip:bob@voip.example", "alice", "pw", cnonce="c1", nc=3)
    params = _params(value)
    ha1 = h("alice:voip.example:pw")
    if algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:n0nce:c1")
    ha2 = h("INVITE:sip:bob@voip.example")
    assert params["nc"] == "00000003"
    assert params["algorithm"] == algorithm
    assert params["response"] == h(f"{ha1}:n0nce:00000003:c1:auth:{ha2}")
    assert check_authorization(value, "INVITE", "pw", "voip.example", "n0nce")
    assert not check_authorization(value, "INVITE", "wrong", "voip.example", "n0nce")


def test_auth_int_only() -> None:
    challenge = Challenge(realm="r", nonce="n", qop=("auth-int",))
    body = b"v=0\r\n"
    value = authorization(challenge, "INVITE", "sip:x@y", "u", "p", cnonce="c", body=body)
    params = _params(value)
    ha2 = _md5(f"INVITE:sip:x@y:{hashlib.md5(body).hexdigest()}")
    assert params["qop"] == "auth-int"
    assert params["response"] == _md5(f"{_md5('u:r:p')}:n:00000001:c:auth-int:{ha2}")
    assert check_authorization(value, "INVITE", "p", "r", "n", body=body)
    assert not check_authorization(value, "INVITE", "p", "r", "n", body=b"other")


def test_generated_cnonce_and_quoting() -> None:
    challenge = Challenge(realm='we"ird', nonce="n", qop=("auth",))
    value = authorization(challenge, "BYE", "sip:x@y", 'us"er', "p")
    assert 'realm="we\\"ird"' in value and 'username="us\\"er"' in value
    assert check_authorization(value, "BYE", "p", 'we"ird', "n")


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="x"',
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r, nonce="n"',
        "Digest realm",
        'Digest realm="r" nonce="n"',
        "",
    ],
)
def test_bad_challenges(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_challenge(value)


def test_challenge_tolerates_bare_values_and_spacing() -> None:
    c = parse_challenge("digest   realm = sip.example ,nonce=abc/def+==,opaque=xyz,  qop=auth")
    assert (c.realm, c.nonce, c.opaque, c.qop) == ("sip.example", "abc/def+==", "xyz", ("auth",))


def test_check_rejects_malformed() -> None:
    assert not check_authorization("garbage", "GET", "p", "r", "n")
    assert not check_authorization('Digest username="u", realm="r", nonce="n"', "GET", "p", "r", "n")
    value = authorization(Challenge("r", "n", qop=("auth",)), "GET", "/", "u", "p", cnonce="c")
    assert not check_authorization(value.replace("nc=00000001", "nc=zz"), "GET", "p", "r", "n")
