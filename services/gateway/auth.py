"""Optional API keys (header ``X-API-Key``) with a token-bucket rate limit per key.

Off when no keys are configured (the local demo). When on, the check runs as pure ASGI
middleware in front of the body limit, so an unauthenticated or rate-limited client is
refused before a byte of its upload is read. Keys are compared in constant time against
every configured key; logs, metrics and the rate-limit buckets carry the key's name, never
the key. The buckets are shared by all gateway replicas through Redis
(:mod:`services.gateway.ratelimit`).
"""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.asgi import scope_header
from services.common.errors import error_response
from services.gateway.ratelimit import RateLimiter

log = logging.getLogger("gateway.auth")
PROTECTED_PREFIXES = ("/predict", "/progression")


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

    def __init__(self, app: ASGIApp, keys: dict[str, str], limiter: RateLimiter) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope.get("path", "").startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = scope_header(scope, b"x-api-key").decode("latin-1")
        name = match_key(given, self.keys) if given else None
        if name is None:
            log.info("request refused: missing or unknown API key")
            await error_response(401, "unauthorized", "a valid X-API-Key header is required", {"WWW-Authenticate": "ApiKey"})(
                scope, receive, send
            )
            return
        wait = await self.limiter.take(name)
        if wait > 0:
            log.info("rate limited", extra={"api_key_name": name})
            await error_response(
                429, "rate_limited", "rate limit of this API key exceeded", {"Retry-After": str(max(1, int(wait + 0.999)))}
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_name"] = name
        await self.app(scope, receive, send)
