"""VAD and end-of-turn settings: Silero VAD plus Smart Turn v3, both bundled in Pipecat.

Both ONNX models are loaded once per process and shared by every call; each call keeps only
its own recurrent state (Silero) and audio buffer (Smart Turn).

Built on Pipecat's public API and documented extension points only: `VADAnalyzer`'s
`num_frames_required`/`voice_confidence`, `BaseSmartTurn`'s `_predict_endpoint` hook, and
`BaseUserTurnStopStrategy`'s frame and turn-boundary callbacks. The one exception is
`_run_smart_turn_model` (see there).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from importlib import resources
from typing import Any

import numpy as np
import onnxruntime as ort
import soxr
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer, EndOfTurnState
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel
from pipecat.audio.vad.vad_analyzer import VAD_STOP_SECS, VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    SpeechControlParamsFrame,
    StartFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import MetricsData
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_stop import BaseUserTurnStopStrategy

log = logging.getLogger(__name__)

SMART_TURN_SAMPLE_RATE = 16000  # what the Smart Turn v3 model takes

_smart_turn_model: LocalSmartTurnAnalyzerV3 | None = None
_silero_session: ort.InferenceSession | None = None
_model_lock = threading.Lock()


def _shared_smart_turn_model() -> LocalSmartTurnAnalyzerV3:
    global _smart_turn_model
    with _model_lock:
        if _smart_turn_model is None:
            # Loaded the stock way (bundled model, one inference thread), fed 16 kHz audio only.
            model = LocalSmartTurnAnalyzerV3(cpu_count=1)
            model.set_sample_rate(SMART_TURN_SAMPLE_RATE)
            _smart_turn_model = model
        return _smart_turn_model


def _shared_silero_session() -> ort.InferenceSession:
    global _silero_session
    with _model_lock:
        if _silero_session is None:
            path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
            with resources.as_file(path) as onnx_file:
                _silero_session = SileroOnnxModel(str(onnx_file), force_onnx_cpu=True).session
        return _silero_session


def preload() -> None:
    _shared_smart_turn_model()
    _shared_silero_session()


# --- Silero VAD ---

# Pipecat's SileroVADAnalyzer resets the model's recurrent state every 2 s of audio, at the first
# moment the VAD is quiet and the last 5 windows all scored under 0.1: non-speech (music, long
# silence at 8 kHz) otherwise drifts the state so the speech after it is under-detected.
_RESET_INTERVAL_SECS = 2.0
_RESET_MAX_CONFIDENCE = 0.1
_RESET_LOW_CONFIDENCE_WINDOWS = 5


class _SileroState(SileroOnnxModel):
    """Silero's per-stream recurrent state over the shared session (its public fields only)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        # Not super().__init__(): that would load a session of its own.
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVADAnalyzer(VADAnalyzer):
    """Silero VAD for one call: its own recurrent state over the process-wide ONNX session.

    Pipecat's `SileroVADAnalyzer` loads a session per instance and takes no model from outside,
    so this is the same analyzer on `VADAnalyzer`'s documented hooks, including its state resets.
    """

    def __init__(self, *, params: VADParams) -> None:
        super().__init__(params=params)
        self._model = _SileroState(_shared_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        # The VAD state as of the last `analyze_audio`. Pipecat feeds one transport frame
        # (shorter than a window) per call, so it is the state before each window scored.
        self._last_state = VADState.QUIET

    def set_sample_rate(self, sample_rate: int) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError(f"Silero VAD sample rate needs to be 16000 or 8000 (sample rate: {sample_rate})")
        super().set_sample_rate(sample_rate)

    def set_params(self, params: VADParams) -> None:
        super().set_params(params)
        self._last_state = VADState.QUIET  # new params restart the VAD quiet

    def num_frames_required(self) -> int:
        return 512 if self.sample_rate == 16000 else 256

    def voice_confidence(self, buffer: bytes) -> float:
        try:
            audio = np.frombuffer(buffer, np.int16).astype(np.float32) / 32768.0
            confidence = self._model(audio, self.sample_rate)[0]
            self._maybe_reset_model(confidence.item())
            return confidence
        except Exception as exc:  # an empty buffer; the same fallback as Pipecat's Silero analyzer
            log.error("Error analyzing audio with Silero VAD: %s", exc)
            return 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self._last_state = await super().analyze_audio(buffer)
        return self._last_state

    def _maybe_reset_model(self, confidence: float) -> None:
        self._windows_since_reset += 1
        if confidence < _RESET_MAX_CONFIDENCE:
            self._low_confidence_windows += 1
        else:
            self._low_confidence_windows = 0
        if (
            self._windows_since_reset * self.num_frames_required() >= _RESET_INTERVAL_SECS * self.sample_rate
            and self._last_state == VADState.QUIET
            and self._low_confidence_windows >= _RESET_LOW_CONFIDENCE_WINDOWS
        ):
            self._model.reset_states()
            self._windows_since_reset = 0


# --- Smart Turn ---


def _run_smart_turn_model(model: LocalSmartTurnAnalyzerV3, audio_16k: np.ndarray) -> dict[str, Any]:
    """Smart Turn v3's verdict on 16 kHz audio, from the one process-wide model.

    The one private access in this module. `_predict_endpoint` is the documented hook
    `BaseSmartTurn` subclasses implement (float32 audio in, {"prediction", "probability"} out;
    stateless, so safe from any thread). Pipecat offers no public way to run a loaded Smart Turn
    model on a buffer, nor to give an analyzer an already loaded ONNX session, so each call's
    analyzer implements its own hook by calling this one on the shared model.
    """
    return model._predict_endpoint(audio_16k)


class SharedSmartTurnAnalyzer(BaseSmartTurn):
    """Smart Turn for one call: its own audio buffer and silence count, the shared model."""

    def __init__(self, *, params: SmartTurnParams) -> None:
        super().__init__(params=params)
        self._shared_model = _shared_smart_turn_model()

    def _predict_endpoint(self, audio_array: np.ndarray) -> dict[str, Any]:
        rate = self.sample_rate or SMART_TURN_SAMPLE_RATE
        if rate != SMART_TURN_SAMPLE_RATE:
            audio_array = soxr.resample(audio_array, rate, SMART_TURN_SAMPLE_RATE, quality="HQ")
        return _run_smart_turn_model(self._shared_model, audio_array)


def make_vad(stop_secs: float) -> SharedSileroVADAnalyzer:
    return SharedSileroVADAnalyzer(params=VADParams(stop_secs=stop_secs, start_secs=0.2, confidence=0.7))


def make_turn_analyzer(max_silence_secs: float) -> SharedSmartTurnAnalyzer:
    return SharedSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=max_silence_secs))


def make_turn_stop_strategy(max_silence_secs: float, grace_secs: float) -> TranscriptAwareTurnStopStrategy:
    return TranscriptAwareTurnStopStrategy(
        turn_analyzer=make_turn_analyzer(max_silence_secs), grace_secs=grace_secs, limit_secs=max_silence_secs
    )


# --- End of turn ---

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


class TranscriptAwareTurnStopStrategy(BaseUserTurnStopStrategy):
    """Smart Turn, with the transcript as a second opinion.

    Smart Turn judges prosody; on flat or band-limited telephone speech it often calls a finished
    question unfinished, and then the turn waits for the full silence limit. The words settle it:
    - the model says complete but the words dangle ("Can I pay with"): keep listening;
    - the model says incomplete but the words read finished: end after `grace_secs` of silence;
    - `limit_secs` of silence ends any turn that has words.
    Speech resuming cancels all of it.

    Otherwise it behaves as Pipecat's `TurnAnalyzerUserTurnStopStrategy` (whose rules it restates
    on the public strategy API): the turn analyzer runs when VAD reports a stop, and a turn ends
    once it is judged complete and a transcript is in hand, at once for a finalized transcript,
    else when the STT's p99 latency has passed since the caller stopped speaking.
    """

    def __init__(
        self, *, turn_analyzer: BaseTurnAnalyzer, grace_secs: float, limit_secs: float, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self._turn_analyzer = turn_analyzer
        self._grace_secs = grace_secs
        self._limit_secs = limit_secs
        self._stt_timeout = 0.0  # the STT's p99 latency, from its STTMetadataFrame
        self._stop_secs = 0.0  # the VAD's stop_secs, from its last VADUserStoppedSpeakingFrame
        self._stop_secs_warned = False
        self._vad_user_speaking = False  # the caller's, not the turn's: kept across turns
        # The turn in progress.
        self._text = ""
        self._turn_complete = False  # the model, the words or the silence limit ended it
        self._vad_stopped = False
        self._transcript_finalized = False
        self._stt_wait: asyncio.Task | None = None  # for a transcript, up to the STT p99 latency
        self._stt_wait_expired = False
        self._silence: asyncio.Task | None = None  # grace, then the silence limit
        self._grace_elapsed = False
        self._limit_reached = False

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._turn_analyzer.set_sample_rate(setup.audio_in_sample_rate)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._turn_analyzer.cleanup()
        await self._cancel_waits()

    async def handle_user_turn_started(self) -> None:
        await self._reset()

    async def handle_user_turn_stopped(self) -> None:
        await self._reset()
        # However the turn ended, buffered speech must not end a phantom turn later.
        self._turn_analyzer.clear()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        await super().process_frame(frame)
        if isinstance(frame, StartFrame):
            await self.broadcast_frame(SpeechControlParamsFrame, turn_params=self._turn_analyzer.params)
        elif isinstance(frame, STTMetadataFrame):
            self._stt_timeout = frame.ttfs_p99_latency
            self._stop_secs_warned = False
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._turn_analyzer.update_vad_start_secs(frame.start_secs)
            self._vad_user_speaking = True
            await self._discard_pending_end_of_turn()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            await self._on_vad_stopped(frame)
        elif isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame)
        elif isinstance(frame, TranscriptionFrame):
            await self._on_transcription(frame)
        elif isinstance(frame, InterimTranscriptionFrame):
            # More transcript is on the way: an earlier finalized one no longer covers the speech.
            self._transcript_finalized = False
        return ProcessFrameResult.CONTINUE

    async def _reset(self) -> None:
        self._text = ""
        await self._discard_pending_end_of_turn()

    async def _discard_pending_end_of_turn(self) -> None:
        """Drop any end-of-turn conclusion: at a turn boundary, and when the caller speaks again."""
        self._turn_complete = False
        self._transcript_finalized = False
        self._stt_wait_expired = False
        self._vad_stopped = False
        self._grace_elapsed = False
        self._limit_reached = False
        await self._cancel_waits()

    async def _cancel_waits(self) -> None:
        for task in (self._stt_wait, self._silence):
            # A wait may itself be what ended the turn; it notices it was dropped and returns.
            if task and task is not asyncio.current_task():
                await self.task_manager.cancel_task(task)
        self._stt_wait = self._silence = None

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        # A silence limit that ran out with no words yet stops counting once the call's audio
        # flows on: words that then arrive dangling ("How much does it cost to") wait for the
        # caller to go on, who was pausing mid-question, rather than being answered at once.
        self._limit_reached = False
        # Streaming analyzers decide here frame by frame; Smart Turn reports COMPLETE from here
        # only when its own silence limit ran out.
        if self._turn_analyzer.append_audio(frame.audio, self._vad_user_speaking) == EndOfTurnState.COMPLETE:
            _, prediction = await self._turn_analyzer.analyze_end_of_turn()
            await self._push_metrics(prediction)
            self._turn_complete = True
            await self._maybe_end_turn(limit_reached=True)

    async def _on_vad_stopped(self, frame: VADUserStoppedSpeakingFrame) -> None:
        self._vad_user_speaking = False
        self._vad_stopped = True
        self._stop_secs = frame.stop_secs
        # The STT's p99 budget runs from when the caller actually stopped, `stop_secs` before
        # VAD said so, however long the analysis below takes.
        stt_deadline = frame.timestamp - frame.stop_secs + self._stt_timeout
        state, prediction = await self._turn_analyzer.analyze_end_of_turn()
        await self._push_metrics(prediction)
        self._turn_complete = state == EndOfTurnState.COMPLETE
        self._warn_about_stop_secs()
        self._stt_wait = self.task_manager.create_task(
            self._wait_for_stt(max(0.0, stt_deadline - time.time())), f"{self}::stt_wait"
        )
        if self._silence is None:
            self._silence = self.task_manager.create_task(
                self._silence_timer(frame.stop_secs), f"{self}::silence"
            )
        # A finalized transcript may have arrived while the analyzer ran.
        await self._maybe_end_turn()

    async def _on_transcription(self, frame: TranscriptionFrame) -> None:
        self._text = frame.text
        if frame.finalized:
            self._transcript_finalized = True
            await self._maybe_end_turn()
        elif self._stt_wait_expired and self._turn_complete:
            # The transcript came later than the STT's p99 latency: no reason to wait further.
            await self._maybe_end_turn()
            return
        if not self._vad_user_speaking and not self._vad_stopped:
            # Words without VAD having heard speech: take the turn as complete, and end it once
            # the transcripts stop coming for the STT's p99 latency.
            if self._stt_wait:
                await self.task_manager.cancel_task(self._stt_wait)
            self._turn_complete = True
            self._stt_wait = self.task_manager.create_task(
                self._wait_for_stt(max(0.0, self._stt_timeout - self._stop_secs)), f"{self}::stt_wait"
            )
        if self._grace_elapsed:
            await self._end_if_words_finished()

    async def _wait_for_stt(self, timeout: float) -> None:
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            return
        finally:
            self._stt_wait = None
        self._stt_wait_expired = True
        await self._maybe_end_turn()

    async def _silence_timer(self, already_silent: float) -> None:
        try:
            grace_wait = max(0.0, self._grace_secs - already_silent)
            await asyncio.sleep(grace_wait)
            self._grace_elapsed = True
            await self._end_if_words_finished()
            if self._silence is not asyncio.current_task():
                return  # the turn ended (or was discarded) meanwhile
            await asyncio.sleep(max(0.0, self._limit_secs - already_silent - grace_wait))
        except asyncio.CancelledError:
            return
        self._silence = None
        self._limit_reached = True
        self._turn_complete = True
        await self._maybe_end_turn()

    async def _end_if_words_finished(self) -> None:
        if not self._turn_complete and not self._vad_user_speaking and text_looks_complete(self._text):
            self._turn_complete = True
            await self._maybe_end_turn()

    async def _maybe_end_turn(self, *, limit_reached: bool = False) -> None:
        """End the turn if it is complete, its words don't dangle, and its transcript is in."""
        if not self._turn_complete or not self._text:
            return
        if not (limit_reached or self._limit_reached) and not text_looks_complete(self._text):
            return
        if self._transcript_finalized or self._stt_wait is None:
            if self._stt_wait:
                await self.task_manager.cancel_task(self._stt_wait)
                self._stt_wait = None
            await self.trigger_user_turn_stopped()

    async def _push_metrics(self, prediction: MetricsData | None) -> None:
        if prediction:
            await self.push_frame(MetricsFrame(data=[prediction]))

    def _warn_about_stop_secs(self) -> None:
        if self._stop_secs_warned:
            return
        stop_secs = self._stop_secs
        if stop_secs != VAD_STOP_SECS:
            self._stop_secs_warned = True
            log.warning(
                "%s: VAD stop_secs (%ss) differs from the %ss that the STT p99 latencies assume",
                self,
                stop_secs,
                VAD_STOP_SECS,
            )
        if self._stt_timeout > 0 and stop_secs >= self._stt_timeout:
            self._stop_secs_warned = True
            log.warning(
                "%s: VAD stop_secs (%ss) >= STT p99 latency (%ss): no wait for a late transcript",
                self,
                stop_secs,
                self._stt_timeout,
            )
