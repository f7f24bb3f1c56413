"""Rate limits per caller number and per source IP: a token bucket in Redis, shared by all workers.

Each bucket (kind, key) holds up to `burst` tokens and refills at `per_min` tokens a minute; a hit
takes one token or is refused with the time until one is back. The whole read-refill-take step is
one Lua script, so concurrent hits from any number of threads or workers never admit more than
the bucket allows. Time is the Redis server's (TIME), so workers with skewed clocks agree; tests
pass `now` to drive the clock themselves.

A bucket's key expires once it would have refilled completely: an idle caller costs no memory,
and a missing key simply means a full bucket. Keys hold a hash of the caller's number or IP,
not the number itself, since Redis is storage too and phone numbers are PII.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

# KEYS[1] = bucket; ARGV = rate (tokens/s), burst, now ("" = server time).
# The bucket is a hash {tokens, ts}. Returns {allowed (0/1), retry_after seconds as a string}:
# Lua numbers returned to Redis are truncated to integers, hence the string.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
local refill = (burst - tokens) / rate
if refill <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil(refill * 1000))
end
return {allowed, tostring(retry)}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_secs: float  # 0 when allowed; else seconds until the next token
    key: str  # "kind:key", for the log line and the refusal message


class RateLimiter:
    """Token buckets in Redis. One instance per process; any number of processes may share a Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "voicebot:rl") -> None:
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_BUCKET_LUA)

    def redis_key(self, kind: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return f"{self._prefix}:{kind}:{digest}"

    def hit(self, kind: str, key: str, per_min: float, burst: int, now: float | None = None) -> Verdict:
        """Take one token from the (kind, key) bucket.

        per_min <= 0 means unlimited: always allowed, and Redis is not asked. A burst below 1 is
        taken as 1 (a bucket that can never hold a token would refuse everything forever).
        Redis errors propagate: the caller decides whether to fail open or closed.
        """
        name = f"{kind}:{key}"
        if per_min <= 0:
            return Verdict(True, 0.0, name)
        rate = per_min / 60.0
        args = [repr(rate), max(1, int(burst)), "" if now is None else repr(float(now))]
        allowed, retry = self._script(keys=[self.redis_key(kind, key)], args=args)
        return Verdict(bool(int(allowed)), 0.0 if int(allowed) else float(retry), name)

    def reset(self, kind: str, key: str) -> None:
        """Refill a bucket (an operator unblocking a caller; tests)."""
        self._redis.delete(self.redis_key(kind, key))
