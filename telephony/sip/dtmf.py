"""RFC 4733 telephone-event payloads ("RTP DTMF") and a detector that turns them into digits.

Payload layout (4 bytes, network order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |     event     |E|R| volume    |          duration             |

One key press is one *event*: every packet of it carries the same RTP timestamp (the start),
the duration grows as the key is held, and the final packet (E bit set) is sent three times.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from telephony.sip.rtp import RtpPacket

__all__ = [
    "EVENTS",
    "DtmfDetector",
    "DtmfDigit",
    "DtmfError",
    "TelephoneEvent",
    "digit_event",
    "event_digit",
    "parse_event",
    "serialize_event",
]

#: Event codes 0-15 in order (RFC 4733 section 3.2): the digit for code ``n`` is ``EVENTS[n]``.
EVENTS: Final = "0123456789*#ABCD"

_EVENT = struct.Struct("!BBH")
_MAX_VOLUME: Final = 63
_MAX_DURATION: Final = 0xFFFF
# Enough to outlast any retransmission or reordering of a past event, small enough to stay O(1).
_REMEMBERED_EVENTS: Final = 64


class DtmfError(ValueError):
    """A telephone-event payload that cannot be decoded, or a value that cannot be encoded."""


@dataclass(frozen=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int  # attenuation in -dBm0, 0 (loudest) to 63
    duration: int  # in RTP timestamp units (samples at 8 kHz)


@dataclass(frozen=True)
class DtmfDigit:
    """One detected key press: '0'-'9', '*', '#', 'A'-'D'.

    ``duration_ms`` is what was known when the digit was reported; the detector reports on the
    first packet of an event for latency's sake, so this is usually the first update (~20-50 ms),
    not the final length of the key press.
    """

    digit: str
    duration_ms: int


def parse_event(payload: bytes) -> TelephoneEvent:
    """Decode the first event of a telephone-event payload; bytes after it are ignored."""
    if len(payload) < _EVENT.size:
        raise DtmfError(f"telephone-event payload too short: {len(payload)} bytes")
    event, flags, duration = _EVENT.unpack_from(payload)
    # The R bit is reserved: senders set it to 0 and receivers must ignore it.
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def serialize_event(ev: TelephoneEvent) -> bytes:
    if not 0 <= ev.event <= 0xFF:
        raise DtmfError(f"event code out of range: {ev.event}")
    if not 0 <= ev.volume <= _MAX_VOLUME:
        raise DtmfError(f"volume out of range 0-63: {ev.volume}")
    if not 0 <= ev.duration <= _MAX_DURATION:
        raise DtmfError(f"duration out of range 0-65535: {ev.duration}")
    return _EVENT.pack(ev.event, (0x80 if ev.end else 0) | ev.volume, ev.duration)


def event_digit(event: int) -> str | None:
    """The DTMF digit of an event code, or None for other events (flash, tones, ...)."""
    return EVENTS[event] if 0 <= event < len(EVENTS) else None


def digit_event(digit: str) -> int:
    """The event code of a DTMF digit; lower-case 'a'-'d' are accepted."""
    code = EVENTS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return code


class DtmfDetector:
    """One digit per event, however many (re)transmissions.

    Events are keyed by (SSRC, RTP timestamp) and reported on the first packet seen (low
    latency), never again for that key: not for the duration updates, the three end
    retransmits, nor late duplicates. The SSRC is part of the key because some gateways send
    DTMF on their own SSRC, interleaved with the audio stream.
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self._clock_rate = clock_rate
        self._seen: set[tuple[int, int]] = set()
        self._order: deque[tuple[int, int]] = deque()

    def feed(self, packet: RtpPacket) -> DtmfDigit | None:
        try:
            ev = parse_event(packet.payload)
        except DtmfError:
            return None
        key = (packet.ssrc, packet.timestamp)
        if key in self._seen:
            return None
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > _REMEMBERED_EVENTS:
            self._seen.discard(self._order.popleft())
        digit = event_digit(ev.event)
        if digit is None:
            return None
        return DtmfDigit(digit=digit, duration_ms=ev.duration * 1000 // self._clock_rate)
