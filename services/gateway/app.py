"""Gateway routes: the only public API of the stack.

Follow one upload: ``POST /predict`` (or ``/progression``) -> API key and body limit
(middleware) -> :meth:`~services.gateway.uploads.Upload.resolve` finds the canonical pixels'
SHA-256 from the upload record (keyed by the raw bytes' hash), or decodes with
``alzprog.decode.decode_slice`` and canonicalises once (:mod:`services.gateway.uploads`) ->
the result cache (:mod:`services.gateway.cache`, keyed by that SHA-256 and the served model
versions) -> on a miss the classifier, then the generator, over HTTP
(:mod:`services.gateway.clients`). A repeated upload with a cached result is never decoded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from alzprog.constants import STAGES, TRANSITIONS, progression_model_name, stage_index

from services.common.app import Lifecycle, build_app, serve
from services.common.cpu import available_cpus
from services.common.errors import ERROR_RESPONSES, ServiceError, unavailable
from services.common.logs import configure_logging
from services.common.timing import HEADER as TIMING_HEADER
from services.common.timing import ServerTiming
from services.common.wire import OVERLAP_HEADER, encode_canonical
from services.gateway.admission import InFlight, InFlightLimitMiddleware
from services.gateway.auth import ApiKeyMiddleware
from services.gateway.cache import ResultCache, SingleFlight
from services.gateway.clients import BackendClient, CircuitBreaker
from services.gateway.ratelimit import RateLimiter
from services.gateway.schemas import ModelCard, PredictResponse, ProgressionResponse, ReadyResponse, VolumeResponse
from services.gateway.settings import Settings, get_settings
from services.gateway.uploads import Decoder, SliceUpload, Upload, compute_brain_mask, decode_to_canonical, png_data_url

SERVICE = "gateway"
log = logging.getLogger("gateway")
NO_STORE = {"Cache-Control": "no-store"}
# A cached value without these fields is treated as corrupt (a miss), never served.
PREDICT_FIELDS = ("stage", "stage_index", "probabilities", "confidence", "model", "ood", "tta")
PROGRESSION_FIELDS = ("steps", "generator_models", "input_morphometry")
# Part of the progression cache key: bumped when the shape of a cached chain changes, so an
# entry written by an older gateway (without the change maps) is never served as complete.
PROGRESSION_SHAPE = "maps1"
RESULT_ERRORS = {k: ERROR_RESPONSES[k] for k in (400, 413, 415, 422, 429, 503)}
# Seconds a model card read from the registry is reused.
MODEL_CARD_TTL_S = 60.0
MODEL_CARD_DEADLINE_S = 10.0
TTA_HELP = ("add the spread of each stage probability over test-time augmentation views "
            "(mirror, small rotations, intensity gamma): costs one batch of 8 views on the classifier")
# Slices of one volume sent to the classifier at once.
VOLUME_CLASSIFY_CONCURRENCY = 2


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


class GatewayState:
    """Clients, cache, single-flight and the decoder, created in the lifespan."""

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

    async def close(self) -> None:
        await self.http.aclose()
        await self.cache.close()
        self.decoder.close()


def _warm_up() -> None:
    """Every CPU step an upload can take, once: imports torch/Pillow plugins before the first request."""
    from alzprog.decode import encode_png

    yy, xx = np.mgrid[:96, :96]
    head = (((yy - 48) / 40.0) ** 2 + ((xx - 48) / 36.0) ** 2 < 1).astype(np.uint8) * 120
    pixels = decode_to_canonical(encode_png(head), None)
    compute_brain_mask(pixels.image)
    png_data_url(pixels.image)


def _retrieve(task: "asyncio.Future[Any]") -> None:
    """Done-callback of a speculative chain nobody awaits: its result is cached, its error logged."""
    if not task.cancelled() and task.exception() is not None:
        log.info("speculative chain failed", extra={"error": type(task.exception()).__name__})


def _start_stage(form: str | None, query: str | None) -> int | None:
    """The stage a chain starts from, as the form field or the query names it; None: the predicted one."""
    requested = form if form is not None else query
    if requested is None or not requested.strip():
        return None
    try:
        return stage_index(requested)
    except ValueError:
        raise ServiceError(422, "bad_stage", f"from_stage must be one of {', '.join(STAGES)}, a slug (nd, vmd, md, mod) or 0-3") from None


def _bool(*values: bool | None) -> bool:
    return any(bool(v) for v in values if v is not None)


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
    async def lifespan(app: FastAPI):
        state = GatewayState(settings)
        app.state.svc = state
        # Import the decoders and run one canonicalisation now, so the first upload does not
        # pay for loading torch/Pillow plugins (seconds on a busy machine).
        await asyncio.get_running_loop().run_in_executor(state.decoder.pool, _warm_up)
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
    app.state.in_flight = in_flight

    def svc(request: Request) -> GatewayState:
        return request.app.state.svc

    async def read_upload(s: GatewayState, file: UploadFile, nifti_slice: int | None) -> Upload:
        return await s.decoder.upload(await file.read(), nifti_slice)

    async def cached_or_computed(s: GatewayState, lookup: str | None, required: tuple[str, ...], call) -> tuple[dict[str, Any], bool]:  # noqa: ANN001
        """The result under ``lookup`` (cached, or computed meanwhile by a twin request on another
        replica), else ``call()``'s, computed here under the cross-replica lock."""
        token = None
        if lookup is not None:
            hit = await s.cache.get(lookup, required=required)
            if hit is not None:
                return hit, True
            shared, token = await s.cache.lead_or_follow(lookup, required, settings.flight_wait_s)
            if shared is not None:
                return shared, True
        try:
            return await call(), False
        finally:
            if token is not None:
                await s.cache.release(lookup, token)

    async def classify(s: GatewayState, up: Upload, explain: bool, timing: ServerTiming,
                       overlapped: bool = False, tta: bool = False) -> tuple[dict[str, Any], bool]:
        """The classifier's answer for ``up``: from the cache, a concurrent twin, or the backend.

        ``overlapped``: a generator chain runs beside it; the classifier is told, so it uses its
        one-thread session and keeps its lone-run timings for requests that really are alone."""
        sha = up.sha256 or await up.resolve()
        versions = await s.classifier_versions.versions()
        options = "+".join(o for o, on in (("explain", explain), ("tta", tta)) if on)
        known = next(iter(versions.values()), None)  # the classifier serves one model
        lookup = s.cache.key("predict", sha, f"c{known}", options) if known else None

        async def call() -> dict[str, Any]:
            # No mask: the classifier needs one only for Grad-CAM and computes the same itself.
            body, headers = encode_canonical(await up.pixels())
            if overlapped:
                headers[OVERLAP_HEADER] = "1"
            resp = await s.classifier.call(
                "POST", "/v1/classify", deadline_s=settings.classify_deadline_s, content=body, headers=headers,
                params={"explain": str(explain).lower(), "tta": str(tta).lower()},
            )
            timing.extend("classifier", resp.headers.get(TIMING_HEADER))
            result = resp.json()
            result = {
                "stage": result["stage"],
                "stage_index": int(result["stage_index"]),
                "probabilities": result["probabilities"],
                "confidence": float(result["confidence"]),
                "model": {"name": result["model"]["name"], "version": str(result["model"]["version"])},
                "explain": result.get("explain"),
                "ood": result.get("ood"),
                "tta": result.get("tta"),
            }
            # Store under the version that actually answered (it may have just changed).
            await s.cache.set(s.cache.key("predict", up.sha256, f"c{result['model']['version']}", options), result)
            return result

        flight_key = lookup or f"predict:{sha}:{options}:unversioned"
        result, cached = await s.flights.run(flight_key, lambda: cached_or_computed(s, lookup, PREDICT_FIELDS, call))
        return dict(result), cached

    def with_quality(result: dict[str, Any]) -> dict[str, Any]:
        """The classifier's OOD score and the Grad-CAM's in-brain share as the answer's
        ``quality`` (warnings, score, threshold); the raw score leaves the top level."""
        from alzprog.quality import report

        result["quality"] = report(result.pop("ood", None), result.get("explain"))
        return result

    async def progress(s: GatewayState, up: Upload, start: int, timing: ServerTiming,
                       overlapped: bool = False) -> tuple[dict[str, Any], bool]:
        """The generator chain from stage ``start``: cache, concurrent twin, or the backend
        (``overlapped``: the classifier runs beside it; the generator is told, as in :func:`classify`)."""
        sha = up.sha256 or await up.resolve()
        needed = [progression_model_name(slug) for slug, src, _ in TRANSITIONS if src >= start]
        versions = await s.generator_versions.versions()
        known = [versions.get(n) for n in needed]
        tag = "g" + "-".join(str(v) for v in known) if all(known) else None
        lookup = s.cache.key("progression", sha, tag, f"from{start}:{PROGRESSION_SHAPE}") if tag else None

        async def call() -> dict[str, Any]:
            with timing.phase("mask"):  # usually started earlier: only the wait shows
                mask = await up.mask()
            body, headers = encode_canonical(await up.pixels(), mask)
            if overlapped:
                headers[OVERLAP_HEADER] = "1"
            resp = await s.generator.call(
                "POST", "/v1/progress", deadline_s=settings.progress_deadline_s, content=body, headers=headers, params={"from_stage": str(start)}
            )
            timing.extend("generator", resp.headers.get(TIMING_HEADER))
            data = resp.json()
            result = {
                "steps": [
                    {
                        "stage": st["stage"],
                        "stage_index": int(st["stage_index"]),
                        "image": st["image"],
                        "synthetic": True,
                        "model": {"name": st["model"]["name"], "version": str(st["model"]["version"])},
                        "change_map": st["change_map"],
                        "change": st["change"],
                        "morphometry": st["morphometry"],
                        "deformation_map": st.get("deformation_map"),
                        "deformation": st.get("deformation"),
                    }
                    for st in data["steps"]
                ],
                "generator_models": [{"name": m["name"], "version": str(m["version"])} for m in data["models"]],
                "input_morphometry": data["input_morphometry"],
            }
            actual = "g" + "-".join(m["version"] for m in result["generator_models"])
            await s.cache.set(s.cache.key("progression", up.sha256, actual, f"from{start}:{PROGRESSION_SHAPE}"), result)
            return result

        flight_key = lookup or f"progression:{sha}:from{start}:unversioned"
        result, cached = await s.flights.run(flight_key, lambda: cached_or_computed(s, lookup, PROGRESSION_FIELDS, call))
        return dict(result), cached

    # ------------------------------------------------------------------ routes
    @app.get("/livez", tags=["health"])
    def livez() -> dict[str, str]:
        """The gateway process is alive."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready when the classifier is ready. Generator and cache are reported; a degraded cache stays ready."""
        s = svc(request)

        async def backend_check(client: BackendClient) -> dict[str, Any]:
            try:
                r = await client.http.get(f"{client.base_url}/readyz", timeout=settings.info_deadline_s)
                body = r.json()
                out = {"ready": r.status_code == 200, "circuit": client.breaker.state}
                if "model" in body:
                    out["models"] = [body["model"]]
                if "models" in body:
                    out["models"] = body["models"]
                if r.status_code != 200:
                    out["detail"] = (body.get("error") or {}).get("message")
                return out
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return {"ready": False, "circuit": client.breaker.state, "detail": f"unreachable ({type(exc).__name__})"}

        clf, gen, cache = await asyncio.gather(backend_check(s.classifier), backend_check(s.generator), s.cache.check())
        ready = clf["ready"] and not Lifecycle.draining
        body = {"ready": ready, "checks": {"classifier": clf, "generator": gen, "cache": cache, "gateway": {"ready": not Lifecycle.draining, **in_flight.snapshot()}}}
        if Lifecycle.draining:
            body["checks"]["gateway"]["detail"] = "draining"
        return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "2"})

    @app.post("/predict", tags=["results"], response_model=PredictResponse, responses=RESULT_ERRORS)
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="one MRI slice: PNG, JPEG, DICOM or NIfTI (.nii/.nii.gz)")],
        explain: Annotated[bool | None, Form(description="include the Grad-CAM overlay")] = None,
        nifti_slice: Annotated[int | None, Form(ge=0, le=4096, description="axial slice of a NIfTI volume (default: central)")] = None,
        tta: Annotated[bool | None, Form(description=TTA_HELP)] = None,
        explain_q: Annotated[bool | None, Query(alias="explain", description="same as the form field")] = None,
        tta_q: Annotated[bool | None, Query(alias="tta", description="same as the form field")] = None,
    ) -> JSONResponse:
        """Stage of one MRI slice: calibrated probabilities for the four stages, the model version
        and ``quality`` (out-of-distribution and Grad-CAM warnings)."""
        s = svc(request)
        timing = ServerTiming()
        t0 = time.perf_counter()
        want_explain = _bool(explain, explain_q)
        with timing.phase("upload"):
            up = await read_upload(s, file, nifti_slice)
            await up.resolve(need_png=want_explain)
        with timing.phase("classify"):
            result, cached = await classify(s, up, want_explain, timing, tta=_bool(tta, tta_q))
        with_quality(result)
        result["cached"] = cached
        if want_explain:
            result["canonical"] = await up.png()
        log.info("predicted", extra={"stage_index": result["stage_index"], "cached": cached, "model_version": result["model"]["version"]})
        timing.add("total", time.perf_counter() - t0)
        return JSONResponse(result, headers={**NO_STORE, **timing.as_headers()})

    @app.post("/progression", tags=["results"], response_model=ProgressionResponse, responses=RESULT_ERRORS)
    async def progression(
        request: Request,
        file: Annotated[UploadFile, File(description="one MRI slice: PNG, JPEG, DICOM or NIfTI (.nii/.nii.gz)")],
        from_stage: Annotated[str | None, Form(max_length=32, description="start stage (name, slug nd/vmd/md/mod, or 0-3); default: the predicted stage")] = None,
        explain: Annotated[bool | None, Form(description="include the Grad-CAM overlay")] = None,
        nifti_slice: Annotated[int | None, Form(ge=0, le=4096)] = None,
        tta: Annotated[bool | None, Form(description=TTA_HELP)] = None,
        explain_q: Annotated[bool | None, Query(alias="explain")] = None,
        from_stage_q: Annotated[str | None, Query(alias="from_stage", max_length=32)] = None,
        tta_q: Annotated[bool | None, Query(alias="tta")] = None,
    ) -> JSONResponse:
        """Stage plus the synthetic road ahead: one SYNTHETIC slice per stage up to Moderate Dementia."""
        s = svc(request)
        timing = ServerTiming()
        t0 = time.perf_counter()
        start = _start_stage(from_stage, from_stage_q)
        want_tta = _bool(tta, tta_q)
        # The upload is resolved even while a backend's circuit is open: its answer may be cached.
        with timing.phase("upload"):
            up = await read_upload(s, file, nifti_slice)
            await up.resolve(need_png=True)
        if up.decoded:
            # A new upload (no record): its chain is most likely not cached either, so the
            # generator will need the brain mask; compute it while the classifier works.
            up.start_mask()
        if start is None and settings.speculate_from_stage >= 0 and in_flight.total == 1:
            # Alone on this gateway: guess the start stage and run the chain while the classifier
            # works (both models then share the cores, one thread each; the gain is measured in
            # docs/performance.md). Under load a wrong guess would take cores
            # from others, so only an idle gateway guesses.
            guess = settings.speculate_from_stage
            speculative = asyncio.ensure_future(progress(s, up, guess, timing, overlapped=True))
            try:
                with timing.phase("classify"):
                    result, clf_cached = await classify(s, up, _bool(explain, explain_q), timing, overlapped=True, tta=want_tta)
            except BaseException:
                speculative.add_done_callback(_retrieve)  # it finishes and is cached; nobody waits
                raise
            start = result["stage_index"]
            if start == guess:
                with timing.phase("progress"):
                    chain, gen_cached = await speculative
            else:
                speculative.add_done_callback(_retrieve)
                log.info("speculation missed", extra={"guess": guess, "stage_index": start})
                with timing.phase("progress"):
                    chain, gen_cached = await progress(s, up, start, timing)
        elif start is None:
            with timing.phase("classify"):
                result, clf_cached = await classify(s, up, _bool(explain, explain_q), timing, tta=want_tta)
            start = result["stage_index"]
            with timing.phase("progress"):
                chain, gen_cached = await progress(s, up, start, timing)
        else:
            # The start is known: ask both services at once.
            (result, clf_cached), (chain, gen_cached) = await asyncio.gather(
                classify(s, up, _bool(explain, explain_q), timing, overlapped=True, tta=want_tta),
                progress(s, up, start, timing, overlapped=True))
        result.update(chain)
        with_quality(result)
        result["from_stage"] = STAGES[start]
        result["canonical"] = await up.png()
        result["cached"] = clf_cached and gen_cached
        log.info(
            "progression",
            extra={"from_stage_index": start, "steps": len(result["steps"]), "cached": result["cached"], "model_version": result["model"]["version"]},
        )
        timing.add("total", time.perf_counter() - t0)
        return JSONResponse(result, headers={**NO_STORE, **timing.as_headers()})

    card_cache: dict[str, Any] = {}

    @app.get("/v1/model-card", tags=["models"], response_model=ModelCard, responses={503: ERROR_RESPONSES[503]})
    async def model_card_route() -> JSONResponse:
        """What the served models are: per model its champion version and date, what it was
        trained on and its recorded figures, read from the MLflow registry (kept for a minute)."""
        now = time.monotonic()
        if card_cache.get("at") is None or now - card_cache["at"] > MODEL_CARD_TTL_S:
            import os

            from alzprog.model_card import model_card

            # The card is the gateway's only MLflow call: a registry that is down answers a quick
            # 503, not minutes of the client's retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            try:
                card = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, model_card), MODEL_CARD_DEADLINE_S)
            except Exception as exc:  # noqa: BLE001 - the registry is down or unreachable
                if "card" in card_cache:
                    return JSONResponse(card_cache["card"], headers={"Cache-Control": "no-store"})
                raise unavailable("registry_unavailable", f"the model registry could not be read ({type(exc).__name__})", retry_after=5) from None
            card_cache.update(card=card, at=now)
        return JSONResponse(card_cache["card"], headers={"Cache-Control": "no-store"})

    @app.post("/volume", tags=["results"], response_model=VolumeResponse, responses=RESULT_ERRORS)
    async def volume(
        request: Request,
        file: Annotated[UploadFile, File(description="one NIfTI-1 volume (.nii or .nii.gz), or a zip of one DICOM series (single-frame, uncompressed)")],
        explain: Annotated[bool | None, Form(description="Grad-CAM of the representative slice")] = None,
        progression: Annotated[bool | None, Form(description="synthesize the progression from the representative slice (default true)")] = None,
        from_stage: Annotated[str | None, Form(max_length=32, description="start stage of the chain; default: the voted stage")] = None,
        explain_q: Annotated[bool | None, Query(alias="explain")] = None,
        progression_q: Annotated[bool | None, Query(alias="progression")] = None,
        from_stage_q: Annotated[str | None, Query(alias="from_stage", max_length=32)] = None,
    ) -> JSONResponse:
        """Stage a subject from a whole volume: reoriented to axial, the brain-bearing slices in the
        trained level range (at most ``volume.max_slices``), soft voting of their probabilities with
        the spread, and the progression of the representative slice it names."""
        from alzprog.quality import report
        from alzprog.volume import MAX_SLICES, TRAINED_AREA_RANGE, representative, soft_vote

        s = svc(request)
        timing = ServerTiming()
        t0 = time.perf_counter()
        start = _start_stage(from_stage, from_stage_q)
        want_chain = progression if progression is not None else (progression_q if progression_q is not None else True)
        want_explain = _bool(explain, explain_q)
        with timing.phase("upload"):
            picked = await s.decoder.volume(await file.read())
        uploads = [SliceUpload(s.decoder, px) for px in picked.pixels]
        # A few slices at a time: the classifier's queue is shared with every other request.
        gate = asyncio.Semaphore(VOLUME_CLASSIFY_CONCURRENCY)

        async def one(up: SliceUpload) -> tuple[dict[str, Any], bool]:
            async with gate:
                return await classify(s, up, False, timing)

        with timing.phase("classify"):
            answers = await asyncio.gather(*(one(up) for up in uploads))
        probs = [a["probabilities"] for a, _ in answers]
        mean, spread = soft_vote(probs)
        voted = max(mean, key=mean.get)
        rep = representative(probs, voted)
        rep_up = uploads[rep]
        result: dict[str, Any] = {
            "stage": voted,
            "stage_index": stage_index(voted),
            "probabilities": mean,
            "probability_spread": spread,
            "confidence": mean[voted],
            "model": answers[rep][0]["model"],
            "slices": [
                {"index": z, "stage": max(p, key=p.get), "probabilities": p, "brain_area_fraction": f,
                 "ood_score": (a.get("ood") or {}).get("score")}
                for z, p, f, (a, _) in zip(picked.indices, probs, picked.brain_area_fraction, answers)
            ],
            "representative_slice": picked.indices[rep],
            "volume": {
                "shape": list(picked.shape), "source_orientation": picked.orientation, "scanned_slices": picked.scanned,
                "widest_slice": picked.widest, "max_slices": MAX_SLICES, "trained_area_range": list(TRAINED_AREA_RANGE),
            },
            "explain": None,
            "from_stage": None,
            "steps": None,
            "generator_models": None,
            "input_morphometry": None,
        }
        cached = all(c for _, c in answers)
        if want_explain:
            with timing.phase("explain"):
                explained, c = await classify(s, rep_up, True, timing)
            result["explain"] = explained.get("explain")
            cached = cached and c
        if want_chain:
            begin = result["stage_index"] if start is None else start
            with timing.phase("progress"):
                chain, c = await progress(s, rep_up, begin, timing)
            result.update(chain)
            result["from_stage"] = STAGES[begin]
            cached = cached and c
        # The volume's OOD verdict is its median slice's: one odd slice at the edge of the kept
        # range does not flag a whole scan, a scan unlike the training data flags on most slices.
        oods = [a["ood"] for a, _ in answers if a.get("ood")]
        ood = None
        if oods:
            median = float(np.median([o["score"] for o in oods]))
            ood = {"score": median, "threshold": oods[0]["threshold"], "out_of_distribution": median > oods[0]["threshold"]}
        result["quality"] = report(ood, result.get("explain"))
        result["canonical"] = await rep_up.png()
        result["cached"] = cached
        log.info("volume", extra={"slices": len(uploads), "stage_index": result["stage_index"], "cached": cached})
        timing.add("total", time.perf_counter() - t0)
        return JSONResponse(result, headers={**NO_STORE, **timing.as_headers()})

    return app


def main() -> None:
    """``python -m services.gateway``: serve on GATEWAY_HOST:GATEWAY_PORT."""
    settings = get_settings()
    serve(create_app(settings), settings.host, settings.port)
