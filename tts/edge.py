"""edge-tts (needs internet) as a Pipecat TTS service that falls back to Piper.

Offline, edge-tts fails within milliseconds. The service then speaks the same text with Piper,
logs one clear line, and stays on Piper for `retry_after_secs` so later turns don't pay for
the failed attempt again. The caller never hears silence.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncGenerator

import numpy as np
import soxr
from pipecat.frames.frames import Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings

from tts.cache import AudioCache
from tts.piper import LocalPiperTTSService, PiperSynth

log = logging.getLogger(__name__)

_edge_down_until = 0.0  # shared by all calls: one outage, one log line


async def edge_synthesize(text: str, voice: str, timeout: float) -> tuple[np.ndarray, int]:
    """Whole phrase from edge-tts, decoded from its MP3 stream to float32 mono."""
    import edge_tts
    import soundfile

    mp3 = bytearray()
    communicate = edge_tts.Communicate(text, voice, connect_timeout=int(max(1, timeout)), receive_timeout=30)
    async for chunk in communicate.stream():
        if chunk.get("type") == "audio" and chunk.get("data"):
            mp3.extend(chunk["data"])
    if not mp3:
        raise RuntimeError("edge-tts returned no audio")
    samples, rate = soundfile.read(io.BytesIO(bytes(mp3)), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return samples, rate


class EdgeTTSService(LocalPiperTTSService):
    """edge-tts for fresh phrases; Piper (the base class) whenever edge-tts can't be reached."""

    def __init__(
        self,
        voice: str,
        fallback: PiperSynth,
        cache: AudioCache | None = None,
        connect_timeout: float = 3.0,
        retry_after_secs: float = 300.0,
        **kwargs,
    ) -> None:
        settings = TTSSettings(model="edge-tts", voice=voice, language=None)
        super().__init__(fallback, cache=cache, settings=settings, **kwargs)
        self._voice = voice
        self._timeout = connect_timeout
        self._retry_after = retry_after_secs

    async def fresh_frames(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        global _edge_down_until
        if time.monotonic() >= _edge_down_until:
            try:
                samples, rate = await edge_synthesize(text, self._voice, self._timeout)
            except Exception as exc:
                _edge_down_until = time.monotonic() + self._retry_after
                log.warning(
                    "edge-tts unavailable (%s: %s); speaking with Piper for the next %.0f s",
                    type(exc).__name__,
                    exc,
                    self._retry_after,
                )
            else:
                pcm = soxr.resample(samples, rate, self.sample_rate, quality="HQ")
                audio = (np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes()
                yield TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id)
                return
        async for frame in super().fresh_frames(text, context_id):
            yield frame
