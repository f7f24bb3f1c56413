"""What a server process loads once and shares with every call: models, stores, caches."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr.engine import WhisperEngine
from asr.models import resolve_model
from tts.cache import AudioCache
from tts.piper import PiperSynth
from voicebot.config import Settings
from voicebot.dialogue.policy import Brain

if TYPE_CHECKING:  # loaded lazily below, so a CLI that needs one store doesn't pay for all
    import redis

    from llm import LLMBackend
    from voicebot.dialogue.memory import MemoryStore
    from voicebot.kb.store import KnowledgeBase
    from voicebot.nlu.intents import IntentClassifier
    from voicebot.nlu.pii import Redactor
    from voicebot.storage.ratelimit import RateLimiter
    from voicebot.storage.records import Records
    from voicebot.storage.state import LiveCalls

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
    kb: KnowledgeBase
    brain: Brain
    records: Records
    redis: redis.Redis
    live: LiveCalls
    memory: MemoryStore
    limiter: RateLimiter
    llm: LLMBackend | None = None  # None: VOICEBOT_LLM=none, or the backend failed to load


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


def load_llm(settings: Settings) -> LLMBackend | None:
    """The configured answer generator, or None for 'none'. A broken backend is logged, not fatal:
    calls go on with knowledge-base answers."""
    if settings.llm == "none":
        return None
    from llm import make_backend

    try:
        return make_backend(
            settings.llm,
            model_path=settings.llm_model_path or None,
            lora_path=settings.llm_lora_path or None,
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            threads=settings.llm_threads,
            models_dir=settings.data_dir / "models",
        )
    except Exception:
        log.exception("LLM backend %r unavailable; answering from the knowledge base only", settings.llm)
        return None


def load_intents(model: Path | None, kb: KnowledgeBase, threshold: float) -> IntentClassifier:
    """The intent classifier, sharing the knowledge base's embedder when the model was trained with
    the same one (then a turn embeds its text once, for both)."""
    from voicebot.nlu.intents import IntentClassifier

    try:
        return IntentClassifier.load(model, embedder=kb.embedder, threshold=threshold)
    except ValueError:
        return IntentClassifier.load(model, threshold=threshold)


def load_brain(settings: Settings, kb: KnowledgeBase, llm_enabled: bool) -> Brain:
    from voicebot.dialogue.policy import Thresholds
    from voicebot.kb.thresholds import load_thresholds

    model = (
        Path(settings.intents_model)
        if settings.intents_model
        else settings.data_dir / "intents" / "model.joblib"
    )
    intents = load_intents(model if model.exists() else None, kb, settings.intent_threshold)
    found = load_thresholds(settings)
    log.info(
        "retrieval thresholds (%s): answer %.3f, related %.3f, clarify margin %.3f",
        found.source,
        found.answer,
        found.related,
        found.clarify_margin,
    )
    return Brain(
        kb,
        intents,
        Thresholds(found.answer, found.related, found.clarify_margin),
        llm_enabled=llm_enabled,
        sentiment_handoff=settings.sentiment_handoff,
        handoff_after_failures=settings.handoff_after_failures,
    )


def load_resources(settings: Settings) -> Resources:
    from voicebot.dialogue.memory import MemoryStore, load_or_create_key
    from voicebot.kb.store import KnowledgeBase, ensure_demo
    from voicebot.kb.thresholds import load_thresholds
    from voicebot.nlu.embeddings import load_embedder
    from voicebot.storage.numbers import NumberVault
    from voicebot.storage.ratelimit import RateLimiter
    from voicebot.storage.records import Records
    from voicebot.storage.state import LiveCalls, open_redis

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.recordings_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_key(settings.secret_key, settings.data_dir)
    records = Records(
        settings.resolved_database_url,
        redactor=make_redactor(settings),
        numbers=NumberVault(settings.number_storage, secret),
    )
    protected = records.protect_clear_numbers()
    if protected:
        log.info("protected the numbers of %d call(s) stored in clear before", protected)
    redis = open_redis(settings)
    live = LiveCalls(redis)
    if not settings.redis_url:
        # The embedded Redis serves this process alone: anything registered is from a dead run.
        live.clear()
    # Calls still live in Redis belong to other workers sharing these stores; leave them open.
    closed = records.mark_unfinished_calls("server restarted", exclude=live.ids())
    if closed:
        log.warning("closed %d call(s) left open by an earlier run", closed)
    kb = KnowledgeBase(
        settings.resolved_milvus_uri,
        settings.kb_collection,
        load_embedder(settings.embedder),
        lexical_weight=load_thresholds(settings).lexical_weight,
    )
    if settings.kb_demo:
        ensure_demo(kb)
    llm = load_llm(settings)
    memory = MemoryStore(
        redis,
        ttl_secs=settings.memory_ttl_secs,
        max_turns=settings.memory_turns,
        key=secret,
    )
    engine = load_engine(settings)
    synth = PiperSynth(settings.piper_voice)
    cache = None
    if settings.tts == "piper":
        cache = AudioCache(settings.resolved_tts_cache_dir, synth.voice_id, OUTPUT_SAMPLE_RATE)
    log.info(
        "resources loaded in %.1f s (knowledge base: %d entries)", time.perf_counter() - started, kb.count()
    )
    return Resources(
        settings=settings,
        engine=engine,
        synth=synth,
        cache=cache,
        kb=kb,
        brain=load_brain(settings, kb, llm_enabled=llm is not None),
        records=records,
        redis=redis,
        live=live,
        memory=memory,
        limiter=RateLimiter(redis),
        llm=llm,
    )


def make_redactor(settings: Settings) -> Redactor | None:
    from voicebot.config import parse_pii_patterns
    from voicebot.nlu.pii import Redactor

    patterns = parse_pii_patterns(settings.pii_redact)
    return Redactor(patterns) if patterns else None


async def warm_llm(res: Resources) -> None:
    """One short generation before the first call: the first one evaluates the prompt's fixed
    few-shot part (seconds on a CPU), which later prompts share and reuse."""
    if res.llm is None:
        return
    from llm import LLMError
    from llm.prompts import STOP, build_prompt

    started = time.perf_counter()
    prompt = build_prompt("How long does delivery take?", ["Standard delivery takes three days."], [], {})
    try:
        async with asyncio.timeout(30):
            async for _piece in res.llm.stream(prompt, max_tokens=2, stop=STOP):
                pass
    except (LLMError, TimeoutError) as exc:
        log.warning(
            "LLM warm-up failed (%s); calls will fall back to knowledge-base answers until it answers", exc
        )
        return
    log.info("LLM (%s) warmed up in %.1f s", res.settings.llm, time.perf_counter() - started)


def warm_phrase_cache(res: Resources) -> int:
    """Synthesize every known answer once, so speaking it later costs nothing. Returns the count."""
    if res.cache is None:
        return 0
    phrases = [res.settings.greeting, *res.brain.phrases()]
    # Answers with a slot ({order_number}) are filled per call and synthesized then.
    phrases += [entry.answer for entry in res.kb.entries() if "{" not in entry.answer]
    added = 0
    for text in phrases:
        if text and text not in res.cache:
            res.cache.put(text, res.synth.render(text, res.cache.sample_rate))
            added += 1
    return added


def close_resources(res: Resources) -> None:
    from voicebot.storage.state import close_redis

    if res.llm is not None:
        try:
            asyncio.run(res.llm.aclose())
        except Exception:
            log.debug("LLM backend close failed", exc_info=True)
    close_redis(res.redis)
    res.records.close()
