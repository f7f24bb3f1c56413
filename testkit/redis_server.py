"""A throwaway Debian `redis-server` on a free loopback port, no persistence, for one test."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from testkit.net import free_port

START_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """Where `redis-server` is installed (apt-get install redis-server), or None."""
    return shutil.which("redis-server")


@contextlib.contextmanager
def running_redis_server(work_dir: Path, *, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start `redis-server` in `work_dir` (its log: `work_dir/redis-server.log`), yield its URL once
    it answers PING, terminate it afterwards. RuntimeError when it is not installed, exits, or does
    not answer within `timeout_s`."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = work_dir / "redis-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(work_dir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_for_ping(url, proc, log_path, timeout_s)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {log.read_text()}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")
    finally:
        client.close()
