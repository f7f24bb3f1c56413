"""RTP packets, the receiver's reordering/loss/DTMF handling, and the sender's numbering."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from telephony import g711
from telephony.sip.dtmf import DtmfDetector, parse_event
from telephony.sip.rtp import (
    AudioChunk,
    DtmfDigit,
    RtpError,
    RtpPacket,
    RtpReceiver,
    RtpSender,
    codec_decoder,
    codec_encoder,
    is_rtcp,
    parse_rtp,
    serialize_rtp,
)
from telephony.sip.sdp import Codec

PCMU = Codec(0, "PCMU")
PCMA = Codec(8, "PCMA")
SSRC = 0x1234ABCD


def tone(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, n, dtype=np.int16)


def ulaw(n: int, seed: int = 0) -> bytes:
    return g711.ulaw_encode(tone(n, seed))


def datagram(seq: int, ts: int, payload: bytes, pt: int = 0, ssrc: int = SSRC, marker: bool = False) -> bytes:
    return serialize_rtp(RtpPacket(pt, seq % 65536, ts % 2**32, ssrc, payload, marker))


def audio_of(out: list[AudioChunk | DtmfDigit]) -> list[AudioChunk]:
    return [item for item in out if isinstance(item, AudioChunk)]


def stream(first_seq: int, first_ts: int, count: int, samples: int = 160) -> list[bytes]:
    return [datagram(first_seq + i, first_ts + i * samples, ulaw(samples, i)) for i in range(count)]


# ---------------------------------------------------------------- packets


def test_known_header_bytes() -> None:
    data = bytes.fromhex("80e0 0102 00000a00 deadbeef".replace(" ", "")) + b"\xff" * 4
    pkt = parse_rtp(data)
    assert pkt == RtpPacket(96, 0x0102, 0xA00, 0xDEADBEEF, b"\xff" * 4, marker=True)
    assert serialize_rtp(pkt) == data


def test_round_trip_with_csrc_extension_padding() -> None:
    pkt = RtpPacket(
        payload_type=8,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=7,
        payload=b"abc",
        marker=True,
        csrc=(1, 2, 0xFFFFFFFF),
        extension=b"\x10\x20\x30\x40\x50\x60\x70\x80",
        extension_profile=0xBEDE,
        padding=5,
    )
    data = serialize_rtp(pkt)
    assert len(data) == 12 + 12 + 4 + 8 + 3 + 5
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-1] == 5
    assert parse_rtp(data) == pkt


def test_padding_and_extension_are_not_payload() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10, 0, 1, 2, 3)
    ext = struct.pack("!HH", 0x1000, 1) + b"EXT!"
    data = header + ext + b"PAYLOAD" + b"\x00\x00\x03"
    pkt = parse_rtp(data)
    assert pkt.payload == b"PAYLOAD" and pkt.extension == b"EXT!" and pkt.padding == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00\x00\x01",
        bytes(11),
        bytes.fromhex("40000001000000000000000a"),  # version 1
        bytes.fromhex("c0000001000000000000000a"),  # version 3
        bytes.fromhex("82000001000000000000000a") + bytes(4),  # 2 CSRCs, room for 1
        bytes.fromhex("90000001000000000000000a") + b"\x00\x00",  # extension header cut
        bytes.fromhex("90000001000000000000000a") + b"\x00\x00\x00\x02" + bytes(4),  # body cut
        bytes.fromhex("a0000001000000000000000a") + b"ab\x00",  # padding count 0
        bytes.fromhex("a0000001000000000000000a") + b"ab\x04",  # padding longer than payload
        bytes.fromhex("80c80006000000010000000a") + bytes(16),  # RTCP sender report
    ],
)
def test_malformed_raises_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_is_rtcp() -> None:
    sender_report = bytes.fromhex("80c8000600000001") + bytes(20)
    receiver_report = bytes.fromhex("81c90007") + bytes(28)
    bye = bytes.fromhex("81cb0001") + bytes(4)
    assert is_rtcp(sender_report) and is_rtcp(receiver_report) and is_rtcp(bye)
    assert not is_rtcp(datagram(1, 1, b"x"))
    assert not is_rtcp(datagram(1, 1, b"x", pt=101, marker=True))
    assert not is_rtcp(b"\x80")
    with pytest.raises(RtpError, match="rtcp"):
        parse_rtp(sender_report)


@pytest.mark.parametrize(
    "pkt",
    [
        RtpPacket(128, 0, 0, 0, b""),
        RtpPacket(0, 65536, 0, 0, b""),
        RtpPacket(0, 0, 2**32, 0, b""),
        RtpPacket(0, 0, 0, -1, b""),
        RtpPacket(0, 0, 0, 0, b"", csrc=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, b"", extension=b"abc"),
        RtpPacket(0, 0, 0, 0, b"", padding=256),
    ],
)
def test_serialize_rejects_bad_fields(pkt: RtpPacket) -> None:
    with pytest.raises(RtpError):
        serialize_rtp(pkt)


@given(st.binary(max_size=80))
def test_random_bytes_only_raise_rtp_error(data: bytes) -> None:
    try:
        pkt = parse_rtp(data)
    except RtpError:
        return
    # What parses re-serializes to the same header and payload (padding bytes become zeros).
    again = serialize_rtp(pkt)
    assert parse_rtp(again) == pkt


def test_codec_lookup() -> None:
    pcm = tone(160)
    assert codec_encoder("PCMU")(pcm) == g711.ulaw_encode(pcm)
    assert codec_encoder("pcma")(pcm) == g711.alaw_encode(pcm)
    codes = g711.ulaw_encode(pcm)
    assert np.array_equal(codec_decoder("PCMU")(codes), g711.ulaw_decode(codes))
    with pytest.raises(RtpError):
        codec_decoder("opus")
    with pytest.raises(RtpError):
        codec_encoder("G722")


# ---------------------------------------------------------------- receiver


def test_in_order_20ms_is_bit_exact() -> None:
    rx = RtpReceiver(PCMU, 101)
    out: list[AudioChunk | DtmfDigit] = []
    for data in stream(1000, 5000, 5):
        out.extend(rx.receive(data))
    assert [len(c.pcm) for c in audio_of(out)] == [160] * 5
    for i, chunk in enumerate(audio_of(out)):
        assert chunk.pcm.dtype == np.int16 and not chunk.concealed
        assert np.array_equal(chunk.pcm, g711.ulaw_decode(ulaw(160, i)))
    assert rx.stats["decoded"] == 5 and rx.stats["lost"] == 0 and rx.stats["received"] == 5


@pytest.mark.parametrize("samples", [80, 240, 480])
def test_other_packet_sizes(samples: int) -> None:
    rx = RtpReceiver(PCMU, None)
    out = [item for data in stream(0, 0, 4, samples) for item in rx.receive(data)]
    assert [len(c.pcm) for c in audio_of(out)] == [samples] * 4


@pytest.mark.parametrize("samples", [80, 160, 240, 480])
def test_loss_is_concealed_from_timestamps(samples: int) -> None:
    rx = RtpReceiver(PCMU, None)
    packets = stream(10, 0, 8, samples)
    out = [item for i, data in enumerate(packets) if i not in (2, 3) for item in rx.receive(data)]
    chunks = audio_of(out)
    assert [c.concealed for c in chunks] == [False, False, True, False, False, False, False]
    assert len(chunks[2].pcm) == 2 * samples
    assert not chunks[2].pcm.any()
    assert rx.stats["lost"] == 2
    # The missing packet turning up afterwards is too late: dropped, not played out of order.
    assert rx.receive(packets[2]) == []
    assert rx.stats["late"] == 1


def test_concealment_is_capped() -> None:
    rx = RtpReceiver(PCMU, None, reorder_depth=0)
    packets = stream(0, 0, 40)
    rx.receive(packets[0])
    (concealed, chunk) = audio_of(rx.receive(packets[30]))
    assert concealed.concealed and len(concealed.pcm) == 1600  # 200 ms
    assert not chunk.concealed


def test_reorder_two_swapped() -> None:
    rx = RtpReceiver(PCMU, None)
    packets = stream(500, 0, 5)
    order = [0, 2, 1, 3, 4]
    out = [item for i in order for item in rx.receive(packets[i])]
    chunks = audio_of(out)
    assert len(chunks) == 5 and not any(c.concealed for c in chunks)
    for i, chunk in enumerate(chunks):
        assert np.array_equal(chunk.pcm, g711.ulaw_decode(ulaw(160, i)))
    assert rx.stats["reordered"] == 1 and rx.stats["lost"] == 0


def test_reorder_held_until_depth_exceeded() -> None:
    rx = RtpReceiver(PCMU, None, reorder_depth=2)
    packets = stream(0, 0, 6)
    assert audio_of(rx.receive(packets[0]))
    assert rx.receive(packets[2]) == []
    assert rx.receive(packets[3]) == []
    out = audio_of(rx.receive(packets[4]))  # third held: packet 1 is given up
    assert [c.concealed for c in out] == [True, False, False, False]


def test_duplicates_dropped() -> None:
    rx = RtpReceiver(PCMU, None)
    packets = stream(0, 0, 4)
    order = [0, 1, 1, 3, 3, 2, 0]
    out = [item for i in order for item in rx.receive(packets[i])]
    assert len(audio_of(out)) == 4
    assert rx.stats["duplicates"] == 3


def test_ssrc_change_starts_a_new_stream() -> None:
    rx = RtpReceiver(PCMU, None)
    first = stream(100, 0, 3)
    second = [datagram(40000 + i, 99999 + 160 * i, ulaw(160, 9), ssrc=42) for i in range(3)]
    out = [item for data in first + second for item in rx.receive(data)]
    assert len(audio_of(out)) == 6
    assert rx.stats["ssrc_changes"] == 1 and rx.stats["lost"] == 0 and rx.ssrc == 42


def test_ssrc_change_flushes_held_packets() -> None:
    rx = RtpReceiver(PCMU, None)
    a = stream(100, 0, 3)
    rx.receive(a[0])
    rx.receive(a[2])
    out = audio_of(rx.receive(datagram(7, 7, ulaw(160), ssrc=42)))
    assert [c.concealed for c in out] == [True, False, False]


def test_sequence_and_timestamp_wraparound() -> None:
    rx = RtpReceiver(PCMU, None)
    packets = stream(65533, 2**32 - 320, 6)
    order = [0, 1, 3, 2, 4, 5]  # reordered across the wrap
    out = [item for i in order for item in rx.receive(packets[i])]
    assert len(audio_of(out)) == 6 and rx.stats["lost"] == 0 and rx.stats["reordered"] == 1
    # Loss across a timestamp wrap still conceals the right length.
    rx = RtpReceiver(PCMA, None)
    packets = [datagram(i, 2**32 - 480 + 240 * i, g711.alaw_encode(tone(240)), pt=8) for i in range(5)]
    out = [item for i in (0, 3, 4) for item in rx.receive(packets[i])]
    assert rx.receive(b"") == []
    out += rx.flush()
    assert [len(c.pcm) for c in audio_of(out)] == [240, 480, 240, 240]


def test_unknown_pt_and_comfort_noise_ignored() -> None:
    rx = RtpReceiver(PCMU, 101)
    out: list[AudioChunk | DtmfDigit] = []
    out += rx.receive(datagram(0, 0, ulaw(160)))
    out += rx.receive(datagram(1, 160, b"\x01\x02", pt=96))
    out += rx.receive(datagram(2, 320, b"\x40", pt=13))
    out += rx.receive(datagram(3, 480, ulaw(160)))
    assert len(audio_of(out)) == 2
    # They occupied sequence numbers, so nothing was lost.
    assert rx.stats["lost"] == 0
    assert rx.stats["unknown_pt"] == 1 and rx.stats["comfort_noise"] == 1


def test_foreign_unknown_stream_does_not_reset() -> None:
    rx = RtpReceiver(PCMU, None)
    rx.receive(datagram(0, 0, ulaw(160)))
    rx.receive(datagram(9000, 0, b"video", pt=96, ssrc=99))
    assert rx.stats["ssrc_changes"] == 0
    assert len(audio_of(rx.receive(datagram(1, 160, ulaw(160))))) == 1


def test_both_laws_decode_bit_exactly() -> None:
    pcm = np.arange(-32768, 32768, 128, dtype=np.int16)[:160]
    for negotiated in (PCMU, PCMA):
        rx = RtpReceiver(negotiated, None)
        (u,) = audio_of(rx.receive(datagram(0, 0, g711.ulaw_encode(pcm), pt=0)))
        (a,) = audio_of(rx.receive(datagram(1, 160, g711.alaw_encode(pcm), pt=8)))
        assert np.array_equal(u.pcm, g711.ulaw_decode(g711.ulaw_encode(pcm)))
        assert np.array_equal(a.pcm, g711.alaw_decode(g711.alaw_encode(pcm)))


def test_bad_packets_and_rtcp_counted() -> None:
    rx = RtpReceiver(PCMU, None)
    assert rx.receive(b"\x00" * 3) == []
    assert rx.receive(bytes.fromhex("80c8000600000001") + bytes(20)) == []
    assert rx.stats["malformed"] == 1 and rx.stats["rtcp"] == 1


def test_sequence_restart_without_ssrc_change_resyncs() -> None:
    rx = RtpReceiver(PCMU, None)
    for data in stream(100, 0, 3):
        rx.receive(data)
    # One stray far packet is dropped; two in sequence are a restarted stream.
    assert rx.receive(datagram(30000, 0, ulaw(160))) == []
    assert rx.receive(datagram(20000, 0, ulaw(160))) == []
    out = audio_of(rx.receive(datagram(20001, 160, ulaw(160))))
    assert len(out) == 2 and rx.stats["resyncs"] == 1


def test_dtmf_packets_give_one_digit() -> None:
    tx = RtpSender(PCMU, 101, ssrc=SSRC, sequence=65530)
    rx = RtpReceiver(PCMU, 101)
    datagrams = [tx.audio(tone(160)), *tx.dtmf("#", 120), tx.audio(tone(160))]
    datagrams.insert(4, datagrams[3])  # a network duplicate of an update
    out = [item for data in datagrams for item in rx.receive(data)]
    digits = [item for item in out if isinstance(item, DtmfDigit)]
    assert digits == [DtmfDigit("#", 20)]
    assert len(audio_of(out)) == 2 and rx.stats["lost"] == 0 and rx.stats["dtmf"] == 1


def test_dtmf_on_its_own_ssrc() -> None:
    rx = RtpReceiver(PCMU, 101)
    dtmf = RtpSender(PCMU, 101, ssrc=5).dtmf("9")
    rx.receive(datagram(0, 0, ulaw(160)))
    out = [item for data in dtmf for item in rx.receive(data)]
    assert out == [DtmfDigit("9", 20)]
    assert rx.stats["ssrc_changes"] == 0
    assert len(audio_of(rx.receive(datagram(1, 160, ulaw(160))))) == 1


# ---------------------------------------------------------------- sender


def test_sender_numbers_and_marks_packets() -> None:
    tx = RtpSender(PCMU, 101, ssrc=99, sequence=65534, timestamp=2**32 - 160)
    assert tx.samples_per_packet == 160
    packets = [parse_rtp(tx.audio(tone(160, i))) for i in range(3)]
    assert [p.sequence for p in packets] == [65534, 65535, 0]
    assert [p.timestamp for p in packets] == [2**32 - 160, 0, 160]
    assert [p.marker for p in packets] == [True, False, False]
    assert all(p.ssrc == 99 and p.payload_type == 0 and len(p.payload) == 160 for p in packets)
    assert packets[1].payload == g711.ulaw_encode(tone(160, 1))


def test_sender_random_start_and_pcma() -> None:
    tx = RtpSender(PCMA, None)
    pkt = parse_rtp(tx.audio(tone(160)))
    assert pkt.payload_type == 8 and pkt.payload == g711.alaw_encode(tone(160))
    assert 0 <= pkt.sequence < 65536 and 0 <= pkt.ssrc < 2**32


def test_sender_frame_length() -> None:
    tx = RtpSender(PCMU, None)
    short = parse_rtp(tx.audio(tone(100)))
    assert len(short.payload) == 160 and short.payload[100:] == b"\xff" * 60
    with pytest.raises(ValueError):
        tx.audio(tone(161))
    with pytest.raises(ValueError):
        tx.audio(np.zeros(160, dtype=np.float32))  # type: ignore[arg-type]
    assert RtpSender(PCMU, None, ptime_ms=30).samples_per_packet == 240


def test_silence_then_talkspurt() -> None:
    for codec, decode in ((PCMU, g711.ulaw_decode), (PCMA, g711.alaw_decode)):
        tx = RtpSender(codec, None)
        first = parse_rtp(tx.audio(tone(160)))
        silent = parse_rtp(tx.silence())
        assert len(silent.payload) == 160 and not silent.marker
        assert int(np.abs(decode(silent.payload)).max()) <= 8
        assert silent.timestamp == first.timestamp + 160
        assert parse_rtp(tx.audio(tone(160))).marker
        assert not parse_rtp(tx.audio(tone(160))).marker
        tx.mark_talkspurt()
        assert parse_rtp(tx.audio(tone(160))).marker


def test_dtmf_packets_follow_rfc4733() -> None:
    tx = RtpSender(PCMU, 101, sequence=65533, timestamp=1000)
    tx.audio(tone(160))
    packets = [parse_rtp(d) for d in tx.dtmf("5", duration_ms=100, volume=10)]
    events = [parse_event(p.payload) for p in packets]
    assert len(packets) == 7
    assert {p.timestamp for p in packets} == {1160}
    assert {p.payload_type for p in packets} == {101}
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1, 2, 3, 4]
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {(e.event, e.volume) for e in events} == {(5, 10)}
    after = parse_rtp(tx.audio(tone(160)))
    assert after.timestamp == 1160 + 7 * 160 and after.marker and after.sequence == 5
    detector = DtmfDetector()
    digits = [d for p in packets if (d := detector.feed(p)) is not None]
    assert [d.digit for d in digits] == ["5"]


def test_dtmf_odd_duration_and_errors() -> None:
    tx = RtpSender(PCMU, 100)
    events = [parse_event(parse_rtp(d).payload) for d in tx.dtmf("a", duration_ms=50)]
    assert [e.duration for e in events] == [160, 320, 400, 400, 400] and events[0].event == 12
    with pytest.raises(ValueError):
        RtpSender(PCMU, None).dtmf("1")
    with pytest.raises(ValueError):
        tx.dtmf("E")
    with pytest.raises(ValueError):
        tx.dtmf("1", duration_ms=0)


# ---------------------------------------------------------------- receiver under random networks


@settings(max_examples=200, deadline=None)
@given(
    first_seq=st.integers(0, 65535),
    first_ts=st.integers(0, 2**32 - 1),
    plan=st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), min_size=1, max_size=60),
    depth=st.integers(0, 4),
)
def test_random_network_sample_count_is_exact(
    first_seq: int, first_ts: int, plan: list[tuple[bool, bool, int]], depth: int
) -> None:
    """Whatever is lost, duplicated or reordered, the timeline from the first packet received
    to the last is covered exactly once, by audio or by concealment."""
    drops = [dropped for dropped, _, _ in plan]
    run = longest = 0
    for dropped in drops:
        run = run + 1 if dropped else 0
        longest = max(longest, run)
    assume(longest <= 4 and not all(drops))
    arrivals: list[tuple[float, int]] = []
    for i, (dropped, duplicated, jitter) in enumerate(plan):
        if not dropped:
            arrivals.append((i + jitter, i))
            if duplicated:
                arrivals.append((i + jitter + 0.5, i))
    arrivals.sort()
    packets = stream(first_seq, first_ts, len(plan))
    rx = RtpReceiver(PCMU, 101, reorder_depth=depth)
    out = [item for _, i in arrivals for item in rx.receive(packets[i])]
    out += rx.flush()
    first = arrivals[0][1]
    last = max(i for _, i in arrivals)
    total = sum(len(c.pcm) for c in audio_of(out))
    assert total == 160 * (last - first + 1)
    assert rx.stats["decoded"] + rx.stats["lost"] == last - first + 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda seq, ts, pt, ssrc, n: datagram(seq, ts, bytes(n), pt=pt, ssrc=ssrc),
                st.integers(0, 65535),
                st.integers(0, 2**32 - 1),
                st.sampled_from([0, 8, 13, 96, 101, 127]),
                st.sampled_from([1, 2]),
                st.integers(0, 500),
            ),
        ),
        max_size=40,
    )
)
def test_random_datagrams_never_raise(datagrams: list[bytes]) -> None:
    rx = RtpReceiver(PCMU, 101)
    fed_samples = 0
    out: list[AudioChunk | DtmfDigit] = []
    for data in datagrams:
        out += rx.receive(data)
        try:
            pkt = parse_rtp(data)
            if pkt.payload_type in (0, 8):
                fed_samples += len(pkt.payload)
        except RtpError:
            pass
    out += rx.flush()
    chunks = audio_of(out)
    decoded = sum(len(c.pcm) for c in chunks if not c.concealed)
    assert decoded <= fed_samples
    assert all(len(c.pcm) <= 1600 for c in chunks if c.concealed)
    assert sum(len(c.pcm) for c in chunks if c.concealed) == rx.stats["concealed_samples"]
    assert rx.stats["received"] == len(datagrams)
