"""Twilio Media Streams messages: typed inbound events, a parser and outbound serializers.

Pure functions, no I/O. Shapes follow https://www.twilio.com/docs/voice/media-streams/websocket-messages
and what the ``streamdouble`` simulator sends. Field gotchas the parser absorbs:

* ``sequenceNumber``, ``media.chunk`` and ``media.timestamp`` are JSON *strings* holding
  integers; ``mediaFormat.sampleRate`` and ``channels`` are JSON numbers. Integers are
  accepted for the string fields too, since some test clients send them.
* ``connected`` has no ``streamSid``; every other event has a top-level one.
* ``dtmf.track`` is ``"inbound_track"`` while ``media.track`` is ``"inbound"``: kept verbatim.

Required fields are the ones we act on (the SIDs, ``payload``, ``digit``, mark ``name``).
Informational fields (tracks, chunk, timestamp, sequenceNumber, ...) may be absent, but are
type-checked when present: a wrong type means the peer is not speaking this protocol.

Every byte here comes from the network. The SIDs must have Twilio's shape (``CA``/``MZ``/``AC``
and 32 lowercase hex digits), so a SID is safe in a log line and can never name a path; custom
parameters are bounded in number and size and may hold no control characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

__all__ = [
    "MULAW_8K",
    "Connected",
    "Dtmf",
    "InboundEvent",
    "Mark",
    "Media",
    "MediaFormat",
    "ProtocolError",
    "Start",
    "Stop",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_message",
]

# A WebSocket close frame carries at most 125 payload bytes, two of which are the code.
_MAX_CLOSE_REASON_BYTES: Final = 123
_EXCERPT_CHARS: Final = 80

#: Twilio's SIDs: a two-letter type prefix and a 128-bit id in lowercase hex.
SID_PREFIXES: Final = {"callSid": "CA", "streamSid": "MZ", "accountSid": "AC"}
_SID_RE: Final = re.compile(r"(?:CA|MZ|AC)[0-9a-f]{32}")
MAX_CUSTOM_PARAMETERS: Final = 32
MAX_PARAMETER_CHARS: Final = 256
# C0 controls, DEL and C1 controls: never part of a phone number, a name or a label. Lone
# surrogates (JSON's "\ud800") are no text at all: they cannot be logged or stored as UTF-8.
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_T = TypeVar("_T")


class ProtocolError(Exception):
    """The peer broke the Media Streams protocol.

    ``code`` is a stable machine-readable slug (``"invalid_json"``, ``"media_before_start"``,
    ...), ``reason`` a human sentence. ``fatal`` tells the transport whether to drop the
    connection (close 1008 with ``close_reason``) or just log and carry on.
    """

    #: RFC 6455 "policy violation": the close code for a peer that broke the protocol.
    close_code: Final = 1008

    def __init__(self, code: str, reason: str, *, fatal: bool = True) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.fatal = fatal

    @property
    def close_reason(self) -> str:
        """``code: reason`` cut to what fits in a WebSocket close frame (123 UTF-8 bytes)."""
        text = str(self).encode("utf-8")[:_MAX_CLOSE_REASON_BYTES]
        # Cutting bytes can split a code point; drop the partial tail.
        return text.decode("utf-8", errors="ignore")


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """``start.mediaFormat``: Twilio always sends 8 kHz mono μ-law."""

    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


MULAW_8K: Final = MediaFormat()


@dataclass(frozen=True, slots=True)
class Connected:
    """First message on the socket; describes the protocol, carries no streamSid."""

    protocol: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata, sent once before any media."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: MediaFormat = MULAW_8K
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio: ``payload`` is raw μ-law, already base64-decoded."""

    stream_sid: str
    payload: bytes
    track: str = "inbound"
    chunk: int | None = None
    timestamp: int | None = None
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key."""

    stream_sid: str
    digit: str
    track: str = "inbound_track"
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """Echo of a mark we sent: the audio queued before it has finished playing."""

    stream_sid: str
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream has ended (hang-up, or the call left the ``<Connect><Stream>``)."""

    stream_sid: str
    account_sid: str | None = None
    call_sid: str | None = None
    sequence_number: int | None = None


InboundEvent = Connected | Start | Media | Dtmf | Mark | Stop


def _or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Fields:
    """Typed accessors over one JSON object; errors name the full dotted path."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self._data = data
        self._path = path

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _wrong_type(self, key: str, expected: str) -> ProtocolError:
        got = _type_name(self._data[key])
        return ProtocolError("wrong_type", f"'{self._where(key)}' must be {expected}, got {got}")

    def _missing(self, key: str) -> ProtocolError:
        return ProtocolError("missing_field", f"'{self._where(key)}' is required")

    def obj(self, key: str) -> _Fields:
        found = self.opt_obj(key)
        if found is None:
            raise self._missing(key)
        return found

    def opt_obj(self, key: str) -> _Fields | None:
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, dict):
            raise self._wrong_type(key, "an object")
        return _Fields(value, self._where(key))

    def string(self, key: str) -> str:
        found = self.opt_string(key)
        if found is None:
            raise self._missing(key)
        return found

    def opt_string(self, key: str) -> str | None:
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, str):
            raise self._wrong_type(key, "a string")
        return value

    def sid(self, key: str) -> str:
        """A Twilio SID field (``callSid``, ``streamSid``, ``accountSid``), checked for its shape."""
        value = self.string(key)
        prefix = SID_PREFIXES[key]
        if not value.startswith(prefix) or not _SID_RE.fullmatch(value):
            shown = _excerpt(value).encode("unicode_escape").decode("ascii")
            raise ProtocolError(
                "invalid_sid", f"'{self._where(key)}' must be {prefix} and 32 hex digits, got '{shown}'"
            )
        return value

    def opt_int(self, key: str) -> int | None:
        """An integer field, which Twilio sends as a decimal string (``"42"``)."""
        if key not in self._data:
            return None
        value = self._data[key]
        # bool is an int subclass; true/false is never a counter.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        raise self._wrong_type(key, "an integer or a decimal string")

    def opt_number(self, key: str) -> int | None:
        """A field Twilio sends as a JSON number (``sampleRate``, ``channels``)."""
        if key not in self._data:
            return None
        value = self._data[key]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self._wrong_type(key, "an integer")

    def opt_string_list(self, key: str) -> tuple[str, ...] | None:
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._wrong_type(key, "a list of strings")
        return tuple(value)

    def opt_string_map(self, key: str) -> dict[str, str] | None:
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            raise self._wrong_type(key, "an object of strings")
        return dict(value)


def _decode_json(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        # Media Streams is a JSON text protocol; a binary frame is never Twilio.
        raise ProtocolError("binary_frame", f"binary frame of {len(data)} bytes; expected JSON text")
    if not isinstance(data, str):
        raise ProtocolError("not_text", f"expected a text message, got {_type_name(data)}")
    try:
        decoded = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"{exc.msg} at char {exc.pos}: {_excerpt(data)!r}") from exc
    except RecursionError as exc:
        # A few kB of '[' exhausts the decoder's stack; that is hostile input, not JSON.
        raise ProtocolError("invalid_json", "JSON nested too deeply") from exc
    if not isinstance(decoded, dict):
        raise ProtocolError("not_an_object", f"JSON {_type_name(decoded)} where an object was expected")
    return decoded


def _decode_payload(media: _Fields) -> bytes:
    text = media.string("payload")
    try:
        # validate=True: reject stray characters instead of silently skipping them.
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_base64", f"'media.payload' is not valid base64: {exc}") from exc


def _parse_connected(top: _Fields) -> Connected:
    return Connected(protocol=top.opt_string("protocol"), version=top.opt_string("version"))


def _parse_media_format(start: _Fields) -> MediaFormat:
    fmt = start.opt_obj("mediaFormat")
    if fmt is None:
        return MULAW_8K
    encoding = fmt.opt_string("encoding")
    sample_rate = fmt.opt_number("sampleRate")
    channels = fmt.opt_number("channels")
    return MediaFormat(
        encoding=MULAW_8K.encoding if encoding is None else encoding,
        sample_rate=MULAW_8K.sample_rate if sample_rate is None else sample_rate,
        channels=MULAW_8K.channels if channels is None else channels,
    )


def _custom_parameters(start: _Fields) -> dict[str, str]:
    params = _or_default(start.opt_string_map("customParameters"), {})
    if len(params) > MAX_CUSTOM_PARAMETERS:
        raise ProtocolError(
            "bad_parameter", f"{len(params)} custom parameters; at most {MAX_CUSTOM_PARAMETERS}"
        )
    for name, value in params.items():
        if not name or len(name) > MAX_PARAMETER_CHARS or len(value) > MAX_PARAMETER_CHARS:
            raise ProtocolError(
                "bad_parameter",
                f"custom parameter names must be 1-{MAX_PARAMETER_CHARS} and values at most "
                f"{MAX_PARAMETER_CHARS} characters",
            )
        if _CONTROL_RE.search(name) or _CONTROL_RE.search(value):
            shown = _excerpt(name).encode("unicode_escape").decode("ascii")
            raise ProtocolError("bad_parameter", f"custom parameter '{shown}' holds a control character")
    return params


def _parse_start(top: _Fields) -> Start:
    start = top.obj("start")
    stream_sid = start.sid("streamSid")
    outer_sid = top.opt_string("streamSid")
    if outer_sid is not None and outer_sid != stream_sid:
        reason = f"'streamSid' {outer_sid!r} differs from 'start.streamSid' {stream_sid!r}"
        raise ProtocolError("inconsistent_stream_sid", reason)
    return Start(
        stream_sid=stream_sid,
        call_sid=start.sid("callSid"),
        account_sid=start.sid("accountSid"),
        tracks=_or_default(start.opt_string_list("tracks"), ("inbound",)),
        custom_parameters=_custom_parameters(start),
        media_format=_parse_media_format(start),
        sequence_number=top.opt_int("sequenceNumber"),
    )


def _parse_media(top: _Fields) -> Media:
    media = top.obj("media")
    return Media(
        stream_sid=top.string("streamSid"),
        payload=_decode_payload(media),
        track=_or_default(media.opt_string("track"), "inbound"),
        chunk=media.opt_int("chunk"),
        timestamp=media.opt_int("timestamp"),
        sequence_number=top.opt_int("sequenceNumber"),
    )


def _parse_dtmf(top: _Fields) -> Dtmf:
    dtmf = top.obj("dtmf")
    return Dtmf(
        stream_sid=top.string("streamSid"),
        digit=dtmf.string("digit"),
        track=_or_default(dtmf.opt_string("track"), "inbound_track"),
        sequence_number=top.opt_int("sequenceNumber"),
    )


def _parse_mark(top: _Fields) -> Mark:
    mark = top.obj("mark")
    return Mark(
        stream_sid=top.string("streamSid"),
        name=mark.string("name"),
        sequence_number=top.opt_int("sequenceNumber"),
    )


def _parse_stop(top: _Fields) -> Stop:
    stop = top.opt_obj("stop")
    return Stop(
        stream_sid=top.string("streamSid"),
        account_sid=stop.opt_string("accountSid") if stop else None,
        call_sid=stop.opt_string("callSid") if stop else None,
        sequence_number=top.opt_int("sequenceNumber"),
    )


_PARSERS: Final[dict[str, Callable[[_Fields], InboundEvent]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def parse_message(data: str | bytes) -> InboundEvent:
    """Parse one WebSocket message from Twilio into a typed event.

    Raises:
        ProtocolError: the message is not a well-formed Media Streams event. Only an
            unknown ``event`` name is non-fatal (``fatal=False``): Twilio may add events.
    """
    top = _Fields(_decode_json(data), "")
    event = top.opt_string("event")
    if event is None:
        raise ProtocolError("missing_event", "message has no 'event' field")
    parser = _PARSERS.get(event)
    if parser is None:
        raise ProtocolError("unknown_event", f"unknown event {_excerpt(event)!r}", fatal=False)
    return parser(top)


def _dumps(message: Mapping[str, Any]) -> str:
    # Compact separators: this runs 50 times a second per call.
    return json.dumps(message, separators=(",", ":"))


def media_message(stream_sid: str, payload: bytes) -> str:
    """Outbound ``media``: raw μ-law bytes to play to the caller."""
    encoded = base64.b64encode(payload).decode("ascii")
    return _dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": encoded}})


def mark_message(stream_sid: str, name: str) -> str:
    """Outbound ``mark``: Twilio echoes it back once the audio sent before it has played."""
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Outbound ``clear``: drop the audio Twilio has buffered (barge-in)."""
    return _dumps({"event": "clear", "streamSid": stream_sid})
