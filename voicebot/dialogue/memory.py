"""Per-call dialogue memory in Redis, encrypted at rest.

One key per call, `voicebot:memory:{call_id}`, holding a Fernet token of the memory's JSON. The
live dialogue may keep a caller's numbers in its slots, so what Redis (and its RDB/AOF files)
holds is ciphertext. Every save rewrites the value and refreshes the TTL, so a call's memory
outlives the call by `ttl_secs` and a bot restarted meanwhile (new process, new client) picks
the call up where it was.

Loading never raises into a call: a missing, expired, undecryptable (wrong or rotated key) or
malformed value gives an empty Memory and a log line saying which.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken

log = logging.getLogger(__name__)

KEY_PREFIX = "voicebot:memory:"
KEY_FILE = "secret.key"
FORMAT_VERSION = 1


@dataclass
class Memory:
    """What the bot remembers of one call.

    turns: (caller text, bot reply) pairs, oldest first, at most `max_turns` of them once saved.
    slots: extracted values ("order_number" -> "45712"), carried across turns.
    failed_turns: consecutive turns the bot could not answer (the handoff rule counts them).
    """

    turns: list[tuple[str, str]] = field(default_factory=list)
    slots: dict[str, str] = field(default_factory=dict)
    failed_turns: int = 0
    last_route: str = ""
    last_reply: str = ""
    pending_question: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add_turn(self, caller: str, bot: str) -> None:
        self.turns.append((caller, bot))
        self.last_reply = bot

    def to_json(self) -> str:
        return json.dumps({"v": FORMAT_VERSION, **asdict(self)}, separators=(",", ":"), default=_plain)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Memory:
        """Parse stored JSON; ValueError (with the reason) when it is not a Memory."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError(
                f"unexpected format version {data.get('v') if isinstance(data, dict) else data!r}"
            )
        turns = data.get("turns", [])
        if not isinstance(turns, list) or not all(_is_pair(t) for t in turns):
            raise ValueError("turns is not a list of [caller, bot] pairs")
        slots, extra = data.get("slots", {}), data.get("extra", {})
        if not isinstance(slots, dict) or not isinstance(extra, dict):
            raise ValueError("slots/extra are not objects")
        return cls(
            turns=[(str(c), str(b)) for c, b in turns],
            slots={str(k): str(v) for k, v in slots.items()},
            failed_turns=int(data.get("failed_turns", 0)),
            last_route=str(data.get("last_route", "")),
            last_reply=str(data.get("last_reply", "")),
            pending_question=str(data.get("pending_question", "")),
            extra=extra,
        )


def _plain(value: Any) -> Any:
    """JSON for what `extra` may pick up from retrieval: numpy scalars/arrays, sets; else its str."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


class MemoryStore:
    """Load/save/forget call memories in Redis (str- or bytes-decoding clients alike)."""

    def __init__(self, client: redis.Redis, *, ttl_secs: int, max_turns: int, key: bytes) -> None:
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be positive")
        self._redis = client
        self._ttl = ttl_secs
        self._max_turns = max(0, max_turns)
        self._fernet = Fernet(key)

    @staticmethod
    def key(call_id: str) -> str:
        return KEY_PREFIX + call_id

    def load(self, call_id: str) -> Memory:
        """The call's memory; an empty Memory when absent, expired, unreadable or Redis is down."""
        try:
            raw = self._redis.get(self.key(call_id))
        except redis.RedisError as exc:
            log.warning("memory for call %s not loaded, Redis error: %s", call_id, exc)
            return Memory()
        if raw is None:
            return Memory()
        try:
            plain = self._fernet.decrypt(raw.encode() if isinstance(raw, str) else raw)
        except InvalidToken:
            log.warning(
                "memory for call %s is undecryptable (wrong or rotated secret key); starting empty", call_id
            )
            return Memory()
        try:
            return Memory.from_json(plain)
        except (ValueError, TypeError) as exc:
            log.warning("memory for call %s is malformed (%s); starting empty", call_id, exc)
            return Memory()

    def save(self, call_id: str, memory: Memory) -> None:
        """Store the memory (history cut to the last max_turns) and refresh its TTL.

        A Redis failure is logged, not raised: the call goes on with its in-process memory.
        """
        if len(memory.turns) > self._max_turns:
            memory.turns = memory.turns[len(memory.turns) - self._max_turns :]
        token = self._fernet.encrypt(memory.to_json().encode())
        try:
            self._redis.set(self.key(call_id), token, ex=self._ttl)
        except redis.RedisError as exc:
            log.warning("memory for call %s not saved, Redis error: %s", call_id, exc)

    def copy(self, source_call: str, call_id: str) -> bool:
        """Start `call_id` with a copy of another call's memory (a resumed call). False: none to copy."""
        try:
            return bool(self._redis.copy(self.key(source_call), self.key(call_id), replace=True))
        except redis.RedisError as exc:
            log.warning(
                "memory of call %s not carried over to %s, Redis error: %s", source_call, call_id, exc
            )
            return False

    def forget(self, call_id: str) -> None:
        try:
            self._redis.delete(self.key(call_id))
        except redis.RedisError as exc:
            log.warning("memory for call %s not deleted, Redis error: %s", call_id, exc)


def load_or_create_key(secret: str, data_dir: Path) -> bytes:
    """The Fernet key: `secret` when set (a urlsafe-base64 32-byte key, as `Fernet.generate_key()`
    makes), else DATA_DIR/secret.key, created once with mode 0600.

    Raises ValueError for a malformed configured key or key file: replacing it silently would
    make every stored memory unreadable.
    """
    if secret:
        return _checked(secret.strip().encode(), "VOICEBOT_SECRET_KEY")
    path = data_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    _tighten(path)
    return _checked(path.read_bytes().strip(), str(path))


def _checked(key: bytes, origin: str) -> bytes:
    try:
        if len(base64.urlsafe_b64decode(key)) == 32:
            return key
    except (binascii.Error, ValueError):
        pass
    raise ValueError(
        f"{origin} is not a Fernet key (44 urlsafe-base64 characters); make one with "
        '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`'
    )


def _create_key_file(path: Path) -> None:
    """Write a new key atomically: two processes starting together end up with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key() + b"\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # fails if another process won the race; then its key is used
            log.info("created memory encryption key %s", path)
    finally:
        os.unlink(tmp)


def _tighten(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
