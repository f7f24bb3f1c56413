"""When a caller turn ends: Smart Turn's verdict, checked against the transcript.

The turn model is replaced by a scripted analyzer so each verdict is fixed; the real Smart Turn
model runs in the end-to-end call tests and the latency benchmark. Markers sent after fixed
delays bound when the turn ended.
"""

from __future__ import annotations

import pytest
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer, BaseTurnParams, EndOfTurnState
from pipecat.frames.frames import (
    InputAudioRawFrame,
    TextFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from voicebot.calls.turns import TranscriptAwareTurnStopStrategy

STOP_SECS = 0.2
GRACE_SECS = 0.5
LIMIT_SECS = 1.2


class ScriptedTurnModel(BaseTurnAnalyzer):
    def __init__(self, verdict: EndOfTurnState) -> None:
        super().__init__()
        self._verdict = verdict

    @property
    def speech_triggered(self) -> bool:
        return False

    @property
    def params(self) -> BaseTurnParams:
        return BaseTurnParams()

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        return EndOfTurnState.INCOMPLETE

    async def analyze_end_of_turn(self):
        return self._verdict, None

    def clear(self) -> None:
        pass


def marker(name: str) -> TextFrame:
    return TextFrame(name)


async def ended_between(
    verdict: EndOfTurnState,
    text: str,
    checkpoints: list[float],
    *,
    words_at: float | None = None,
    audio: bool = False,
) -> list[str]:
    """Names of the markers that went by before the turn ended (in seconds after the VAD stop).

    The transcript follows the VAD stop at once, or comes after the marker at `words_at`;
    with `audio`, a frame of silence follows every marker, as on a live call.
    """
    strategy = TranscriptAwareTurnStopStrategy(
        turn_analyzer=ScriptedTurnModel(verdict), grace_secs=GRACE_SECS, limit_secs=LIMIT_SECS
    )
    processor = UserTurnProcessor(
        user_turn_strategies=UserTurnStrategies(start=[VADUserTurnStartStrategy()], stop=[strategy]),
    )
    words = TranscriptionFrame(text, "caller", "now", finalized=True)
    frames = [
        VADUserStartedSpeakingFrame(start_secs=0.2),
        SleepFrame(0.05),
        VADUserStoppedSpeakingFrame(stop_secs=STOP_SECS),
    ]
    if words_at is None:
        frames.append(words)
    elapsed = 0.0
    for at in checkpoints:
        frames += [SleepFrame(at - elapsed), marker(f"{at}")]
        if audio:
            frames.append(InputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1))
        if at == words_at:
            frames.append(words)
        elapsed = at
    down, _ = await run_test(processor, frames_to_send=frames)
    seen = []
    for frame in down:
        if isinstance(frame, UserStoppedSpeakingFrame):
            return seen
        if isinstance(frame, TextFrame) and not isinstance(frame, TranscriptionFrame):
            seen.append(frame.text)
    raise AssertionError(f"the turn never ended; frames: {[type(f).__name__ for f in down]}")


async def test_model_and_words_agree_the_turn_ends_at_once() -> None:
    assert await ended_between(EndOfTurnState.COMPLETE, "How long does delivery take?", [0.15]) == []


async def test_finished_words_end_a_doubted_turn_after_the_grace() -> None:
    # Grace counts from the last speech: 0.5 s, of which the VAD stop already waited 0.2 s.
    seen = await ended_between(EndOfTurnState.INCOMPLETE, "How long does delivery take?", [0.15, 0.6])
    assert seen == ["0.15"]


@pytest.mark.parametrize("verdict", [EndOfTurnState.COMPLETE, EndOfTurnState.INCOMPLETE])
async def test_dangling_words_wait_for_the_silence_limit(verdict: EndOfTurnState) -> None:
    # The limit is 1.2 s after the last speech, so 1.0 s after the VAD stop.
    seen = await ended_between(verdict, "Can I pay with", [0.6, 1.3])
    assert seen == ["0.6"]


async def test_dangling_words_after_the_silence_limit_wait_for_the_caller() -> None:
    # A slow transcript, while the call's audio keeps flowing: the limit (1.0 s after the VAD stop)
    # passed with no words, and the words that come dangle. The caller was pausing mid-question
    # ("How much does it cost to | ship my order?"): the turn waits for them to go on.
    with pytest.raises(AssertionError, match="the turn never ended"):
        await ended_between(
            EndOfTurnState.COMPLETE, "Can I pay with", [0.6, 1.1, 1.3], words_at=1.1, audio=True
        )
