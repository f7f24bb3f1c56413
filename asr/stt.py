"""Pipecat STT service over the shared `WhisperEngine`.

Pipecat's own WhisperSTTService loads the model in its constructor (once per call) and always
pads to the 30 s window; this subclass of SegmentedSTTService shares one loaded engine and
uses its short-window fast path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import numpy as np
from pipecat.frames.frames import ErrorFrame, Frame, TranscriptionFrame
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.utils.time import time_now_iso8601

from asr.engine import WhisperEngine

log = logging.getLogger(__name__)


class LocalWhisperSTTService(SegmentedSTTService):
    def __init__(self, engine: WhisperEngine, **kwargs) -> None:
        # The engine appends its own silence tail; a second one only costs encoder time.
        kwargs.setdefault("trailing_silence_secs", 0.0)
        # Lets turn detection know how long to wait for a transcript before giving up on one.
        kwargs.setdefault("ttfs_p99_latency", 0.6)
        settings = STTSettings(model=str(engine.model_dir), language=engine.language)
        super().__init__(settings=settings, **kwargs)
        self._engine = engine

    @property
    def wants_wav_segments(self) -> bool:
        return False

    def can_generate_metrics(self) -> bool:
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        samples = np.frombuffer(audio, dtype=np.int16).astype(np.float32) / 32768.0
        if self.sample_rate != 16000:
            import soxr

            samples = soxr.resample(samples, self.sample_rate, 16000, quality="QQ")
        await self.start_processing_metrics()
        try:
            result = await asyncio.to_thread(self._engine.transcribe, samples)
        except Exception as exc:  # a broken segment must not end the call
            log.exception("transcription failed")
            yield ErrorFrame(error=f"transcription failed: {exc}")
            return
        finally:
            await self.stop_processing_metrics()
        log.info("transcript (%.0f ms): %r", result.seconds * 1000, result.text)
        if result.text:
            yield TranscriptionFrame(result.text, self._user_id, time_now_iso8601())
