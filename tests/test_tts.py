"""Piper synthesis, the phrase cache, and the edge-tts fallback, through real Pipecat pipelines."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

from tts.cache import AudioCache
from tts.piper import AUDIBLE, LocalPiperTTSService, PiperSynth

RATE = 16000
PHRASE = "Standard delivery takes three to five business days."


@pytest.fixture(scope="module")
def synth() -> PiperSynth:
    return PiperSynth()


async def speak(service, text: str) -> bytes:
    down, _ = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame(text)],
        pipeline_params=PipelineParams(audio_out_sample_rate=RATE),
        start_timeout=5.0,
    )
    frames = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert frames and all(f.sample_rate == RATE for f in frames)
    return b"".join(f.audio for f in frames)


def leading_silence_ms(audio: bytes) -> float:
    samples = np.frombuffer(audio, dtype=np.int16)
    return float(np.flatnonzero(np.abs(samples) > AUDIBLE)[0]) / RATE * 1000


def test_render_trims_silence(synth: PiperSynth) -> None:
    audio = synth.render(PHRASE, RATE)
    assert leading_silence_ms(audio) <= 15
    assert 1.5 < len(audio) / 2 / RATE < 6


async def test_live_synthesis_streams_audio_without_onset_silence(synth: PiperSynth) -> None:
    audio = await speak(LocalPiperTTSService(synth), PHRASE)
    assert leading_silence_ms(audio) <= 15


async def test_cached_phrase_is_spoken_from_the_cache(synth: PiperSynth, tmp_path: Path) -> None:
    cache = AudioCache(tmp_path, synth.voice_id, RATE)
    cache.put(PHRASE, synth.render(PHRASE, RATE))
    assert PHRASE in AudioCache(tmp_path, synth.voice_id, RATE)  # persisted on disk
    audio = await speak(LocalPiperTTSService(synth, cache=cache), PHRASE)
    assert audio == cache.get(PHRASE)


async def test_edge_tts_offline_falls_back_to_piper(
    synth: PiperSynth, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # edge-tts is a Microsoft cloud service that can't be reached here: point it at a closed
    # loopback port, which fails the way an offline machine does, in milliseconds.
    import edge_tts.communicate

    import tts.edge

    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", "wss://127.0.0.1:9/edge")
    monkeypatch.setattr(tts.edge, "_edge_down_until", 0.0)
    caplog.set_level(logging.WARNING, logger="tts.edge")
    service = tts.edge.EdgeTTSService("en-US-AriaNeural", fallback=synth)
    started = time.perf_counter()
    audio = await speak(service, PHRASE)
    assert time.perf_counter() - started < 5
    assert len(audio) / 2 / RATE > 1.5  # the caller heard the sentence, from Piper
    warnings = [r for r in caplog.records if "edge-tts unavailable" in r.getMessage()]
    assert len(warnings) == 1
    # Later phrases go straight to Piper without another attempt or log line.
    await speak(tts.edge.EdgeTTSService("en-US-AriaNeural", fallback=synth), "Thank you.")
    assert len([r for r in caplog.records if "edge-tts unavailable" in r.getMessage()]) == 1
