"""Synthesized phrase audio, kept on disk and in memory.

Known answers (knowledge-base entries, the greeting, fixed phrases) are synthesized once and
stored at the call's output rate, so speaking them costs no synthesis and no resampling.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

FORMAT = 2  # 2: leading/trailing silence trimmed


def normalize(text: str) -> str:
    return " ".join(text.split())


class AudioCache:
    def __init__(self, directory: Path, voice_id: str, sample_rate: int, max_in_memory: int = 512) -> None:
        # Bump FORMAT when how phrases are rendered changes, so stale audio is never served.
        self.directory = directory / f"{voice_id}-{sample_rate}-v{FORMAT}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_in_memory
        self._lock = threading.Lock()

    def _path(self, text: str) -> Path:
        digest = hashlib.sha256(normalize(text).encode()).hexdigest()[:32]
        return self.directory / f"{digest}.pcm"

    def get(self, text: str) -> bytes | None:
        key = normalize(text)
        with self._lock:
            audio = self._memory.get(key)
            if audio is not None:
                self._memory.move_to_end(key)
                return audio
        path = self._path(text)
        if not path.is_file():
            return None
        audio = path.read_bytes()
        self._remember(key, audio)
        return audio

    def put(self, text: str, audio: bytes) -> None:
        path = self._path(text)
        # Unique per writer: processes sharing the cache dir may write the same phrase at once.
        partial = path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
        partial.write_bytes(audio)
        partial.replace(path)
        self._remember(normalize(text), audio)

    def __contains__(self, text: str) -> bool:
        return normalize(text) in self._memory or self._path(text).is_file()

    def _remember(self, key: str, audio: bytes) -> None:
        with self._lock:
            self._memory[key] = audio
            self._memory.move_to_end(key)
            while len(self._memory) > self._max:
                self._memory.popitem(last=False)
