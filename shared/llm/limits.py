"""Shared rate limit and circuit breaker for LLM providers.

Celery's ``rate_limit`` is per worker; these keep their state in Redis so every worker process of
a provider shares one budget and one breaker. ``MemoryKV`` gives the same behaviour inside one
process (embedded mode, tests of the logic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shared.errors import CircuitOpen, RateLimitWait


class MemoryKV:
    """The few Redis operations the limiter and breaker need, in process memory."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._data: dict[str, tuple[float, float]] = {}  # key -> (value, expires_at)
        self._lock = threading.Lock()
        self._clock = clock

    def _live(self, key: str) -> float | None:
        item = self._data.get(key)
        if item is None or item[1] <= self._clock():
            self._data.pop(key, None)
            return None
        return item[0]

    def incr(self, key: str, ttl: float) -> int:
        with self._lock:
            value = (self._live(key) or 0) + 1
            expires = self._data[key][1] if key in self._data else self._clock() + ttl
            self._data[key] = (value, expires)
            return int(value)

    def get(self, key: str) -> float | None:
        with self._lock:
            return self._live(key)

    def set(self, key: str, value: float, ttl: float) -> None:
        with self._lock:
            self._data[key] = (value, self._clock() + ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def reserve(self, key: str, interval: float, max_wait: float) -> float | None:
        with self._lock:
            now = self._clock()
            slot = max(self._live(key) or 0.0, now)
            if slot - now > max_wait:
                return None
            self._data[key] = (slot + interval, slot + interval + 60)
            return slot - now


class RedisKV:
    """The same operations on Redis, shared by every process that uses the same URL."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    def incr(self, key: str, ttl: float) -> int:
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, max(int(ttl + 0.999), 1), nx=True)
        return int(pipe.execute()[0])

    def get(self, key: str) -> float | None:
        value = self._redis.get(key)
        return None if value is None else float(value)

    def set(self, key: str, value: float, ttl: float) -> None:
        self._redis.set(key, value, px=max(int(ttl * 1000), 1))

    def delete(self, key: str) -> None:
        self._redis.delete(key)

    # Atomic slot reservation on Redis's own clock, so workers on different hosts agree.
    _RESERVE = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
    local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
    if slot - now > tonumber(ARGV[2]) then return nil end
    redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[1])), 'EX', 60 + math.ceil(slot - now))
    return tostring(slot - now)
    """

    def reserve(self, key: str, interval: float, max_wait: float) -> float | None:
        delay = self._redis.eval(self._RESERVE, 1, key, repr(interval), repr(max_wait))
        return None if delay is None else float(delay)


class RateLimiter:
    """At most ``per_second`` calls per second across all processes sharing ``kv``.

    Each call reserves the next free slot, ``1/per_second`` after the previous one, so traffic is
    evenly spaced: fixed one-second windows let two windows' calls land in the same second at the
    provider and burst past its limit.
    """

    def __init__(self, kv, name: str, per_second: float | None, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.kv, self.name, self.per_second = kv, name, per_second
        self._sleep, self._clock = sleep, clock

    def acquire(self, max_wait: float = 60.0) -> None:
        """Block until this call's slot comes; refuse when it is more than ``max_wait`` away."""
        if not self.per_second:
            return
        delay = self.kv.reserve(f"fusionq:rate:{self.name}:next", 1.0 / self.per_second, max_wait)
        if delay is None:
            raise RateLimitWait(f"rate limit of {self.per_second}/s for {self.name} left no slot for {max_wait:.0f}s")
        if delay > 0:
            self._sleep(delay)


class CircuitBreaker:
    """Opens after ``failures`` consecutive failed calls, for ``cooldown`` seconds, for everyone."""

    def __init__(self, kv, name: str, *, failures: int = 5, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.kv, self.name, self.failures, self.cooldown = kv, name, failures, cooldown
        self._clock = clock

    @property
    def _open_key(self) -> str:
        return f"fusionq:breaker:{self.name}:open_until"

    def check(self) -> None:
        """Raise :class:`CircuitOpen` while the breaker is open."""
        until = self.kv.get(self._open_key)
        if until is not None and until > self._clock():
            raise CircuitOpen(f"provider {self.name} failed {self.failures} times in a row; "
                              f"calls paused for {until - self._clock():.0f}s more")

    def record_success(self) -> None:
        self.kv.delete(f"fusionq:breaker:{self.name}:failures")

    def record_failure(self) -> None:
        count = self.kv.incr(f"fusionq:breaker:{self.name}:failures", ttl=max(self.cooldown * 10, 60))
        if count >= self.failures:
            self.kv.set(self._open_key, self._clock() + self.cooldown, ttl=self.cooldown)
            self.kv.delete(f"fusionq:breaker:{self.name}:failures")
