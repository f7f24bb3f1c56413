"""What a simulated Twilio caller hears: received audio frames, the bot's replies, call events.

`testkit.twilio_caller.TwilioCall` records these; tests and benchmarks read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from testkit.audio import FRAME_SAMPLES, SAMPLE_RATE, Speech, ulaw_decode, ulaw_encode

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
AudioLike = Speech | bytes | bytearray | NDArray[np.int16]


class ReplyTimeout(TimeoutError):
    """The server did not start (or finish) speaking in time."""


@dataclass(frozen=True, slots=True)
class RxChunk:
    """One `media` message from the server."""

    at: float  # arrival time
    play_at: float  # when it starts playing at the caller, on the playback clock
    payload: bytes


@dataclass(frozen=True, slots=True)
class RxFrame:
    """20 ms of received audio (a `media` payload cut into 160-byte frames)."""

    at: float  # arrival time of the message that carried it
    play_at: float
    ulaw: bytes
    rms: float


@dataclass(slots=True)
class Reply:
    """What the bot said: from its first sound after some instant until it went quiet."""

    first_at: float  # arrival of the first sound frame
    last_at: float  # arrival of the last sound frame
    frames: list[RxFrame]
    complete: bool  # False when the deadline came before the bot went quiet
    cleared: bool = False  # a `clear` arrived while it was being received

    @property
    def ulaw(self) -> bytes:
        return b"".join(f.ulaw for f in self.frames)

    @property
    def pcm(self) -> NDArray[np.int16]:
        return ulaw_decode(self.ulaw)

    @property
    def duration_s(self) -> float:
        return len(self.frames) * FRAME_S

    @property
    def play_end(self) -> float:
        return self.frames[-1].play_at + FRAME_S if self.frames else self.last_at


@dataclass(slots=True)
class CallEvent:
    at: float
    kind: str  # "mark", "clear", "mark_echoed", "sent_dtmf", "closed", "bad_message", ...
    detail: dict[str, Any] = field(default_factory=dict)


def to_ulaw(audio: AudioLike) -> bytes:
    """Speech -> its μ-law; bytes are taken as μ-law already; an int16 array is encoded."""
    if isinstance(audio, Speech):
        return audio.ulaw
    if isinstance(audio, bytes | bytearray):
        return bytes(audio)
    return ulaw_encode(np.asarray(audio, dtype=np.int16))


def concat_pcm(replies: Iterable[Reply]) -> NDArray[np.int16]:
    parts = [r.pcm for r in replies]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
