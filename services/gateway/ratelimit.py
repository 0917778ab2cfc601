"""Per-API-key rate limits: one token bucket per key *name*, shared by every gateway replica.

The bucket lives in Redis (``<prefix>:ratelimit:<key name>``: a hash of ``tokens`` and ``ts``),
updated by one Lua script, so refilling and taking a token is atomic and uses the Redis
server's clock: N gateway replicas sharing one Redis together allow one key ``burst``
requests at once and ``per_minute`` a minute, not N times that. Keys and values hold the
key's configured name, never the key.

Redis is an optimisation here too, never a dependency: each call is bounded by the socket
timeout; on an error the request is decided by an in-process bucket of the same shape (each
replica then allows the full rate on its own), the switch is logged once, and Redis is skipped
for ``backoff_s`` before it is tried again. Without ``REDIS_URL`` the buckets are per process.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("gateway.ratelimit")

# KEYS[1] = bucket; ARGV = rate (tokens/s), burst. Returns the seconds to wait ("0" = allowed).
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class TokenBucket:
    """In-process bucket: ``rate`` tokens per second up to ``burst``; one token per request."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until the next one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """``take(name)``: the shared Redis bucket of that key name, else the process's own."""

    def __init__(
        self,
        names: list[str],
        per_minute: float,
        burst: int,
        *,
        redis_url: str = "",
        prefix: str = "alzprog",
        timeout_s: float = 0.25,
        backoff_s: float = 5.0,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.local = {name: TokenBucket(self.rate, burst) for name in names}
        self.redis_url = redis_url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.down_until = 0.0
        self.shared = bool(redis_url)  # False while falling back (for the one log line per switch)
        self._redis = None
        self._script = None

    def _client(self):  # noqa: ANN202
        # Created on first use, inside the server's event loop (the connections belong to it).
        if self._redis is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = aioredis.Redis.from_url(
                self.redis_url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
                max_connections=32,
            )
            self._script = self._redis.register_script(_TAKE_LUA)
        return self._script

    async def take(self, name: str) -> float:
        """0.0 when the request may go on, else the seconds until this key's next token."""
        if self.redis_url and time.monotonic() >= self.down_until:
            script = self._client()
            try:
                raw = await asyncio.wait_for(
                    script(keys=[f"{self.prefix}:ratelimit:{name}"], args=[repr(self.rate), self.burst]),
                    timeout=self.timeout_s * 2,
                )
                wait = float(raw)
            except Exception as exc:  # noqa: BLE001 - any Redis problem: decide locally
                self.down_until = time.monotonic() + self.backoff_s
                if self.shared:
                    self.shared = False
                    log.warning(
                        "rate limits per process: Redis unavailable",
                        extra={"error": type(exc).__name__, "backoff_s": self.backoff_s},
                    )
            else:
                if not self.shared:
                    self.shared = True
                    log.info("rate limits shared through Redis again")
                return max(0.0, wait)
        return self.local[name].take()

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:  # noqa: BLE001
                pass
