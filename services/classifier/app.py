"""Classifier service routes: ``POST /v1/classify``, ``/v1/info``, ``/livez``, ``/readyz``, ``/metrics``.

Internal service: it receives the canonical slice from the gateway in the raw wire format of
:mod:`services.common.wire` (no image decoder runs here) and answers with the calibrated
stage probabilities of the champion it currently serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from alzprog.inference.runtime import session_threads
from alzprog.preprocessing import CANONICAL_SIZE

from services.classifier.batching import MicroBatcher
from services.classifier.model_holder import ClassifierRuntime, make_loader
from services.classifier.settings import Settings, get_settings
from services.common import metrics
from services.common.admission import AdmissionLimiter
from services.common.app import Lifecycle, build_model_app, serve
from services.common.errors import ERROR_RESPONSES, ServiceError, unavailable
from services.common.logs import configure_logging
from services.common.model_slot import ModelSlot, SlotWatcher
from services.common.serving import serving_plan
from services.common.timing import ServerTiming
from services.common.wire import OVERLAP_HEADER, SHAPE_HEADER, canonical_openapi, decode_canonical

SERVICE = "classifier"
log = logging.getLogger("classifier")

CANONICAL_BODY = canonical_openapi("256*256 uint8 pixels, optionally followed by 256*256 mask bytes (0/1)")


class ClassifierState:
    """Everything the routes need, created in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        plan = serving_plan(settings.max_concurrency, settings.providers, settings.intra_op_threads)
        self.concurrency, self.providers, self.threads = plan.concurrency, plan.providers, plan.threads
        self.slot: ModelSlot[ClassifierRuntime] = ModelSlot(SERVICE, settings.model_name, settings.alias, make_loader(self.providers, self.threads, settings.precision))
        self.watcher = SlotWatcher([self.slot], poll_s=settings.poll_seconds, retry_s=settings.retry_seconds)
        # With batching, a worker serves up to batch_max_size requests at once.
        admitted = self.concurrency * settings.batch_max_size
        self.limiter = AdmissionLimiter(admitted, settings.max_queue, settings.queue_timeout_s, service=SERVICE)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="classify")
        self.batcher = MicroBatcher(self.pool, settings.batch_max_size, settings.batch_max_wait_ms) if settings.batch_max_size > 1 else None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the classifier app (tests pass their own settings)."""
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ClassifierState(settings)
        app.state.svc = state
        # First load in the background: /livez answers at once, /readyz once a model is in.
        state.watcher.start()
        if state.batcher is not None:
            state.batcher.start()
        log.info("classifier starting", extra={"concurrency": state.concurrency, "threads": state.threads.describe(),
                                               "providers": state.providers, "precision_setting": settings.precision})
        yield
        state.watcher.stop()
        if state.batcher is not None:
            await state.batcher.stop()
        state.pool.shutdown(wait=True)

    def svc(request: Request) -> ClassifierState:
        return request.app.state.svc

    def models(request: Request) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
        s = svc(request)
        info = s.slot.info()
        cur = s.slot.current
        body = {**info, "precision": cur.model.precision if cur else None}
        return {"model": body}, [info], s.settings.retry_seconds

    app = build_model_app(
        SERVICE,
        title="alzprog classifier (internal)",
        description="Stage classifier champion served with ONNX Runtime. Internal: the gateway is the public API.",
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
        models=models,
        ready_when="a model is loaded and warmed up",
    )

    @app.get("/v1/info")
    def info(request: Request) -> dict[str, Any]:
        """The served model versions (the gateway keys its cache on them)."""
        s = svc(request)
        cur = s.slot.current
        return {
            "service": SERVICE,
            "ready": cur is not None and not Lifecycle.draining,
            "models": [s.slot.info()],
            "backend": cur.model.backend if cur else None,
            "precision": {"setting": s.settings.precision, "serving": cur.model.precision if cur else None,
                          "reason": cur.model.precision_reason if cur else None,
                          "int8_check": cur.model.int8_check if cur else None},
            "providers": cur.model.providers if cur else s.providers,
            "batching": {"max_size": s.settings.batch_max_size, "max_wait_ms": s.settings.batch_max_wait_ms,
                         "batches": s.batcher.batches if s.batcher else 0, "items": s.batcher.items if s.batcher else 0},
            "threads": session_threads(cur.model.session if cur else None, s.threads),
            "in_flight": s.limiter.in_flight,
            "waiting": s.limiter.waiting,
        }

    @app.post("/v1/classify", openapi_extra=CANONICAL_BODY, responses={k: ERROR_RESPONSES[k] for k in (400, 413, 503)})
    async def classify(
        request: Request,
        explain: bool = Query(False, description="add a Grad-CAM overlay"),
        tta: bool = Query(False, description="add the spread of the probabilities over the test-time augmentation views"),
    ) -> JSONResponse:
        """Stage probabilities (temperature-calibrated) of one canonical slice, with its
        out-of-distribution score (``ood``: null when the model has no reference)."""
        t_start = time.perf_counter()
        s = svc(request)
        served = s.slot.current  # one reference for the whole request: swaps never mix versions
        if served is None:
            raise unavailable("model_not_loaded", "the classifier has no model loaded yet", retry_after=s.settings.retry_seconds)
        if explain and not s.settings.explain_enabled:
            raise ServiceError(400, "explain_disabled", "explanations are disabled on this service")
        image, mask = decode_canonical(await request.body(), request.headers.get(SHAPE_HEADER), CANONICAL_SIZE)
        runtime = served.model
        timing = ServerTiming()
        async with s.limiter.admit():
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            if s.batcher is not None and not explain and not tta:
                result = await s.batcher.submit(runtime, image)
            else:
                overlapped = request.headers.get(OVERLAP_HEADER) == "1"
                result = await loop.run_in_executor(s.pool, runtime.predict, image, overlapped, tta)
            if explain:
                result["explain"] = await loop.run_in_executor(s.pool, runtime.explain, image, mask, result["stage_index"])
            elapsed = time.perf_counter() - t0
            metrics.INFERENCE_LATENCY.labels(SERVICE, served.ref.name).observe(elapsed)
            timing.add("infer", elapsed)
        metrics.INFERENCES.labels(SERVICE, served.ref.name, served.version).inc()
        result["model"] = {"name": served.ref.name, "version": served.version}
        result.setdefault("explain", None)
        timing.add("total", time.perf_counter() - t_start)
        return JSONResponse(result, headers=timing.as_headers())

    return app


def main() -> None:
    """``python -m services.classifier``: serve on CLASSIFIER_HOST:CLASSIFIER_PORT."""
    settings = get_settings()
    serve(create_app(settings), settings.host, settings.port)
