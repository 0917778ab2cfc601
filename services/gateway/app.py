"""The gateway app: the only public API of the stack.

Follow one upload: ``POST /predict`` (or ``/progression``) -> API key and in-flight cap
(pre-body middleware, :mod:`services.gateway.auth`, :mod:`services.gateway.admission`) -> body
limit -> the route (:mod:`services.gateway.routes.results`) reads the form and asks
:meth:`~services.gateway.uploads.Upload.resolve` for the canonical pixels' SHA-256: from the
upload record (keyed by the raw bytes' hash), or decoded with ``alzprog.decode.decode_slice``
and canonicalised once (:mod:`services.gateway.uploads`) -> :mod:`services.gateway.pipeline`:
the result cache (:mod:`services.gateway.cache`, keyed by that SHA-256 and the served model
versions), single-flight, and on a miss the classifier, then the generator, over HTTP
(:mod:`services.gateway.clients`). A repeated upload with a cached result is never decoded.

Here: :func:`create_app` wires the settings, the middlewares, the lifespan that creates the
:class:`~services.gateway.state.GatewayState`, and the routers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from alzprog.inference.runtime import available_cpus

from services.common.app import build_app, serve
from services.common.logs import configure_logging
from services.gateway.admission import InFlight, InFlightLimitMiddleware
from services.gateway.auth import ApiKeyMiddleware
from services.gateway.pipeline import warm_up
from services.gateway.ratelimit import RateLimiter
from services.gateway.routes import health, models, results
from services.gateway.settings import Settings, get_settings
from services.gateway.state import GatewayState

SERVICE = "gateway"
log = logging.getLogger("gateway")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app (tests pass their own settings)."""
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level)
    keys = settings.parsed_api_keys()
    in_flight = InFlight(*settings.in_flight_caps(available_cpus()))
    limiter = RateLimiter(
        list(keys),
        settings.rate_limit_per_minute,
        settings.rate_limit_burst,
        redis_url=settings.redis_url if keys else "",
        prefix=settings.cache_prefix,
        timeout_s=settings.redis_timeout_s,
        backoff_s=settings.redis_backoff_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = GatewayState(settings)
        app.state.svc = state
        # Load the decoders and run one canonicalisation now, so the first upload does not
        # pay for loading them and the Pillow plugins.
        await asyncio.get_running_loop().run_in_executor(state.decoder.pool, warm_up)
        log.info(
            "gateway starting",
            extra={"classifier": settings.classifier_url, "generator": settings.generator_url, "cache": state.cache.enabled, "api_keys": len(keys),
                   "max_in_flight": in_flight.max_total, "max_in_flight_progression": in_flight.max_progression},
        )
        yield
        await state.close()
        await limiter.close()

    app = build_app(
        SERVICE,
        title="alzprog gateway",
        description=(
            "Alzheimer's MRI staging and synthetic progression. Upload one MRI slice (PNG, JPEG, DICOM, "
            "NIfTI) as multipart field `file`, or a whole NIfTI volume or a zip of one DICOM series to `/volume`. Research demo: synthetic images are not for diagnosis. "
            "When API keys are configured, send one in the `X-API-Key` header."
        ),
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
        form_limits={"max_files": 1, "max_fields": 8, "max_part_size": 64 * 1024},
        # Last = outermost: the API key is checked first, then the in-flight cap, then the body is read.
        pre_body_middleware=[
            (InFlightLimitMiddleware, {"limits": in_flight}),
            (ApiKeyMiddleware, {"keys": keys, "limiter": limiter}),
        ],
    )
    app.state.settings = settings
    app.state.in_flight = in_flight
    app.include_router(health.router)
    app.include_router(results.router)
    app.include_router(models.router)
    return app


def main() -> None:
    """``python -m services.gateway``: serve on GATEWAY_HOST:GATEWAY_PORT."""
    settings = get_settings()
    serve(create_app(settings), settings.host, settings.port)
