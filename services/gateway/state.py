"""What the gateway holds while it runs: backend clients, the result cache, single-flight, the
decoder, the model versions each backend serves and the model card, created in the lifespan
(:func:`services.gateway.app.create_app`) and read by the routes through
:mod:`services.gateway.deps`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from alzprog.inference.runtime import available_cpus

from services.common.errors import ServiceError, unavailable
from services.gateway.cache import ResultCache, SingleFlight
from services.gateway.clients import BackendClient, CircuitBreaker
from services.gateway.settings import Settings
from services.gateway.uploads import Decoder

# Seconds a model card read from the registry is reused.
MODEL_CARD_TTL_S = 60.0
MODEL_CARD_DEADLINE_S = 10.0


class VersionBook:
    """The model versions each backend serves now, from its ``/v1/info``, reused for ``ttl_s``.

    When a backend cannot be asked, the last known versions are used so cached answers can
    still be served; a fresh champion is seen within ``ttl_s`` of its swap.
    """

    def __init__(self, client: BackendClient, ttl_s: float, deadline_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.deadline_s = deadline_s
        self._info: dict[str, Any] | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def versions(self) -> dict[str, str]:
        """``{model name: version}`` of the loaded models (empty when never known)."""
        if self._info is None or time.monotonic() - self._fetched >= self.ttl_s:
            async with self._lock:
                if self._info is None or time.monotonic() - self._fetched >= self.ttl_s:
                    try:
                        if self.client.breaker.state == "open":
                            raise ServiceError(503, "backend_unavailable", "circuit open")
                        resp = await self.client.call("GET", "/v1/info", deadline_s=self.deadline_s, use_breaker=False, retries=0)
                        self._info = resp.json()
                        self._fetched = time.monotonic()
                    except (ServiceError, ValueError):
                        pass  # keep the last known versions
        info = self._info or {}
        return {m["name"]: str(m["version"]) for m in info.get("models", []) if m.get("ready") and m.get("version")}


class ModelCardCache:
    """The model card from the MLflow registry, reused for ``ttl_s``; the last good one is
    served while the registry is down, and without one the registry's absence is a quick 503."""

    def __init__(self, ttl_s: float = MODEL_CARD_TTL_S, deadline_s: float = MODEL_CARD_DEADLINE_S) -> None:
        self.ttl_s = ttl_s
        self.deadline_s = deadline_s
        self._card: dict[str, Any] | None = None
        self._at: float | None = None

    async def card(self) -> dict[str, Any]:
        """The card (see :func:`alzprog.model_card.model_card`); raises a 503 ServiceError when
        the registry cannot be read and no card was read before."""
        now = time.monotonic()
        if self._at is not None and now - self._at <= self.ttl_s and self._card is not None:
            return self._card
        from alzprog.model_card import model_card

        # The card is the gateway's only MLflow call: a registry that is down answers a quick
        # 503, not minutes of the client's retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            card = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, model_card), self.deadline_s)
        except Exception as exc:  # noqa: BLE001 - the registry is down or unreachable
            if self._card is not None:
                return self._card
            raise unavailable("registry_unavailable", f"the model registry could not be read ({type(exc).__name__})", retry_after=5) from None
        self._card, self._at = card, now
        return card


class GatewayState:
    """Clients, cache, single-flight, the decoder and the model card, created in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            timeout=httpx.Timeout(settings.classify_deadline_s, connect=min(2.0, settings.classify_deadline_s)),
            trust_env=False,  # never route internal calls through a proxy from the environment
        )

        def backend(name: str, url: str) -> BackendClient:
            return BackendClient(
                name,
                url,
                self.http,
                retries=settings.retries,
                backoff_base_s=settings.backoff_base_s,
                breaker=CircuitBreaker(name, settings.breaker_failures, settings.breaker_reset_s),
            )

        self.classifier = backend("classifier", settings.classifier_url)
        self.generator = backend("generator", settings.generator_url)
        self.classifier_versions = VersionBook(self.classifier, settings.versions_ttl_s, settings.info_deadline_s)
        self.generator_versions = VersionBook(self.generator, settings.versions_ttl_s, settings.info_deadline_s)
        self.cache = ResultCache(
            settings.redis_url,
            settings.cache_prefix,
            settings.cache_ttl_s,
            settings.redis_timeout_s,
            settings.redis_backoff_s,
            settings.max_cache_value_bytes,
        )
        self.flights = SingleFlight()
        self.decoder = Decoder(self.cache, self.flights, settings.decode_concurrency or available_cpus(), settings.decode_queue)
        self.model_cards = ModelCardCache()

    async def close(self) -> None:
        """Close the HTTP client, the Redis connection and the decode pool."""
        await self.http.aclose()
        await self.cache.close()
        self.decoder.close()
