"""What a server process loads once and shares with every call: models, stores, caches."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from asr.engine import WhisperEngine
from asr.models import resolve_model
from asr.turn import preload as preload_turn_model
from tts.cache import AudioCache
from tts.piper import PiperSynth
from voicebot.config import Settings
from voicebot.dialogue import Answerer

log = logging.getLogger(__name__)

# Pipeline output rate. Piper's 22.05 kHz goes to 16 kHz through a filterless (zero-delay) QQ
# resampler; whatever aliases lands above 5 kHz, which the gateway's telephone-band filter removes
# on the exact 2:1 step down to 8 kHz. Cached phrases are stored at this rate.
OUTPUT_SAMPLE_RATE = 16000


@dataclass
class Resources:
    settings: Settings
    engine: WhisperEngine
    synth: PiperSynth
    cache: AudioCache | None
    kb: Any
    answerer: Answerer
    records: Any
    redis: Any
    live: Any


def _asr_device(setting: str) -> str:
    if setting != "auto":
        return setting
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:
        return "cpu"


def load_engine(settings: Settings) -> WhisperEngine:
    device = _asr_device(settings.asr_device)
    compute_type = settings.asr_compute_type
    if device == "cuda" and compute_type == "int8":
        compute_type = "int8_float16"
    engine = WhisperEngine(
        resolve_model(settings.asr_model, settings.data_dir / "models"),
        device=device,
        compute_type=compute_type,
        threads=settings.asr_threads,
        language=settings.asr_language,
    )
    engine.transcribe(np.zeros(8000, dtype=np.float32))  # first call allocates; keep it off a live turn
    return engine


def load_resources(settings: Settings) -> Resources:
    from voicebot.embeddings import load_embedder
    from voicebot.kb import KnowledgeBase, ensure_demo
    from voicebot.storage.records import Records
    from voicebot.storage.state import LiveCalls, open_redis

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.recordings_dir.mkdir(parents=True, exist_ok=True)
    records = Records(settings.resolved_database_url)
    redis = open_redis(settings)
    live = LiveCalls(redis)
    if not settings.redis_url:
        # The embedded Redis serves this process alone: anything registered is from a dead run.
        live.clear()
    # Calls still live in Redis belong to other workers sharing these stores; leave them open.
    closed = records.mark_unfinished_calls("server restarted", exclude=live.ids())
    if closed:
        log.warning("closed %d call(s) left open by an earlier run", closed)
    kb = KnowledgeBase(settings.resolved_milvus_uri, settings.kb_collection, load_embedder())
    if settings.kb_demo:
        ensure_demo(kb)
    engine = load_engine(settings)
    synth = PiperSynth(settings.piper_voice)
    preload_turn_model()
    cache = None
    if settings.tts == "piper":
        cache = AudioCache(settings.data_dir / "tts-cache", synth.voice_id, OUTPUT_SAMPLE_RATE)
    log.info(
        "resources loaded in %.1f s (knowledge base: %d entries)", time.perf_counter() - started, kb.count()
    )
    return Resources(
        settings=settings,
        engine=engine,
        synth=synth,
        cache=cache,
        kb=kb,
        answerer=Answerer(kb, settings.kb_threshold),
        records=records,
        redis=redis,
        live=live,
    )


def warm_phrase_cache(res: Resources) -> int:
    """Synthesize every known answer once, so speaking it later costs nothing. Returns the count."""
    if res.cache is None:
        return 0
    phrases = [res.settings.greeting, *res.answerer.phrases()]
    phrases += [entry.answer for entry in res.kb.entries()]
    added = 0
    for text in phrases:
        if text and text not in res.cache:
            res.cache.put(text, res.synth.render(text, res.cache.sample_rate))
            added += 1
    return added


def close_resources(res: Resources) -> None:
    from voicebot.storage.state import close_redis

    close_redis(res.redis)
    res.records.close()
