"""SDP (RFC 4566) parsing and the RFC 3264 offer/answer subset a G.711 voice bot needs.

Parsing is strict where a mistake would send audio to the wrong place (``v=``, ``c=``, ``m=``)
and tolerant everywhere else: real offers carry ICE candidates, RTCP feedback, crypto lines
and vendor attributes that we neither need nor want to choke on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DIRECTIONS",
    "SUPPORTED",
    "Codec",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "SdpError",
    "SessionDescription",
    "accept_answer",
    "build_answer",
    "build_offer",
    "negotiate",
    "parse_sdp",
]

SUPPORTED: Final = ("PCMU", "PCMA")
DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
TELEPHONE_EVENT: Final = "telephone-event"
PTIME_MS: Final = 20

# The audio/video profile's static assignments (RFC 3551 table 4) that show up in real offers
# without an rtpmap line.
_STATIC: Final = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    13: ("CN", 8000),
    18: ("G729", 8000),
}
# Plain RTP profiles only: SAVP needs SRTP keys we do not do, so such lines are not accepted.
_PLAIN_RTP: Final = ("RTP/AVP", "RTP/AVPF")
_REVERSE: Final = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,62}))*\.?")


class SdpError(ValueError):
    """A session description we cannot use; the message is one line, fit for a log or a reason."""


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str
    clock_rate: int = 8000
    channels: int = 1
    fmtp: str | None = None

    def is_named(self, name: str, clock_rate: int = 8000) -> bool:
        return self.name.upper() == name.upper() and self.clock_rate == clock_rate and self.channels == 1


@dataclass(frozen=True)
class Origin:
    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    #: RTP payload types in the offerer's order of preference; empty for non-RTP protocols.
    formats: list[int]
    #: Every payload type of ``formats`` we could name, from rtpmap or the static table.
    codecs: dict[int, Codec]
    #: Effective address: this m= line's c=, else the session's.
    connection: str | None
    #: Effective direction: this m= line's attribute, else the session's, else sendrecv.
    direction: str = "sendrecv"
    ptime: int | None = None
    #: Every a= line of this m= section in order, as (name, value or None).
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    #: The m= line's format tokens as written, echoed back when the line is rejected.
    format_tokens: list[str] = field(default_factory=list)


@dataclass
class SessionDescription:
    origin: Origin | None
    session_name: str
    #: Session-level c= address, if any (media lines carry the effective one).
    connection: str | None
    media: list[MediaDescription]
    #: Session-level direction attribute, if any.
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Negotiated:
    codec: Codec
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    ptime: int
    #: From our point of view: what we may do with media on this call.
    direction: str
    media_index: int
    #: The ptime the peer asked to receive, if it said.
    remote_ptime: int | None = None

    @property
    def on_hold(self) -> bool:
        """Whether we must not send audio (the peer held the call, or has no address)."""
        return self.direction in ("recvonly", "inactive")


def _fail(message: str, line: str | None = None) -> SdpError:
    if line is not None:
        message = f"{message}: {line[:80]!r}"
    return SdpError(message)


def _number(text: str, limit: int) -> int | None:
    # isdecimal alone admits non-ASCII digits and int() admits underscores; neither is SDP.
    if not text or len(text) > 10 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= limit else None


def _parse_connection(value: str, line: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise _fail("malformed c= line", line)
    # Multicast addresses may carry /ttl and /count; the address is what we need.
    address = parts[2].split("/", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not _HOSTNAME.fullmatch(address) or address.replace(".", "").isdigit():
            raise _fail("bad address in c= line", line) from None
        return address
    if (ip.version == 4) != (parts[1] == "IP4"):
        raise _fail("c= address does not match its address type", line)
    return str(ip)


def _parse_media(value: str, line: str) -> tuple[str, int, str, list[str]]:
    parts = value.split()
    if len(parts) < 4:
        raise _fail("malformed m= line", line)
    media, port_text, proto, tokens = parts[0], parts[1], parts[2], parts[3:]
    port = _number(port_text.split("/", 1)[0], 0xFFFF)
    if (
        port is None
        or not _TOKEN.fullmatch(media)
        or not re.fullmatch(r"[A-Za-z0-9/_\-.]+", proto)
        or not all(_VISIBLE.fullmatch(token) for token in tokens)
    ):
        raise _fail("malformed m= line", line)
    return media, port, proto, tokens


def _parse_rtpmap(value: str) -> tuple[int, str, int, int] | None:
    match = re.fullmatch(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?\s*", value)
    if match is None or int(match[1]) > 127:
        return None
    channels = int(match[4]) if match[4] else 1
    return int(match[1]), match[2], int(match[3]), channels


class _MediaBuilder:
    def __init__(self, media: str, port: int, proto: str, tokens: list[str], line: str) -> None:
        self.media, self.port, self.proto, self.tokens = media, port, proto, tokens
        self.formats: list[int] = []
        if proto.upper().startswith(("RTP/", "UDP/TLS/RTP/")):
            for token in tokens:
                pt = _number(token, 127)
                if pt is None:
                    raise _fail("bad RTP payload type in m= line", line)
                self.formats.append(pt)
        self.connection: str | None = None
        self.direction: str | None = None
        self.ptime: int | None = None
        self.rtpmap: dict[int, tuple[str, int, int]] = {}
        self.fmtp: dict[int, str] = {}
        self.attributes: list[tuple[str, str | None]] = []

    def attribute(self, name: str, value: str | None) -> None:
        self.attributes.append((name, value))
        if name in DIRECTIONS and value is None:
            self.direction = name
        elif name == "rtpmap" and value is not None:
            parsed = _parse_rtpmap(value)
            if parsed is not None and parsed[0] not in self.rtpmap:
                self.rtpmap[parsed[0]] = parsed[1:]
        elif name == "fmtp" and value is not None:
            pt_text, _, params = value.partition(" ")
            pt = _number(pt_text, 127)
            if pt is not None:
                self.fmtp.setdefault(pt, params.strip())
        elif name == "ptime" and value is not None:
            # Some stacks write fractional ptimes ("20.0"); the integer part is what matters.
            self.ptime = _number(value.strip().split(".", 1)[0], 1000) or None

    def build(self, session_connection: str | None, session_direction: str | None) -> MediaDescription:
        codecs: dict[int, Codec] = {}
        for pt in self.formats:
            if pt in self.rtpmap:
                name, rate, channels = self.rtpmap[pt]
            elif pt in _STATIC:
                name, rate = _STATIC[pt]
                channels = 1
            else:
                continue
            codecs[pt] = Codec(pt, name, rate, channels, self.fmtp.get(pt))
        return MediaDescription(
            media=self.media,
            port=self.port,
            proto=self.proto,
            formats=self.formats,
            codecs=codecs,
            connection=self.connection or session_connection,
            direction=self.direction or session_direction or "sendrecv",
            ptime=self.ptime,
            attributes=self.attributes,
            format_tokens=self.tokens,
        )


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description; raises SdpError (and nothing else) when it is unusable."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("SDP is not UTF-8") from None
    elif isinstance(data, str):
        text = data
    else:
        raise SdpError(f"SDP must be bytes or str, not {type(data).__name__}")
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if not lines or lines[0] != "v=0":
        raise _fail("SDP must start with v=0", lines[0] if lines else "")
    origin: Origin | None = None
    session_name = ""
    connection: str | None = None
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = []
    builders: list[_MediaBuilder] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            continue  # not an SDP line at all; some stacks leave stray text, so skip it
        kind, value = line[0], line[2:]
        if kind == "v":
            raise _fail("repeated v= line", line)
        if kind == "m":
            builders.append(_MediaBuilder(*_parse_media(value, line), line=line))
        elif kind == "c":
            address = _parse_connection(value, line)
            if builders:
                builders[-1].connection = address
            else:
                connection = address
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            parsed_value = attr_value.strip() if sep else None
            if builders:
                builders[-1].attribute(name.strip(), parsed_value)
            else:
                attributes.append((name.strip(), parsed_value))
                if name.strip() in DIRECTIONS and parsed_value is None:
                    direction = name.strip()
        elif kind == "o" and not builders:
            fields = value.split()
            if len(fields) == 6:
                origin = Origin(*fields)
        elif kind == "s" and not builders:
            session_name = value
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        media=[b.build(connection, direction) for b in builders],
        direction=direction,
        attributes=attributes,
    )


def _check_preference(preference: Sequence[str]) -> list[str]:
    chosen = [name.upper() for name in preference]
    unknown = [name for name in chosen if name not in SUPPORTED]
    if unknown or not chosen:
        raise ValueError(f"codec preference must name some of {SUPPORTED}, got {list(preference)}")
    return chosen


def _find_dtmf(media: MediaDescription) -> int | None:
    for pt in media.formats:
        codec = media.codecs.get(pt)
        if codec is not None and codec.is_named(TELEPHONE_EVENT):
            return pt
    return None


def _is_hold_address(host: str) -> bool:
    # RFC 2543 hold: an unspecified address means "do not send to me".
    return host in ("0.0.0.0", "::")


def negotiate(offer: SessionDescription, preference: Sequence[str] = ("PCMU", "PCMA")) -> Negotiated:
    """Choose what to answer an offer with: the first audio m= line with a codec we share.

    Our preference order wins over the offer's order, so configuration decides between PCMU
    and PCMA. Raises SdpError (answer 488) when no audio line has a codec in common.
    """
    wanted = _check_preference(preference)
    audio = [(i, m) for i, m in enumerate(offer.media) if m.media.lower() == "audio"]
    if not audio:
        raise SdpError("offer has no audio m= line")
    offered: list[str] = []
    for index, media in audio:
        if media.port == 0:
            continue
        offered.extend(c.name for c in media.codecs.values())
        if media.proto.upper() not in _PLAIN_RTP:
            continue
        codec = _pick(media, wanted, by_offer_order=False)
        if codec is None:
            continue
        return _settled(media, codec, index, "offer")
    names = ", ".join(dict.fromkeys(offered)) or "none"
    raise SdpError(f"no common codec: offered {names}; we support {', '.join(wanted)} over RTP/AVP")


def _pick(media: MediaDescription, wanted: list[str], by_offer_order: bool) -> Codec | None:
    candidates = [media.codecs[pt] for pt in media.formats if pt in media.codecs]
    if by_offer_order:
        return next((c for c in candidates if any(c.is_named(w) for w in wanted)), None)
    for name in wanted:
        for codec in candidates:
            if codec.is_named(name):
                return codec
    return None


def _address_line(host: str) -> str:
    return f"IN {'IP6' if ':' in host else 'IP4'} {host}"


def _session_lines(host: str, session_id: int, version: int) -> list[str]:
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"bad host for SDP: {host!r}")
    return [
        "v=0",
        f"o=- {session_id} {version} {_address_line(host)}",
        "s=-",
        f"c={_address_line(host)}",
        "t=0 0",
    ]


def _audio_lines(
    port: int, proto: str, codecs: Sequence[Codec], dtmf_payload_type: int | None, direction: str
) -> list[str]:
    if direction not in DIRECTIONS:
        raise ValueError(f"bad direction: {direction!r}")
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"bad RTP port: {port}")
    formats = [c.payload_type for c in codecs]
    if dtmf_payload_type is not None:
        formats.append(dtmf_payload_type)
    lines = [f"m=audio {port} {proto} {' '.join(map(str, formats))}"]
    lines.extend(f"a=rtpmap:{c.payload_type} {c.name}/{c.clock_rate}" for c in codecs)
    if dtmf_payload_type is not None:
        lines.append(f"a=rtpmap:{dtmf_payload_type} {TELEPHONE_EVENT}/8000")
        lines.append(f"a=fmtp:{dtmf_payload_type} 0-16")
    lines.append(f"a=ptime:{PTIME_MS}")
    lines.append(f"a={direction}")
    return lines


def _encode(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def build_answer(
    offer: SessionDescription, neg: Negotiated, host: str, port: int, session_id: int, version: int
) -> bytes:
    """The RFC 3264 answer: one m= line per offered one, in order, all but ours with port 0."""
    if not 0 <= neg.media_index < len(offer.media):
        raise ValueError(f"media_index {neg.media_index} is not in the offer")
    lines = _session_lines(host, session_id, version)
    for index, media in enumerate(offer.media):
        if index == neg.media_index:
            codec = Codec(neg.codec.payload_type, neg.codec.name.upper())
            lines.extend(_audio_lines(port, media.proto, [codec], neg.dtmf_payload_type, neg.direction))
        else:
            tokens = " ".join(media.format_tokens)
            lines.append(f"m={media.media} 0 {media.proto} {tokens}")
    return _encode(lines)


_STATIC_PT: Final = {"PCMU": 0, "PCMA": 8}


def build_offer(
    host: str,
    port: int,
    session_id: int,
    version: int,
    preference: Sequence[str] = ("PCMU", "PCMA"),
    dtmf_payload_type: int | None = 101,
    direction: str = "sendrecv",
) -> bytes:
    """An offer with one audio m= line: our G.711 codecs in preference order, plus DTMF."""
    wanted = _check_preference(preference)
    if dtmf_payload_type is not None and not 96 <= dtmf_payload_type <= 127:
        raise ValueError(f"telephone-event needs a dynamic payload type (96-127), got {dtmf_payload_type}")
    codecs = [Codec(_STATIC_PT[name], name) for name in dict.fromkeys(wanted)]
    lines = _session_lines(host, session_id, version)
    lines.extend(_audio_lines(port, "RTP/AVP", codecs, dtmf_payload_type, direction))
    return _encode(lines)


def _settled(media: MediaDescription, codec: Codec, index: int, role: str) -> Negotiated:
    """The media we agreed on, from our side: their sendonly is our recvonly, a hold address mutes us."""
    if media.connection is None:
        raise SdpError(f"{role} has no c= address for its audio")
    ours = _REVERSE.get(media.direction, "sendrecv")
    if _is_hold_address(media.connection):
        ours = "recvonly" if ours in ("sendrecv", "recvonly") else "inactive"
    return Negotiated(
        codec=codec,
        dtmf_payload_type=_find_dtmf(media),
        remote_host=media.connection,
        remote_port=media.port,
        ptime=PTIME_MS,
        direction=ours,
        media_index=index,
        remote_ptime=media.ptime,
    )


def accept_answer(answer: SessionDescription, preference: Sequence[str] = ("PCMU", "PCMA")) -> Negotiated:
    """What an answer to our offer settled: the first codec in its list that we support."""
    wanted = _check_preference(preference)
    for index, media in enumerate(answer.media):
        if media.media.lower() != "audio":
            continue
        if media.port == 0:
            raise SdpError("answer rejected our audio stream (port 0)")
        codec = _pick(media, wanted, by_offer_order=True)
        if codec is None:
            names = ", ".join(c.name for c in media.codecs.values()) or "none"
            raise SdpError(f"answer has no codec we support: {names}")
        return _settled(media, codec, index, "answer")
    raise SdpError("answer has no audio m= line")
