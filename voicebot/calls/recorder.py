"""Call recordings: where a call's WAV goes, and the pipeline stage that writes it as it goes."""

from __future__ import annotations

import asyncio
import uuid
import wave
from datetime import datetime
from pathlib import Path

from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor

from voicebot.calls.admission import CALL_ID_RE

RECORDING_SAMPLE_RATE = 8000  # the telephone band is all a call carries


def recording_path(recordings_dir: Path, call_id: str, started_at: datetime) -> Path:
    """Where a call's recording goes: named from the server's own call id, always inside the dir."""
    if not CALL_ID_RE.fullmatch(call_id):
        raise ValueError(f"not a server call id: {call_id!r}")
    root = recordings_dir.resolve()
    path = (root / started_at.strftime("%Y/%m/%d") / f"{call_id}-{uuid.uuid4().hex[:8]}.wav").resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"recording path {path} is outside {root}")
    return path


class CallRecorder:
    """Streams both sides of the call into a stereo WAV (caller left, bot right) as it goes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Kept open for the whole call and closed in close(): the recording is written as it goes.
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RECORDING_SAMPLE_RATE)
        self.processor = AudioBufferProcessor(
            sample_rate=RECORDING_SAMPLE_RATE,
            num_channels=2,
            buffer_size=RECORDING_SAMPLE_RATE * 2 * 2,  # flush about every second of audio
            auto_start_recording=True,
        )
        self.processor.add_event_handler("on_audio_data", self._on_audio)

    async def _on_audio(self, _processor: object, audio: bytes, sample_rate: int, channels: int) -> None:
        if self._wav is not None and audio:
            await asyncio.to_thread(self._wav.writeframes, audio)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
