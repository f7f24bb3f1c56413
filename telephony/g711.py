"""ITU-T G.711 μ-law and A-law codecs, vectorized with numpy.

Bit-exact with the reference implementation every telephony stack agrees on: Sun's
public-domain ``g711.c``, which is also what CPython's ``audioop`` (deprecated, gone in
3.13) does for 16-bit samples. Two details decide that exactness:

* 16-bit PCM is narrowed with an *arithmetic* right shift before encoding (by 2 for
  μ-law's 14-bit domain, by 3 for A-law's 13-bit one), so rounding goes toward
  negative infinity and the codecs are not symmetric about zero.
* The code byte is inverted: all bits for μ-law (silence is 0xFF), the even bits for
  A-law (silence is 0xD5).

Both directions are single table lookups. The tables are built once at import from a
vectorized transcription of the reference algorithm, so a 20 ms frame costs one numpy
fancy-index rather than 160 Python-level branches.
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

#: μ-law code of a zero sample. Pad short frames with this, never with 0x00 (full scale).
ULAW_SILENCE: Final = 0xFF
#: A-law code of the smallest positive sample, the conventional A-law silence.
ALAW_SILENCE: Final = 0xD5

_QUANT_MASK: Final = 0x0F
_SEG_MASK: Final = 0x70
_SEG_SHIFT: Final = 4
_SIGN_BIT: Final = 0x80
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159

# Upper bound of each segment in the (biased) 14-bit μ-law and 13-bit A-law domains.
_ULAW_SEG_END: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)

PcmInput = NDArray[np.int16] | bytes | bytearray | memoryview
CodeInput = NDArray[np.uint8] | bytes | bytearray | memoryview


def _segment(magnitude: NDArray[np.int32], seg_end: NDArray[np.int32]) -> NDArray[np.int32]:
    """Index of the first segment whose end is >= magnitude (8 when past the last)."""
    return np.searchsorted(seg_end, magnitude, side="left").astype(np.int32)


def _ulaw_encode_14bit(pcm14: NDArray[np.int32]) -> NDArray[np.uint8]:
    negative = pcm14 < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm14), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(magnitude, _ULAW_SEG_END)
    uval = (seg << _SEG_SHIFT) | ((magnitude >> (seg + 1)) & _QUANT_MASK)
    # CLIP + bias lands one past the last segment; the reference saturates it to 0x7F.
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8)


def _ulaw_decode_codes(codes: NDArray[np.int32]) -> NDArray[np.int16]:
    inverted = ~codes & 0xFF
    t = ((inverted & _QUANT_MASK) << 3) + _ULAW_BIAS
    t = t << ((inverted & _SEG_MASK) >> _SEG_SHIFT)
    return np.where(inverted & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_encode_13bit(pcm13: NDArray[np.int32]) -> NDArray[np.uint8]:
    negative = pcm13 < 0
    mask = np.where(negative, 0x55, 0xD5)
    # One's-complement magnitude: -1 and 0 share a segment, as in the reference.
    magnitude = np.where(negative, -pcm13 - 1, pcm13)
    seg = _segment(magnitude, _ALAW_SEG_END)
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << _SEG_SHIFT) | ((magnitude >> shift) & _QUANT_MASK)
    # 13-bit input never exceeds 0xFFF in magnitude, so seg stays <= 7 here too.
    return (aval ^ mask).astype(np.uint8)


def _alaw_decode_codes(codes: NDArray[np.int32]) -> NDArray[np.int16]:
    toggled = codes ^ 0x55
    t = (toggled & _QUANT_MASK) << 4
    seg = (toggled & _SEG_MASK) >> _SEG_SHIFT
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(toggled & _SIGN_BIT, t, -t).astype(np.int16)


_Table = TypeVar("_Table", bound=np.ndarray)


def _read_only(table: _Table) -> _Table:
    table.flags.writeable = False
    return table


# Encode tables are indexed by the int16 sample's bit pattern read as uint16.
_ALL_PCM: Final = np.arange(1 << 16, dtype=np.uint16).view(np.int16).astype(np.int32)
_ALL_CODES: Final = np.arange(256, dtype=np.int32)
_ULAW_ENCODE: Final = _read_only(_ulaw_encode_14bit(_ALL_PCM >> 2))
_ALAW_ENCODE: Final = _read_only(_alaw_encode_13bit(_ALL_PCM >> 3))
_ULAW_DECODE: Final = _read_only(_ulaw_decode_codes(_ALL_CODES))
_ALAW_DECODE: Final = _read_only(_alaw_decode_codes(_ALL_CODES))


def _as_pcm(pcm: PcmInput) -> NDArray[np.int16]:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM array must be int16, got {pcm.dtype}")
        return pcm
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(pcm)}")
    # Pipecat and WAV carry little-endian samples whatever the host order.
    return np.frombuffer(pcm, dtype="<i2")


def _as_codes(codes: CodeInput) -> NDArray[np.uint8]:
    if isinstance(codes, np.ndarray):
        if codes.dtype != np.uint8:
            raise TypeError(f"G.711 code array must be uint8, got {codes.dtype}")
        return codes
    return np.frombuffer(codes, dtype=np.uint8)


def _encode(pcm: PcmInput, table: NDArray[np.uint8]) -> bytes:
    samples = _as_pcm(pcm)
    return table[samples.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def ulaw_encode(pcm: PcmInput) -> bytes:
    """Encode 16-bit PCM (an int16 array or little-endian bytes) to μ-law, one byte a sample."""
    return _encode(pcm, _ULAW_ENCODE)


def alaw_encode(pcm: PcmInput) -> bytes:
    """Encode 16-bit PCM (an int16 array or little-endian bytes) to A-law, one byte a sample."""
    return _encode(pcm, _ALAW_ENCODE)


def ulaw_decode(codes: CodeInput) -> NDArray[np.int16]:
    """Decode μ-law bytes to a new int16 PCM array."""
    return _ULAW_DECODE[_as_codes(codes)]


def alaw_decode(codes: CodeInput) -> NDArray[np.int16]:
    """Decode A-law bytes to a new int16 PCM array."""
    return _ALAW_DECODE[_as_codes(codes)]
