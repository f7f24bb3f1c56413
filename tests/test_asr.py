"""Whisper engine and model registry, on real bundled models and espeak-ng telephone audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from asr.engine import WhisperEngine, cut_repetition
from asr.models import ModelNotFoundError, resolve_model
from testkit.audio import SAMPLE_RATE, speak

QUESTIONS = [
    "How long does delivery take?",
    "What is your return policy?",
    "Do you ship internationally?",
]


def line_audio_16k(text: str) -> np.ndarray:
    pcm = speak(text).pcm.astype(np.float32) / 32768.0
    return soxr.resample(pcm, SAMPLE_RATE, 16000).astype(np.float32)


def words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> WhisperEngine:
    return WhisperEngine(resolve_model("tiny.en", tmp_path_factory.mktemp("models")), threads=2)


@pytest.mark.parametrize("question", QUESTIONS)
def test_fast_path_transcribes_telephone_speech(tiny: WhisperEngine, question: str) -> None:
    result = tiny.transcribe(line_audio_16k(question))
    assert not result.full_window
    # Telephone-band tiny.en may slip on a word; most must survive.
    expected = words(question)
    assert len(expected & words(result.text)) >= 0.6 * len(expected), result.text


def test_silence_and_noise_give_no_text(tiny: WhisperEngine) -> None:
    # Whisper hallucinates "you" on silence; the engine must not pass that on as a caller turn.
    assert tiny.transcribe(np.zeros(16000, dtype=np.float32)).text == ""
    noise = np.random.default_rng(1).normal(0, 0.01, 16000).astype(np.float32)
    assert tiny.transcribe(noise).text == ""


def test_repetition_loops_are_cut() -> None:
    looped = "How long does delivery take? How long does delivery take? How long does"
    assert cut_repetition(looped) == "How long does delivery take?"
    assert cut_repetition("Yes, yes, I want to return it.") == "Yes, I want to return it."
    assert cut_repetition("Where is my order? It is late.") == "Where is my order? It is late."


def test_fast_path_matches_the_full_window(tiny: WhisperEngine) -> None:
    audio = line_audio_16k(QUESTIONS[0])
    fast = tiny._decode(audio, full_window=False)[0]
    full = tiny._decode(audio, full_window=True)[0]
    assert {"long", "delivery"} <= words(fast) & words(full)


def test_base_model_is_assembled_from_its_two_packages(tmp_path: Path) -> None:
    path = resolve_model("base", tmp_path)
    assert (path / "model.bin").stat().st_size > 100_000_000
    assert resolve_model("base", tmp_path) == path  # second resolve reuses the joined file
    engine = WhisperEngine(path, threads=2)
    assert "delivery" in engine.transcribe(line_audio_16k(QUESTIONS[0])).text.lower()


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a bundled model"):
        resolve_model(str(tmp_path / "nope"), tmp_path)


async def test_vad_analyzers_share_the_model_but_not_the_state() -> None:
    from pipecat.audio.vad.vad_analyzer import VADState

    from voicebot.calls.turns import make_vad

    speech = (line_audio_16k(QUESTIONS[0]) * 32767).astype(np.int16)
    audio = np.concatenate([np.zeros(8000, np.int16), speech, np.zeros(16000, np.int16)]).tobytes()
    first, second = make_vad(0.2), make_vad(0.2)
    assert first._model.session is second._model.session
    for vad in (first, second):
        vad.set_sample_rate(16000)
    step = first.num_frames_required() * 2
    seen: list[VADState] = []
    for start in range(0, len(audio) - step, step):
        seen.append(await first.analyze_audio(audio[start : start + step]))
        # The second stream hears only silence: its state must not follow the first's.
        assert await second.analyze_audio(bytes(step)) == VADState.QUIET
    assert VADState.SPEAKING in seen
    assert seen[-1] == VADState.QUIET


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("How long does delivery take?", True),
        ("Can I return it?", True),
        ("Can I pay with", False),
        ("Can I pay with?", False),
        ("I forgot my...", False),
        ("How much does it cost to?", False),
        ("I would like to return the", False),
        ("Um", False),
        ("I wanted to ask.", False),
        ("I was wondering", False),
        ("...", False),
        ("", False),
        ("My order number is 4 5 7 2.", True),
        ("What should I do?", True),
        ("Yes, I do.", True),
        ("I don't know.", True),
    ],
)
def test_text_completeness(text: str, complete: bool) -> None:
    from voicebot.calls.turns import text_looks_complete

    assert text_looks_complete(text) is complete
