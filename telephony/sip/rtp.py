"""RTP (RFC 3550) packets and the per-call receive and send state machines, sans-IO.

``RtpReceiver`` is fed datagrams as they arrive and returns in-order 8 kHz audio and DTMF
digits; ``RtpSender`` returns datagrams that the adapter sends on its own 20 ms clock. Neither
reads a clock nor touches a socket.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from telephony import g711
from telephony.sip.dtmf import DtmfDetector, DtmfDigit, TelephoneEvent, digit_event, serialize_event
from telephony.sip.sdp import Codec

__all__ = [
    "AudioChunk",
    "DtmfDigit",
    "RtpError",
    "RtpPacket",
    "RtpReceiver",
    "RtpSender",
    "codec_decoder",
    "codec_encoder",
    "is_rtcp",
    "parse_rtp",
    "serialize_rtp",
]

RTP_VERSION: Final = 2
PT_PCMU: Final = 0
PT_PCMA: Final = 8
PT_CN: Final = 13

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet, or a packet that cannot be serialized."""


@dataclass
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    #: Header extension body (without its 4-byte profile/length header); length a multiple of 4.
    extension: bytes | None = None
    extension_profile: int = 0
    #: Padding bytes after the payload, including the final count byte; 0 for none.
    padding: int = 0


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram is RTCP multiplexed on the RTP port.

    RFC 5761 section 4: the second byte of RTCP (its packet type, 192-223) falls where RTP's
    marker bit plus payload types 64-95 would, which RTP never uses for that reason.
    """
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Decode one RTP datagram; raises RtpError (never anything else) on anything malformed."""
    size = len(data)
    if size < _HEADER.size:
        raise RtpError(f"RTP packet too short: {size} bytes")
    b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"not RTP version 2: version {b0 >> 6}")
    if 192 <= b1 <= 223:
        raise RtpError("rtcp packet, not RTP")
    offset = _HEADER.size
    count = b0 & 0x0F
    if size < offset + 4 * count:
        raise RtpError(f"RTP packet too short for {count} CSRCs")
    csrc = struct.unpack_from(f"!{count}I", data, offset)
    offset += 4 * count
    extension: bytes | None = None
    profile = 0
    if b0 & 0x10:
        if size < offset + _EXT_HEADER.size:
            raise RtpError("RTP packet too short for its header extension")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        offset += _EXT_HEADER.size
        if size < offset + 4 * words:
            raise RtpError("RTP header extension runs past the packet")
        extension = bytes(data[offset : offset + 4 * words])
        offset += 4 * words
    end = size
    padding = 0
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or padding > end - offset:
            raise RtpError(f"bad RTP padding length {padding}")
        end -= padding
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(b1 & 0x80),
        csrc=tuple(csrc),
        extension=extension,
        extension_profile=profile,
        padding=padding,
    )


def serialize_rtp(packet: RtpPacket) -> bytes:
    p = packet
    if not 0 <= p.payload_type <= 0x7F:
        raise RtpError(f"payload type out of range: {p.payload_type}")
    if not (0 <= p.sequence < _SEQ_MOD and 0 <= p.timestamp < _TS_MOD and 0 <= p.ssrc < _TS_MOD):
        raise RtpError("sequence, timestamp or SSRC out of range")
    if len(p.csrc) > 15 or any(not 0 <= c < _TS_MOD for c in p.csrc):
        raise RtpError("at most 15 CSRCs of 32 bits")
    if not 0 <= p.padding <= 0xFF:
        raise RtpError(f"padding out of range: {p.padding}")
    b0 = RTP_VERSION << 6 | len(p.csrc)
    parts = [b""]
    if p.csrc:
        parts.append(struct.pack(f"!{len(p.csrc)}I", *p.csrc))
    if p.extension is not None:
        if len(p.extension) % 4 or len(p.extension) > 4 * 0xFFFF:
            raise RtpError("header extension length must be a multiple of 4 bytes")
        b0 |= 0x10
        parts.append(_EXT_HEADER.pack(p.extension_profile & 0xFFFF, len(p.extension) // 4) + p.extension)
    parts.append(bytes(p.payload))
    if p.padding:
        b0 |= 0x20
        parts.append(bytes(p.padding - 1) + bytes([p.padding]))
    b1 = (0x80 if p.marker else 0) | p.payload_type
    parts[0] = _HEADER.pack(b0, b1, p.sequence, p.timestamp, p.ssrc)
    return b"".join(parts)


_DECODERS: Final[dict[str, Callable[[bytes], NDArray[np.int16]]]] = {
    "PCMU": g711.ulaw_decode,
    "PCMA": g711.alaw_decode,
}
_ENCODERS: Final[dict[str, Callable[[NDArray[np.int16]], bytes]]] = {
    "PCMU": g711.ulaw_encode,
    "PCMA": g711.alaw_encode,
}
_SILENCE_CODE: Final = {"PCMU": g711.ULAW_SILENCE, "PCMA": g711.ALAW_SILENCE}
_STATIC_AUDIO: Final = {PT_PCMU: "PCMU", PT_PCMA: "PCMA"}


def codec_decoder(name: str) -> Callable[[bytes], NDArray[np.int16]]:
    """G.711 payload -> int16 samples, one sample a byte, for "PCMU" or "PCMA"."""
    try:
        return _DECODERS[name.upper()]
    except KeyError:
        raise RtpError(f"unsupported codec: {name!r}") from None


def codec_encoder(name: str) -> Callable[[NDArray[np.int16]], bytes]:
    """int16 samples -> G.711 payload, one byte a sample, for "PCMU" or "PCMA"."""
    try:
        return _ENCODERS[name.upper()]
    except KeyError:
        raise RtpError(f"unsupported codec: {name!r}") from None


@dataclass(frozen=True)
class AudioChunk:
    """8 kHz mono samples in arrival order; ``concealed`` chunks stand in for lost packets."""

    pcm: NDArray[np.int16]
    concealed: bool = False


# RFC 3550 appendix A.1's limits: a jump past these is a restarted sequence, not reordering.
_MAX_DROPOUT: Final = 3000
_MAX_MISORDER: Final = 100
# A DTX pause or an event between two audio packets makes their timestamp gap longer than the
# audio that was lost, so a timestamp-derived gap is only believed up to this many samples a
# missing packet (60 ms, the longest ptime we expect).
_MAX_PACKET_SAMPLES: Final = 480
_REMEMBERED_SEQUENCES: Final = 256


@dataclass(frozen=True)
class _Held:
    packet: RtpPacket
    pcm: NDArray[np.int16] | None  # None for packets that hold a sequence number but no audio


STAT_KEYS: Final = (
    "received",
    "decoded",
    "lost",
    "reordered",
    "duplicates",
    "late",
    "unknown_pt",
    "malformed",
    "ssrc_changes",
    "dtmf",
    "rtcp",
    "comfort_noise",
    "resyncs",
    "concealed_samples",
)


class RtpReceiver:
    """Turns arriving RTP datagrams into in-order 8 kHz audio and DTMF digits.

    Out-of-order packets are held until the gap fills or more than ``reorder_depth`` packets
    wait behind it; then the gap is given up as lost and replaced with concealed silence sized
    from the timestamps (at most ``max_conceal_ms``). A packet arriving after its slot was
    played or concealed is dropped. DTMF digits are reported as soon as their first packet
    arrives, ahead of any audio still held for reordering.
    """

    def __init__(
        self,
        codec: Codec,
        dtmf_payload_type: int | None,
        reorder_depth: int = 2,
        max_conceal_ms: int = 200,
    ) -> None:
        if reorder_depth < 0:
            raise ValueError("reorder_depth must be >= 0")
        self.codec = codec
        self.dtmf_payload_type = dtmf_payload_type
        self.reorder_depth = reorder_depth
        self._max_conceal = max(1, max_conceal_ms * codec.clock_rate // 1000)
        self._decode_negotiated = codec_decoder(codec.name)
        self._detector = DtmfDetector(codec.clock_rate)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._ssrc: int | None = None
        self._next = 0  # extended sequence number of the next packet to play
        self._highest = -1
        self._held: dict[int, _Held] = {}
        self._played: set[int] = set()
        self._played_order: deque[int] = deque()
        self._end_ts: int | None = None  # timestamp just past the last audio played
        self._last_samples = 160
        self._probe: _Held | None = None

    @property
    def ssrc(self) -> int | None:
        return self._ssrc

    def receive(self, data: bytes) -> list[AudioChunk | DtmfDigit]:
        self.stats["received"] += 1
        if is_rtcp(data):
            self.stats["rtcp"] += 1
            return []
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.stats["malformed"] += 1
            return []
        out: list[AudioChunk | DtmfDigit] = []
        pt = packet.payload_type
        pcm: NDArray[np.int16] | None = None
        is_audio_stream = True
        if self.dtmf_payload_type is not None and pt == self.dtmf_payload_type:
            digit = self._detector.feed(packet)
            if digit is not None:
                self.stats["dtmf"] += 1
                out.append(digit)
            is_audio_stream = False
        elif pt in _STATIC_AUDIO or pt == self.codec.payload_type:
            # Some peers switch between the offered G.711 laws mid-call, so each packet is
            # decoded by its own payload type rather than the negotiated one.
            decode = _DECODERS[_STATIC_AUDIO[pt]] if pt in _STATIC_AUDIO else self._decode_negotiated
            if packet.payload:
                pcm = decode(packet.payload)
        elif pt == PT_CN:
            self.stats["comfort_noise"] += 1
        else:
            self.stats["unknown_pt"] += 1
            is_audio_stream = False
        if packet.ssrc != self._ssrc:
            # Only audio may start a new stream: DTMF on a separate SSRC (some gateways do that)
            # or a stray foreign stream must not reset the one we are playing.
            if not is_audio_stream:
                return out
            if self._ssrc is not None:
                self.stats["ssrc_changes"] += 1
                out.extend(self._release(depth=0, drain=True))
            self._start(packet.ssrc, packet.sequence)
        out.extend(self._accept(_Held(packet, pcm)))
        return out

    def flush(self) -> list[AudioChunk]:
        """Play out everything held for reordering, concealing the gaps (call end, say)."""
        return self._release(depth=0, drain=True)

    def _start(self, ssrc: int, sequence: int) -> None:
        self._ssrc = ssrc
        self._restart_sequence(sequence)

    def _restart_sequence(self, sequence: int) -> None:
        self._next = sequence
        self._highest = sequence - 1
        self._held.clear()
        self._played.clear()
        self._played_order.clear()
        self._end_ts = None
        self._probe = None

    def _extend(self, sequence: int) -> int:
        delta = (sequence - self._next) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        return self._next + delta

    def _accept(self, held: _Held) -> list[AudioChunk]:
        ext = self._extend(held.packet.sequence)
        delta = ext - self._next
        if delta < -_MAX_MISORDER or delta > _MAX_DROPOUT:
            return self._jump(held)
        if self._probe is not None:
            self.stats["late"] += 1
            self._probe = None
        if delta < 0:
            self.stats["duplicates" if ext in self._played else "late"] += 1
            return []
        if ext in self._held:
            self.stats["duplicates"] += 1
            return []
        if ext < self._highest:
            self.stats["reordered"] += 1
        self._highest = max(self._highest, ext)
        self._held[ext] = held
        return self._release(self.reorder_depth)

    def _jump(self, held: _Held) -> list[AudioChunk]:
        # RFC 3550 A.1: a far jump is believed once the next packet follows on from it (a peer
        # that restarted its sequence on a re-INVITE); a lone one is a stray and dropped.
        probe = self._probe
        if probe is None or held.packet.sequence != (probe.packet.sequence + 1) % _SEQ_MOD:
            if probe is not None:
                self.stats["late"] += 1
            self._probe = held
            return []
        self.stats["resyncs"] += 1
        out = self._release(depth=0, drain=True)
        self._restart_sequence(probe.packet.sequence)
        out.extend(self._accept(probe))
        out.extend(self._accept(held))
        return out

    def _release(self, depth: int, drain: bool = False) -> list[AudioChunk]:
        out: list[AudioChunk] = []
        held = self._held
        while held:
            while self._next in held:
                chunk = self._play(self._next, held.pop(self._next))
                if chunk is not None:
                    out.append(chunk)
                self._next += 1
            if not held or (not drain and len(held) <= depth):
                break
            first = min(held)
            missing = first - self._next
            self.stats["lost"] += missing
            out.append(self._conceal(missing, held[first]))
            self._next = first
        return out

    def _play(self, ext: int, held: _Held) -> AudioChunk | None:
        self._played.add(ext)
        self._played_order.append(ext)
        if len(self._played_order) > _REMEMBERED_SEQUENCES:
            self._played.discard(self._played_order.popleft())
        if held.pcm is None:
            return None
        samples = len(held.pcm)
        self.stats["decoded"] += 1
        self._end_ts = (held.packet.timestamp + samples) % _TS_MOD
        self._last_samples = samples
        return AudioChunk(held.pcm)

    def _conceal(self, missing: int, after: _Held) -> AudioChunk:
        samples = missing * self._last_samples
        if self._end_ts is not None and after.pcm is not None:
            gap = (after.packet.timestamp - self._end_ts) % _TS_MOD
            if 0 < gap <= missing * _MAX_PACKET_SAMPLES:
                samples = gap
        samples = min(samples, self._max_conceal)
        self.stats["concealed_samples"] += samples
        return AudioChunk(np.zeros(samples, dtype=np.int16), concealed=True)


class RtpSender:
    """Numbers outgoing packets; the adapter paces them on a 20 ms clock.

    Every datagram returned is meant to occupy one ptime slot on the wire, so the RTP
    timestamp advances by ``samples_per_packet`` per datagram, DTMF included, and stays in
    step with the adapter's clock.
    """

    def __init__(
        self,
        codec: Codec,
        dtmf_payload_type: int | None,
        ssrc: int | None = None,
        ptime_ms: int = 20,
        *,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        if not 10 <= ptime_ms <= 60:
            raise ValueError(f"ptime must be 10-60 ms, got {ptime_ms}")
        self.codec = codec
        self.dtmf_payload_type = dtmf_payload_type
        self.ptime_ms = ptime_ms
        self.samples_per_packet = codec.clock_rate * ptime_ms // 1000
        self._encode = codec_encoder(codec.name)
        self._silence = bytes([_SILENCE_CODE[codec.name.upper()]]) * self.samples_per_packet
        # Random starts (RFC 3550 section 5.1) make known-plaintext attacks on SRTP harder and
        # keep a restarted sender from looking like a late duplicate of its old stream.
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc % _TS_MOD
        self.sequence = secrets.randbits(16) if sequence is None else sequence % _SEQ_MOD
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp % _TS_MOD
        self._marker = True

    def audio(self, pcm: NDArray[np.int16]) -> bytes:
        """One packet of exactly ``samples_per_packet`` samples; a short frame is padded."""
        samples = np.asarray(pcm)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(f"expected a 1-D int16 array, got {samples.dtype} with shape {samples.shape}")
        if len(samples) > self.samples_per_packet:
            raise ValueError(f"{len(samples)} samples do not fit a {self.samples_per_packet}-sample packet")
        if len(samples) < self.samples_per_packet:
            samples = np.concatenate([samples, np.zeros(self.samples_per_packet - len(samples), np.int16)])
        data = self._packet(self.codec.payload_type, self._encode(samples), self._marker, self.timestamp)
        self._marker = False
        self._advance(1)
        return data

    def silence(self) -> bytes:
        """One packet of codec silence; the next audio packet starts a talkspurt."""
        data = self._packet(self.codec.payload_type, self._silence, False, self.timestamp)
        self._marker = True
        self._advance(1)
        return data

    def mark_talkspurt(self) -> None:
        self._marker = True

    def dtmf(self, digit: str, duration_ms: int = 100, volume: int = 10) -> list[bytes]:
        """RFC 4733 packets for one key press, one per ptime slot, the final one sent 3 times.

        All carry the event's start timestamp; each retransmission still takes a new sequence
        number so that receivers' duplicate filters keep it.
        """
        if self.dtmf_payload_type is None:
            raise ValueError("telephone-event was not negotiated")
        event = digit_event(digit)
        total = duration_ms * self.codec.clock_rate // 1000
        if not 0 < total <= 0xFFFF:
            raise ValueError(f"DTMF duration out of range: {duration_ms} ms")
        spp = self.samples_per_packet
        updates = -(-total // spp)
        start = self.timestamp
        packets: list[bytes] = []
        for i in range(1, updates + 1):
            end = i == updates
            payload = serialize_event(TelephoneEvent(event, end, volume, min(i * spp, total)))
            for _ in range(3 if end else 1):
                packets.append(self._packet(self.dtmf_payload_type, payload, not packets, start))
        self._advance(len(packets))
        self._marker = True
        return packets

    def _packet(self, payload_type: int, payload: bytes, marker: bool, timestamp: int) -> bytes:
        data = serialize_rtp(RtpPacket(payload_type, self.sequence, timestamp, self.ssrc, payload, marker))
        self.sequence = (self.sequence + 1) % _SEQ_MOD
        return data

    def _advance(self, packets: int) -> None:
        self.timestamp = (self.timestamp + packets * self.samples_per_packet) % _TS_MOD
