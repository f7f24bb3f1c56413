"""One loaded Whisper model per process, with a fast path for short telephone turns.

Stock faster-whisper pads every segment to Whisper's 30 s window, so a 3 s question costs a
full 30 s encoder pass. The CTranslate2 encoder accepts shorter inputs, so we encode only the
audio we have (plus a short silence tail) and decode greedily. When the fast result looks
degenerate (repetition, no text from clear speech) we fall back to the full window once.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame
FULL_WINDOW_FRAMES = 3000
TAIL_SECS = 0.6  # silence the encoder sees after speech, so the last word is not cut
MAX_COMPRESSION_RATIO = 2.4


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    seconds: float
    full_window: bool


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperEngine:
    """Shared by every call; `transcribe` is thread-safe (CTranslate2 releases the GIL)."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        compute_type: str = "int8",
        threads: int = 0,
        language: str = "en",
        no_speech_threshold: float = 0.6,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        started = time.perf_counter()
        self.model = WhisperModel(
            str(model_dir), device=device, compute_type=compute_type, cpu_threads=threads
        )
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else None,
        )
        self.prompt = self.model.get_prompt(self.tokenizer, [], without_timestamps=True)
        self.no_speech_threshold = no_speech_threshold
        self.language = language if multilingual else "en"
        self.model_dir = model_dir
        self._lock = threading.Lock() if self.model.model.device == "cpu" else None
        log.info("Whisper model %s loaded in %.2f s", model_dir, time.perf_counter() - started)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe float32 mono 16 kHz audio of one caller turn."""
        started = time.perf_counter()
        text, no_speech, logprob = self._decode(audio, full_window=False)
        full = False
        if text and _compression_ratio(text) > MAX_COMPRESSION_RATIO:
            log.info("fast ASR result looks repetitive, retrying with the full window")
            text, no_speech, logprob = self._decode(audio, full_window=True)
            full = True
        if no_speech > self.no_speech_threshold and logprob < -1.0:
            text = ""
        return Transcript(text, no_speech, logprob, time.perf_counter() - started, full)

    def _decode(self, audio: np.ndarray, *, full_window: bool) -> tuple[str, float, float]:
        audio = np.concatenate([audio.astype(np.float32), np.zeros(int(TAIL_SECS * SAMPLE_RATE), np.float32)])
        features = self.model.feature_extractor(audio)
        frames = features.shape[-1] - features.shape[-1] % 2
        if full_window:
            padded = np.zeros((features.shape[0], FULL_WINDOW_FRAMES), dtype=features.dtype)
            padded[:, : min(frames, FULL_WINDOW_FRAMES)] = features[:, :FULL_WINDOW_FRAMES]
            features = padded
        else:
            features = features[:, : min(frames, FULL_WINDOW_FRAMES)]
        seconds = len(audio) / SAMPLE_RATE
        # Speech runs ~3 tokens/s; a generous cap still stops runaway hallucination early.
        max_new = int(10 + 8 * seconds)
        if self._lock:
            with self._lock:
                return self._generate(features, max_new)
        return self._generate(features, max_new)

    def _generate(self, features: np.ndarray, max_new: int) -> tuple[str, float, float]:
        encoder_output = self.model.encode(features)
        result = self.model.model.generate(
            encoder_output,
            [self.prompt],
            beam_size=1,
            max_length=len(self.prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = result.sequences_ids[0]
        text = self.tokenizer.decode(tokens).strip()
        avg_logprob = result.scores[0] if tokens else -10.0
        return text, result.no_speech_prob, avg_logprob
