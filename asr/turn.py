"""VAD and end-of-turn settings: Silero VAD plus Smart Turn v3, both bundled in Pipecat.

Both ONNX sessions are loaded once per process and shared by every call; each call keeps only
its own recurrent state (Silero) and audio buffer (Smart Turn).
"""

from __future__ import annotations

import asyncio
import re
import threading

import onnxruntime as ort
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.frames.frames import InputAudioRawFrame, TranscriptionFrame, VADUserStoppedSpeakingFrame
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy

_session: ort.InferenceSession | None = None
_silero_session: ort.InferenceSession | None = None
_session_lock = threading.Lock()


def _shared_session() -> ort.InferenceSession:
    global _session
    with _session_lock:
        if _session is None:
            # Build one analyzer the stock way, then keep its session for every later call.
            _session = LocalSmartTurnAnalyzerV3()._session
        return _session


def _shared_silero_session() -> ort.InferenceSession:
    global _silero_session
    with _session_lock:
        if _silero_session is None:
            _silero_session = SileroVADAnalyzer()._model.session
        return _silero_session


class _SileroState(SileroOnnxModel):
    """Silero's per-stream recurrent state over the shared session."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    def __init__(self, *, params: VADParams) -> None:
        VADAnalyzer.__init__(self, sample_rate=None, params=params)
        self._model = _SileroState(_shared_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    def __init__(self, **kwargs) -> None:
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = False
        self._session = _shared_session()


def preload() -> None:
    _shared_session()
    _shared_silero_session()


def make_vad(stop_secs: float) -> SileroVADAnalyzer:
    return SharedSileroVADAnalyzer(params=VADParams(stop_secs=stop_secs, start_secs=0.2, confidence=0.7))


def make_turn_analyzer(max_silence_secs: float) -> SharedSmartTurnAnalyzer:
    return SharedSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=max_silence_secs))


def make_turn_stop_strategy(max_silence_secs: float, grace_secs: float) -> TurnAnalyzerUserTurnStopStrategy:
    return TranscriptAwareTurnStopStrategy(
        turn_analyzer=make_turn_analyzer(max_silence_secs), grace_secs=grace_secs, limit_secs=max_silence_secs
    )


# Words a finished caller sentence practically never ends on: articles, possessives,
# prepositions, conjunctions, fillers, and verbs that announce more ("I wanted to ask").
# Auxiliaries, modals and pronouns are not here: "What should I do?", "Yes, I can." are complete.
_DANGLING = frozenset(
    """a an the my your our their his her its to for with of in on at from about into by
    and or but because if than um uh er like ask wondering wonder""".split()  # noqa: SIM905
)


def text_looks_complete(text: str) -> bool:
    """Whether a transcript reads like a finished utterance (not "I forgot my...", "Can I pay with")."""
    stripped = text.strip()
    if not re.search(r"[A-Za-z0-9]", stripped) or stripped.endswith(("...", "-", "…")):
        return False
    words = re.findall(r"[a-z0-9']+", stripped.lower())
    return bool(words) and words[-1] not in _DANGLING


class TranscriptAwareTurnStopStrategy(TurnAnalyzerUserTurnStopStrategy):
    """Smart Turn, with the transcript as a second opinion.

    Smart Turn judges prosody; on flat or band-limited telephone speech it often calls a finished
    question unfinished, and then the turn waits for the full silence limit. The words settle it:
    - the model says complete but the words dangle ("Can I pay with"): keep listening;
    - the model says incomplete but the words read finished: end after `grace_secs` of silence;
    - `limit_secs` of silence ends any turn that has words.
    Speech resuming cancels all of it (the base class discards a pending end of turn).
    """

    def __init__(self, *, grace_secs: float, limit_secs: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._grace_secs = grace_secs
        self._limit_secs = limit_secs
        self._timer: asyncio.Task | None = None
        self._grace_elapsed = False
        self._limit_reached = False

    async def _discard_pending_end_of_turn(self) -> None:
        await super()._discard_pending_end_of_turn()
        self._grace_elapsed = False
        self._limit_reached = False
        timer, self._timer = self._timer, None
        # The timer itself may be what ended the turn; it notices it was dropped and returns.
        if timer and timer is not asyncio.current_task():
            await self.task_manager.cancel_task(timer)

    async def _handle_vad_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame) -> None:
        await super()._handle_vad_user_stopped_speaking(frame)
        if self._timer is None:
            self._timer = self.task_manager.create_task(
                self._silence_timer(frame.stop_secs), f"{self}::silence"
            )

    async def _silence_timer(self, already_silent: float) -> None:
        try:
            grace_wait = max(0.0, self._grace_secs - already_silent)
            await asyncio.sleep(grace_wait)
            self._grace_elapsed = True
            await self._end_if_words_finished()
            if self._timer is not asyncio.current_task():
                return  # the turn ended (or was discarded) meanwhile
            await asyncio.sleep(max(0.0, self._limit_secs - already_silent - grace_wait))
        except asyncio.CancelledError:
            return
        self._timer = None
        self._limit_reached = True
        self._turn_complete = True
        await self._maybe_trigger_user_turn_stopped()

    async def _handle_transcription(self, frame: TranscriptionFrame) -> None:
        await super()._handle_transcription(frame)
        if self._grace_elapsed:
            await self._end_if_words_finished()

    async def _end_if_words_finished(self) -> None:
        if not self._turn_complete and not self._vad_user_speaking and text_looks_complete(self._text):
            self._turn_complete = True
            await self._maybe_trigger_user_turn_stopped()

    async def _handle_input_audio(self, frame: InputAudioRawFrame) -> None:
        # The analyzer reports COMPLETE from here only when its own silence limit ran out.
        self._limit_reached = True
        try:
            await super()._handle_input_audio(frame)
        finally:
            self._limit_reached = False

    async def _maybe_trigger_user_turn_stopped(self) -> None:
        dangling = bool(self._text) and not text_looks_complete(self._text)
        if self._turn_complete and dangling and not self._limit_reached:
            return
        await super()._maybe_trigger_user_turn_stopped()
