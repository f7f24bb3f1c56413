"""G.711 against the standard: every code decoded, every int16 sample encoded.

The reference here is a deliberately plain scalar reading of ITU-T G.711 (segment and
mantissa per sample, decision intervals by explicit comparison), independent of the
vectorized tables under test. audioop, where the interpreter still has it, is a second
witness: it carries Sun's reference g711.c.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from telephony import g711

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


# ---------------------------------------------------------------- scalar reference (G.711)


def ref_ulaw_decode(code: int) -> int:
    inverted = ~code & 0xFF
    negative = bool(inverted & 0x80)
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    # Reconstruction level in the 14-bit domain: the middle of the decision interval.
    magnitude14 = ((2 * mantissa + 33) << exponent) - 33
    return -4 * magnitude14 if negative else 4 * magnitude14


def ref_ulaw_encode(sample: int) -> int:
    value = sample >> 2  # 14-bit, rounding toward -inf as the standard's integer code does
    negative = value < 0
    magnitude = min(-value if negative else value, 8159)
    biased = magnitude + 33
    exponent = 0
    while exponent < 8 and biased >= (64 << exponent):
        exponent += 1
    if exponent == 8:
        code = 0x7F
    else:
        mantissa = (biased >> (exponent + 1)) - 16
        code = (exponent << 4) | mantissa
    return code ^ (0x7F if negative else 0xFF)


def ref_alaw_decode(code: int) -> int:
    toggled = code ^ 0x55  # A-law inverts the even bits
    positive = bool(toggled & 0x80)
    segment = (toggled >> 4) & 0x07
    mantissa = toggled & 0x0F
    step = (mantissa << 4) + 8 if segment == 0 else ((mantissa << 4) + 0x108) << (segment - 1)
    return step if positive else -step


def ref_alaw_encode(sample: int) -> int:
    value = sample >> 3  # 13-bit
    positive = value >= 0
    magnitude = value if positive else -value - 1
    if magnitude < 32:
        segment, mantissa = 0, magnitude >> 1
    else:
        segment = magnitude.bit_length() - 5
        mantissa = (magnitude >> segment) & 0x0F
    code = (0x80 if positive else 0) | (segment << 4) | mantissa
    return code ^ 0x55


def ref_table(function, inputs) -> list[int]:
    return [function(int(x)) for x in inputs]


# ---------------------------------------------------------------- known values


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8), (0xEF, 132), (0x8F, 16764)],
)
def test_ulaw_known_codes(code: int, expected: int) -> None:
    assert int(g711.ulaw_decode(bytes([code]))[0]) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0x80, 5504), (0x00, -5504), (0xD4, 24)],
)
def test_alaw_known_codes(code: int, expected: int) -> None:
    assert int(g711.alaw_decode(bytes([code]))[0]) == expected


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (-1, 0x7E, 0x55),  # asymmetric about zero: the arithmetic shift floors
        (4, 0xFE, 0xD5),
        (100, 0xF2, 0xD3),
        (-100, 0x72, 0x53),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
    ],
)
def test_known_encodings(sample: int, ulaw: int, alaw: int) -> None:
    pcm = np.array([sample], dtype=np.int16)
    assert g711.ulaw_encode(pcm) == bytes([ulaw])
    assert g711.alaw_encode(pcm) == bytes([alaw])


def test_silence_constants() -> None:
    assert g711.ulaw_decode(bytes([g711.ULAW_SILENCE]))[0] == 0
    assert g711.ulaw_encode(np.zeros(1, np.int16)) == bytes([g711.ULAW_SILENCE])
    assert g711.alaw_encode(np.zeros(1, np.int16)) == bytes([g711.ALAW_SILENCE])


# ---------------------------------------------------------------- exhaustive against the reference


def test_ulaw_decode_all_codes() -> None:
    assert g711.ulaw_decode(ALL_CODES).tolist() == ref_table(ref_ulaw_decode, range(256))


def test_alaw_decode_all_codes() -> None:
    assert g711.alaw_decode(ALL_CODES).tolist() == ref_table(ref_alaw_decode, range(256))


def test_ulaw_encode_all_samples() -> None:
    expected = bytes(ref_table(ref_ulaw_encode, ALL_PCM))
    assert g711.ulaw_encode(ALL_PCM) == expected


def test_alaw_encode_all_samples() -> None:
    expected = bytes(ref_table(ref_alaw_encode, ALL_PCM))
    assert g711.alaw_encode(ALL_PCM) == expected


CODECS = [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)]


@pytest.mark.parametrize(("encode", "decode"), CODECS)
def test_reconstruction_levels_are_fixed_points(encode, decode) -> None:
    levels = decode(ALL_CODES)
    assert np.array_equal(decode(encode(levels)), levels)


# ---------------------------------------------------------------- input forms


def test_bytes_pcm_is_little_endian() -> None:
    pcm = np.array([1000, -1000, 32767], dtype=np.int16)
    assert g711.ulaw_encode(pcm.astype("<i2").tobytes()) == g711.ulaw_encode(pcm)
    assert g711.alaw_encode(bytearray(pcm.astype("<i2").tobytes())) == g711.alaw_encode(pcm)


def test_decode_accepts_arrays_and_returns_int16() -> None:
    codes = np.frombuffer(ALL_CODES, dtype=np.uint8)
    decoded = g711.ulaw_decode(codes)
    assert decoded.dtype == np.int16
    assert np.array_equal(decoded, g711.ulaw_decode(memoryview(ALL_CODES)))


def test_empty_input() -> None:
    assert g711.ulaw_encode(b"") == b""
    assert g711.ulaw_decode(b"").size == 0


def test_rejects_odd_byte_count_and_wrong_dtypes() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.ulaw_encode(b"\x00\x01\x02")
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(4, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint8"):
        g711.alaw_decode(np.zeros(4, dtype=np.int16))  # type: ignore[arg-type]


def test_tables_are_read_only() -> None:
    decoded = g711.ulaw_decode(b"\xff")
    decoded[0] = 5  # the result is a fresh array, not a view of the table
    assert g711.ulaw_decode(b"\xff")[0] == 0


# ---------------------------------------------------------------- audioop cross-check


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python 3.13+
            pytest.skip("audioop is gone from this Python")
    return audioop


def test_matches_audioop() -> None:
    audioop = _audioop()
    pcm_bytes = ALL_PCM.astype("<i2").tobytes()
    assert g711.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(pcm_bytes, 2)
    assert g711.alaw_encode(ALL_PCM) == audioop.lin2alaw(pcm_bytes, 2)
    assert g711.ulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(ALL_CODES, 2)
