"""Optional API keys (header ``X-API-Key``) with a token-bucket rate limit per key.

Off when no keys are configured (the local demo). When on, the check runs as pure ASGI
middleware in front of the body limit, so an unauthenticated or rate-limited client is
refused before a byte of its upload is read. Keys are compared in constant time against
every configured key; logs and metrics carry the key's name, never the key.
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import error_response

log = logging.getLogger("gateway.auth")
PROTECTED_PREFIXES = ("/predict", "/progression")


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per request."""

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


def match_key(given: str, keys: dict[str, str]) -> str | None:
    """The name of the configured key equal to ``given``; every key is compared (constant time)."""
    found = None
    given_b = given.encode("utf-8", "replace")
    for name, key in keys.items():
        if hmac.compare_digest(given_b, key.encode()):
            found = name
    return found


class ApiKeyMiddleware:
    """Require a valid ``X-API-Key`` on the result endpoints and rate-limit each key."""

    def __init__(self, app: ASGIApp, keys: dict[str, str], per_minute: float, burst: int) -> None:
        self.app = app
        self.keys = keys
        self.buckets = {name: TokenBucket(per_minute / 60.0, burst) for name in keys}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope.get("path", "").startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = ""
        for k, v in scope.get("headers", ()):
            if k == b"x-api-key":
                given = v.decode("latin-1")
                break
        name = match_key(given, self.keys) if given else None
        if name is None:
            log.info("request refused: missing or unknown API key")
            await error_response(401, "unauthorized", "a valid X-API-Key header is required", {"WWW-Authenticate": "ApiKey"})(
                scope, receive, send
            )
            return
        wait = self.buckets[name].take()
        if wait > 0:
            log.info("rate limited", extra={"api_key_name": name})
            await error_response(
                429, "rate_limited", "rate limit of this API key exceeded", {"Retry-After": str(max(1, int(wait + 0.999)))}
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_name"] = name
        await self.app(scope, receive, send)
