"""Generator service routes: ``POST /v1/progress``, ``/v1/info``, ``/livez``, ``/readyz``, ``/metrics``.

Internal service: it receives the canonical slice (and its brain mask) from the gateway in
the raw wire format of :mod:`services.common.wire` and runs the transition generators from the
given stage to Moderate Dementia.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from alzprog.constants import STAGES, TRANSITIONS, progression_model_name, stage_index
from alzprog.inference.runtime import prepare_torch_serving
from alzprog.preprocessing import CANONICAL_SIZE

from services.common import metrics
from services.common.admission import AdmissionLimiter
from services.common.app import Lifecycle, build_model_app, serve
from services.common.errors import ERROR_RESPONSES, ServiceError, unavailable
from services.common.logs import configure_logging
from services.common.model_slot import ModelSlot, SlotWatcher
from services.common.serving import serving_plan
from services.common.timing import ServerTiming
from services.common.wire import OVERLAP_HEADER, SHAPE_HEADER, canonical_openapi, decode_canonical
from services.generator.model_holder import GeneratorRuntime, make_loader, run_chain
from services.generator.settings import Settings, get_settings

SERVICE = "generator"
log = logging.getLogger("generator")

CANONICAL_BODY = canonical_openapi()


class GeneratorState:
    """Slots for the three transitions, the watcher, admission control and the worker pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        plan = serving_plan(settings.max_concurrency, settings.providers, settings.intra_op_threads)
        self.concurrency, self.providers, self.threads = plan.concurrency, plan.providers, plan.threads
        # Torch may serve (fp32 or bf16): the process is set up for it once, and overlapping
        # chains (or a caller's overlap hint) put eager PyTorch on the shared thread count.
        self.torch_threads = prepare_torch_serving(self.threads) if settings.backend != "onnxruntime" else None
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="progress")
        # Backends are timed in the pool that serves requests (see GeneratorRuntime._time).
        loader = make_loader(settings.backend, self.providers, self.threads, timing_pool=self.pool, precision=settings.precision)
        # Keyed by the source stage index of each transition.
        self.slots: dict[int, ModelSlot[GeneratorRuntime]] = {
            src: ModelSlot(SERVICE, progression_model_name(slug), settings.alias, loader) for slug, src, _ in TRANSITIONS
        }
        self.targets = {src: dst for _, src, dst in TRANSITIONS}
        self.watcher = SlotWatcher(list(self.slots.values()), poll_s=settings.poll_seconds, retry_s=settings.retry_seconds)
        self.limiter = AdmissionLimiter(self.concurrency, settings.max_queue, settings.queue_timeout_s, service=SERVICE)

    def infos(self) -> list[dict[str, Any]]:
        out = []
        for slot in self.slots.values():
            info = slot.info()
            cur = slot.current
            info["backend"] = cur.model.backend if cur else None
            info["backend_timings_ms"] = cur.model.timings_ms if cur else None  # how the backend was chosen
            info["bf16_fidelity"] = cur.model.bf16_fidelity if cur else None  # why bf16 was (not) offered
            out.append(info)
        return out


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the generator app (tests pass their own settings)."""
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = GeneratorState(settings)
        app.state.svc = state
        state.watcher.start()
        log.info("generator starting", extra={"concurrency": state.concurrency, "threads": state.threads.describe(), "providers": state.providers})
        yield
        state.watcher.stop()
        state.pool.shutdown(wait=True)

    def svc(request: Request) -> GeneratorState:
        return request.app.state.svc

    def models(request: Request) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
        s = svc(request)
        infos = s.infos()
        return {"models": infos}, infos, s.settings.retry_seconds

    app = build_model_app(
        SERVICE,
        title="alzprog generator (internal)",
        description="Transition generator champions (ND->VMD->MD->MoD). Internal: the gateway is the public API.",
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
        models=models,
        ready_when="all three transition models are loaded",
    )

    @app.get("/v1/info")
    def info(request: Request) -> dict[str, Any]:
        """The served model versions (the gateway keys its cache on them)."""
        s = svc(request)
        infos = s.infos()
        return {
            "service": SERVICE,
            "ready": all(i["ready"] for i in infos) and not Lifecycle.draining,
            "models": infos,
            "in_flight": s.limiter.in_flight,
            "waiting": s.limiter.waiting,
        }

    @app.post("/v1/progress", openapi_extra=CANONICAL_BODY, responses={k: ERROR_RESPONSES[k] for k in (400, 413, 503)})
    async def progress(
        request: Request,
        from_stage: str = Query(STAGES[0], description="stage of the input slice: name, slug (nd, vmd, md, mod) or 0-3"),
    ) -> JSONResponse:
        """Synthesise the road ahead: one SYNTHETIC image per transition from ``from_stage`` to Moderate."""
        t_start = time.perf_counter()
        s = svc(request)
        try:
            start = stage_index(from_stage)
        except ValueError as exc:
            raise ServiceError(400, "bad_stage", str(exc)) from None
        # Read every needed slot once: the whole chain runs on one consistent set of versions.
        chain = []
        for src in range(start, len(STAGES) - 1):
            served = s.slots[src].current
            if served is None:
                raise unavailable("model_not_loaded", f"{s.slots[src].name} is not loaded yet", retry_after=s.settings.retry_seconds)
            chain.append((s.targets[src], served))
        image, mask = decode_canonical(await request.body(), request.headers.get(SHAPE_HEADER), CANONICAL_SIZE)
        timing = ServerTiming()
        async with s.limiter.admit():
            loop = asyncio.get_running_loop()
            if mask is None:  # computed here, in the pool, when the caller did not send it
                from alzprog.preprocessing import brain_mask

                with timing.phase("mask"):
                    mask = await loop.run_in_executor(s.pool, brain_mask, image)
            t0 = time.perf_counter()
            overlapped = request.headers.get(OVERLAP_HEADER) == "1"
            steps, input_morphometry = await loop.run_in_executor(
                s.pool, partial(run_chain, chain, image, mask, timing, overlapped=overlapped, torch_threads=s.torch_threads))
            metrics.INFERENCE_LATENCY.labels(SERVICE, "chain").observe(time.perf_counter() - t0)
        for _, served in chain:
            metrics.INFERENCES.labels(SERVICE, served.ref.name, served.version).inc()
        timing.add("total", time.perf_counter() - t_start)
        return JSONResponse(
            {
                "from_stage": STAGES[start],
                "from_stage_index": start,
                "steps": steps,
                "input_morphometry": input_morphometry,
                "models": [{"name": served.ref.name, "version": served.version} for _, served in chain],
            },
            headers=timing.as_headers(),
        )

    return app


def main() -> None:
    """``python -m services.generator``: serve on GENERATOR_HOST:GENERATOR_PORT."""
    settings = get_settings()
    serve(create_app(settings), settings.host, settings.port)
