"""VAD and end-of-turn settings: Silero VAD plus Smart Turn v3, both bundled in Pipecat.

The Smart Turn ONNX session is loaded once per process and shared by every call's analyzer.
"""

from __future__ import annotations

import threading

import onnxruntime as ort
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams

_session: ort.InferenceSession | None = None
_session_lock = threading.Lock()


def _shared_session() -> ort.InferenceSession:
    global _session
    with _session_lock:
        if _session is None:
            # Build one analyzer the stock way, then keep its session for every later call.
            _session = LocalSmartTurnAnalyzerV3()._session
        return _session


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    def __init__(self, **kwargs) -> None:
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = False
        self._session = _shared_session()


def preload() -> None:
    _shared_session()


def make_vad(stop_secs: float) -> SileroVADAnalyzer:
    return SileroVADAnalyzer(params=VADParams(stop_secs=stop_secs, start_secs=0.2, confidence=0.7))


def make_turn_analyzer(max_silence_secs: float) -> SharedSmartTurnAnalyzer:
    return SharedSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=max_silence_secs))
