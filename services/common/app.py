"""Build a service's FastAPI app with the shared plumbing, and run it under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from services.common import metrics
from services.common.errors import ERROR_RESPONSES, install_error_handlers
from services.common.limits import BodyLimitMiddleware
from services.common.logs import RequestContextMiddleware


class Lifecycle:
    """Process-wide flags read by ``/readyz``: set ``draining`` on SIGTERM so readiness drops
    before uvicorn stops accepting connections; in-flight requests still complete."""

    draining: bool = False


def build_app(
    service: str,
    *,
    title: str,
    description: str,
    max_body_bytes: int,
    lifespan: Any,
    version: str = "1.0.0",
    form_limits: dict[str, int] | None = None,
    docs: bool = True,
    pre_body_middleware: list[tuple[Any, dict[str, Any]]] | None = None,
) -> FastAPI:
    """A FastAPI app with JSON errors, the body limit, request ids + JSON access log, metrics,
    and (``docs``) the OpenAPI schema with a Swagger UI ``/docs`` that needs no internet."""
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own page loads Swagger UI from a CDN: install_offline_docs serves it
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        form_limits=form_limits,
    )
    if docs:
        install_offline_docs(app)
    install_error_handlers(app)
    # Added last = outermost: the request id exists before the body limit can answer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    # Checks that must refuse a request before its body is read (API keys) sit outside it.
    for cls, kwargs in pre_body_middleware or []:
        app.add_middleware(cls, **kwargs)
    app.add_middleware(RequestContextMiddleware, service=service, on_response=metrics.observer(service))
    metrics.add_metrics_route(app)
    return app


DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"
# Swagger UI's files, vendored from swagger-ui-dist (licence and provenance in its README.md).
DOCS_ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"


def install_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from the files in :data:`DOCS_ASSETS_DIR`, never a CDN.

    Hospital networks are often without internet, where FastAPI's default page stays blank. The
    page also turns off Swagger UI's online validator badge, the one other outside request it
    would make for a schema not served from localhost.
    """
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, every URL of the page needs that prefix back.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )


# What ``/readyz`` reports of a model service's models: the body part, the slot infos, the retry hint.
ModelsReport = Callable[[Request], tuple[dict[str, Any], list[dict[str, Any]], float]]


def build_model_app(service: str, *, title: str, description: str, max_body_bytes: int, lifespan: Any,
                    models: ModelsReport, ready_when: str) -> FastAPI:
    """:func:`build_app` for a model service, with its ``/livez`` and ``/readyz``
    (:func:`add_model_health_routes`)."""
    app = build_app(service, title=title, description=description, max_body_bytes=max_body_bytes, lifespan=lifespan)
    add_model_health_routes(app, models, ready_when)
    return app


def add_model_health_routes(app: FastAPI, models: ModelsReport, ready_when: str) -> None:
    """``/livez`` and ``/readyz`` of a model service.

    ``models(request)`` gives what ``/readyz`` reports about the models, the slot infos that
    must all be ready and the retry hint (see :func:`model_readiness`); ``ready_when`` completes
    the route's description ("Ready once ...").
    """

    @app.get("/livez")
    def livez() -> dict[str, str]:
        """The process is alive (even without models)."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: ERROR_RESPONSES[503]},
             description=f"Ready once {ready_when}; 503 while loading or draining.")
    def readyz(request: Request) -> JSONResponse:
        return model_readiness(*models(request))


def model_readiness(body: dict[str, Any], infos: list[dict[str, Any]], retry_s: float) -> JSONResponse:
    """``/readyz`` of a model service: 503 while draining or while a model is not loaded, else 200.

    ``body`` is what the service reports about its models (``{"model": ...}`` or
    ``{"models": [...]}``); ``infos`` are the slot infos that must all be ready.
    """
    if Lifecycle.draining:
        error = {"code": "draining", "message": "shutting down"}
        return JSONResponse({"ready": False, **body, "error": error}, 503, {"Retry-After": "1"})
    missing = [i for i in infos if not i["ready"]]
    if missing:
        message = "; ".join(i.get("last_error") or f"not loaded yet: {i['name']}" for i in missing)
        error = {"code": "model_not_loaded", "message": message}
        return JSONResponse({"ready": False, **body, "error": error}, 503, {"Retry-After": str(int(retry_s) or 1)})
    return JSONResponse({"ready": True, **body})


class _DrainingServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: Any) -> None:  # noqa: D401 - uvicorn hook
        Lifecycle.draining = True
        logging.getLogger("services.lifecycle").info("shutdown signal: readiness off, draining", extra={"signal": sig})
        super().handle_exit(sig, frame)


def serve(app: FastAPI, host: str, port: int, *, timeout_graceful_shutdown: float = 20.0) -> None:
    """Run ``app`` in the foreground; SIGTERM drops readiness, then drains in-flight requests."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep our JSON handlers
        access_log=False,  # our access log writes route templates, not raw paths
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        h11_max_incomplete_event_size=16 * 1024,  # bounds header floods
        server_header=False,
    )
    _DrainingServer(config).run()
