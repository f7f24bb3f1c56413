"""RFC 4733 telephone-event payloads and the one-digit-per-event detector."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.sip.dtmf import (
    EVENTS,
    DtmfDetector,
    DtmfDigit,
    DtmfError,
    TelephoneEvent,
    digit_event,
    event_digit,
    parse_event,
    serialize_event,
)
from telephony.sip.rtp import RtpError, RtpPacket


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        # digit 5, no end, volume 10, 160 samples (20 ms)
        (bytes.fromhex("050a00a0"), TelephoneEvent(5, False, 10, 160)),
        # '#', end bit, volume 7, 800 samples (100 ms)
        (bytes.fromhex("0b870320"), TelephoneEvent(11, True, 7, 800)),
        # 'D', end, loudest, maximum duration
        (bytes.fromhex("0f80ffff"), TelephoneEvent(15, True, 0, 0xFFFF)),
        # flash (16), quietest volume
        (bytes.fromhex("103f0000"), TelephoneEvent(16, False, 63, 0)),
    ],
)
def test_vectors(payload: bytes, event: TelephoneEvent) -> None:
    assert parse_event(payload) == event
    assert serialize_event(event) == payload


def test_reserved_bit_is_ignored_and_trailing_bytes_too() -> None:
    assert parse_event(bytes.fromhex("01ca0140") + b"\x00\x00") == TelephoneEvent(1, True, 10, 320)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_short_payload(payload: bytes) -> None:
    with pytest.raises(DtmfError):
        parse_event(payload)
    # Callers that catch ValueError (as with RtpError) catch this too.
    assert issubclass(DtmfError, ValueError)


@pytest.mark.parametrize(
    "event",
    [TelephoneEvent(256, False, 0, 0), TelephoneEvent(1, False, 64, 0), TelephoneEvent(1, False, 0, 65536)],
)
def test_serialize_rejects_out_of_range(event: TelephoneEvent) -> None:
    with pytest.raises(DtmfError):
        serialize_event(event)


def test_all_sixteen_digits() -> None:
    assert EVENTS == "0123456789*#ABCD"
    for code, digit in enumerate(EVENTS):
        assert event_digit(code) == digit
        assert digit_event(digit) == code
        assert digit_event(digit.lower()) == code
        payload = serialize_event(TelephoneEvent(code, False, 10, 160))
        assert event_digit(parse_event(payload).event) == digit
    assert event_digit(16) is None and event_digit(-1) is None
    for bad in ["", "E", "12", "x", " "]:
        with pytest.raises(DtmfError):
            digit_event(bad)


def _pkt(ts: int, event: int, end: bool, duration: int, ssrc: int = 1, seq: int = 0) -> RtpPacket:
    return RtpPacket(101, seq, ts, ssrc, serialize_event(TelephoneEvent(event, end, 10, duration)))


def test_detector_one_digit_per_event() -> None:
    det = DtmfDetector()
    first = det.feed(_pkt(1000, 7, False, 160))
    assert first == DtmfDigit("7", 20)
    assert det.feed(_pkt(1000, 7, False, 320)) is None
    for _ in range(3):
        assert det.feed(_pkt(1000, 7, True, 800)) is None
    # Same digit again is a new event with a new timestamp.
    assert det.feed(_pkt(3000, 7, True, 800)) == DtmfDigit("7", 100)
    # A late duplicate of the first event stays silent.
    assert det.feed(_pkt(1000, 7, False, 160)) is None


def test_detector_keys_by_ssrc_and_ignores_non_digits() -> None:
    det = DtmfDetector()
    assert det.feed(_pkt(1000, 1, False, 160, ssrc=1)) == DtmfDigit("1", 20)
    assert det.feed(_pkt(1000, 2, False, 160, ssrc=2)) == DtmfDigit("2", 20)
    assert det.feed(_pkt(5000, 16, False, 160)) is None  # flash
    assert det.feed(RtpPacket(101, 0, 9000, 1, b"\x01")) is None  # short payload


@given(st.binary(max_size=16))
def test_random_payloads(payload: bytes) -> None:
    try:
        ev = parse_event(payload)
    except DtmfError:
        assert len(payload) < 4
        return
    assert serialize_event(ev)[0] == payload[0]
    DtmfDetector().feed(RtpPacket(101, 0, 0, 0, payload))


def test_error_types_are_value_errors() -> None:
    assert issubclass(RtpError, ValueError)
