"""Result cache in Redis, and single-flight for identical concurrent requests.

Key: ``<prefix>:<endpoint>:<sha256 of the canonical pixels>:<model versions>[:<options>]``.
Because the versions are part of the key, a new champion can never be answered from an old
entry. Values are JSON ``{"v": 1, "result": {...}}`` with a TTL.

Single-flight works at two levels: :class:`SingleFlight` joins identical requests inside one
process; across gateway replicas, :meth:`ResultCache.lead_or_follow` takes a short lock
(``<key>:lock``, ``SET NX PX``) so one replica computes while the others poll the result key
for a bounded time, then compute themselves (a replica that died holding the lock delays its
twins by at most that bound).

Redis is an optimisation, never a dependency: every operation has a short socket timeout, any
error or an unparsable value is a miss, and after a failure Redis is skipped for
``backoff_s`` so a dead or black-holed Redis adds at most one timeout per back-off period.
Keys hold a hash, never a file name; values hold only results the user may see again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

from services.common import metrics

log = logging.getLogger("gateway.cache")
FORMAT_VERSION = 1
# Delete the lock only if it is still ours (it may have expired and been taken by another replica).
_RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ResultCache:
    """Redis-backed JSON cache that degrades to "no cache" instead of failing."""

    def __init__(self, url: str, prefix: str, ttl_s: int, timeout_s: float, backoff_s: float, max_value_bytes: int) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_value_bytes = max_value_bytes
        self.down_until = 0.0
        self.last_error: str | None = None
        self.redis = None
        if url:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self.redis = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),  # no client retries: one bounded attempt, then a miss
                health_check_interval=0,
                max_connections=64,
            )

    @property
    def enabled(self) -> bool:
        return self.redis is not None

    def key(self, endpoint: str, sha256: str, versions: str, options: str = "") -> str:
        parts = [self.prefix, endpoint, sha256, versions]
        if options:
            parts.append(options)
        return ":".join(parts)

    def _available(self) -> bool:
        return self.redis is not None and time.monotonic() >= self.down_until

    def _failed(self, op: str, exc: Exception) -> None:
        self.last_error = f"{op}: {type(exc).__name__}"
        self.down_until = time.monotonic() + self.backoff_s
        metrics.CACHE_EVENTS.labels("error").inc()
        log.warning("redis unavailable; serving uncached", extra={"op": op, "error": type(exc).__name__, "backoff_s": self.backoff_s})

    async def get(self, key: str, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """The cached result, or None (miss, Redis down, or a corrupt value: unparsable, or
        lacking one of the ``required`` top-level fields)."""
        if not self._available():
            metrics.CACHE_EVENTS.labels("skipped").inc()
            return None
        try:
            # wait_for bounds the whole operation, also when a server accepts but never answers.
            raw = await asyncio.wait_for(self.redis.get(key), timeout=self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001 - any Redis problem is a miss
            self._failed("get", exc)
            return None
        self.last_error = None
        return self._parse(raw, required)

    def _parse(self, raw: bytes | None, required: tuple[str, ...]) -> dict[str, Any] | None:
        if raw is None:
            metrics.CACHE_EVENTS.labels("miss").inc()
            return None
        try:
            value = json.loads(raw)
            if not isinstance(value, dict) or value.get("v") != FORMAT_VERSION or not isinstance(value.get("result"), dict):
                raise ValueError("unexpected cache value layout")
            if any(k not in value["result"] for k in required):
                raise ValueError("cached result lacks required fields")
        except (ValueError, UnicodeDecodeError, TypeError):
            metrics.CACHE_EVENTS.labels("corrupt").inc()
            log.warning("corrupt cache value ignored")
            return None
        metrics.CACHE_EVENTS.labels("hit").inc()
        return value["result"]

    async def set(self, key: str, result: dict[str, Any]) -> bool:
        """Store a result with the TTL; False when skipped or Redis failed."""
        if not self._available():
            return False
        raw = json.dumps({"v": FORMAT_VERSION, "result": result}, separators=(",", ":"))
        if len(raw) > self.max_value_bytes:
            return False
        try:
            await asyncio.wait_for(self.redis.set(key, raw, ex=self.ttl_s), timeout=self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001
            self._failed("set", exc)
            return False
        metrics.CACHE_EVENTS.labels("stored").inc()
        return True

    async def lead_or_follow(self, key: str, required: tuple[str, ...], wait_s: float) -> tuple[dict[str, Any] | None, str | None]:
        """Across replicas, who computes ``key``'s result.

        ``(None, token)``: this replica holds the lock (for ``wait_s``) and computes; pass the
        token to :meth:`release`. ``(result, None)``: another replica computed it while this one
        waited. ``(None, None)``: compute without the lock (Redis unusable, the holder gave up
        without a result, or ``wait_s`` passed).
        """
        if not self._available() or wait_s <= 0:
            return None, None
        lock = f"{key}:lock"
        token = uuid.uuid4().hex
        try:
            got = await asyncio.wait_for(self.redis.set(lock, token, nx=True, px=int(wait_s * 1000)), timeout=self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001
            self._failed("lock", exc)
            return None, None
        if got:
            return None, token
        metrics.CACHE_EVENTS.labels("flight_wait").inc()
        end = time.monotonic() + wait_s
        delay = 0.01
        while time.monotonic() < end:
            await asyncio.sleep(min(delay, max(0.0, end - time.monotonic())))
            delay = min(delay * 2, 0.1)
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(key)
                pipe.exists(lock)
                raw, held = await asyncio.wait_for(pipe.execute(), timeout=self.timeout_s * 2)
            except Exception as exc:  # noqa: BLE001
                self._failed("flight_poll", exc)
                return None, None
            if raw is not None:
                result = self._parse(raw, required)
                if result is not None:
                    metrics.CACHE_EVENTS.labels("flight_shared").inc()
                    return result, None
            if not held:
                return None, None  # the holder finished without a usable result (or failed)
        return None, None

    async def release(self, key: str, token: str) -> None:
        """Drop the lock taken by :meth:`lead_or_follow`, if it is still this replica's."""
        if self.redis is None:
            return
        try:
            await asyncio.wait_for(self.redis.eval(_RELEASE_LUA, 1, f"{key}:lock", token), timeout=self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            self._failed("unlock", exc)

    async def check(self) -> dict[str, Any]:
        """Readiness detail: ``ok``, ``degraded`` (down: serving uncached) or ``disabled``."""
        if self.redis is None:
            return {"status": "disabled", "detail": "no REDIS_URL: results are not cached"}
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001
            self._failed("ping", exc)
            return {"status": "degraded", "detail": f"Redis unreachable ({type(exc).__name__}): serving uncached"}
        self.down_until = 0.0  # it answered: stop skipping it
        self.last_error = None
        return {"status": "ok", "ttl_s": self.ttl_s}

    async def close(self) -> None:
        if self.redis is not None:
            try:
                await self.redis.aclose()
            except Exception:  # noqa: BLE001
                pass


class SingleFlight:
    """Run one computation per key at a time; concurrent callers with the same key share it.

    The work runs in its own task, so a caller that disconnects does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task] = {}
        self.shared = 0  # callers that joined an existing computation (for tests and metrics)

    async def run(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task

            def _done(t: asyncio.Task, key: str = key) -> None:
                if self._tasks.get(key) is t:
                    del self._tasks[key]
                if not t.cancelled():
                    t.exception()  # mark retrieved: no "never retrieved" warning without waiters

            task.add_done_callback(_done)
        else:
            self.shared += 1
        return await asyncio.shield(task)
