"""VAD and end-of-turn settings: Silero VAD plus Smart Turn v3, both bundled in Pipecat.

Both ONNX sessions are loaded once per process and shared by every call; each call keeps only
its own recurrent state (Silero) and audio buffer (Smart Turn).
"""

from __future__ import annotations

import threading

import onnxruntime as ort
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams

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
