"""Frontend server: serves the static page and forwards ``/api/*`` to the gateway.

Why a server of its own: the page and the API must share one origin so the page can run
under a strict Content-Security-Policy (``connect-src 'self'``) without CORS, and so an API
key (production profile) stays on the server side and never reaches the browser.

The proxy streams both ways with httpx (an upload is never held whole in memory here),
enforces its own body-size ceiling while reading, and answers JSON
``{"error": {"code", "message"}}`` with 503 + Retry-After when the gateway is unreachable.
It imports nothing from ``alzprog``, so its image needs only starlette, uvicorn and httpx.

Run: ``python services/frontend/server.py`` or
``uvicorn server:app --app-dir services/frontend --port 8080``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only its own files; images come as data: URLs (Grad-CAM, synthetic steps)
# or blob: URLs (the local preview of the upload). No inline script or style anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

# Hop-by-hop headers (RFC 9110 7.6.1) are per connection and must not be forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Request headers the gateway needs; everything else (cookies included) stays here.
FORWARDED_REQUEST_HEADERS = frozenset(
    {"content-type", "content-length", "accept", "accept-encoding", "x-request-id", "x-api-key"}
)

LOGGED_PATHS = frozenset({"predict", "progression", "volume", "livez", "readyz", "metrics", "docs", "openapi.json"})

log = logging.getLogger("alzprog.frontend")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:  # a bad environment fails at start, not on the first request
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class FrontendSettings:
    """Settings of the frontend server, read from the environment once.

    A dataclass rather than pydantic-settings so the frontend image stays tiny (starlette,
    uvicorn, httpx only); the variable names follow the other services.
    """

    gateway_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8080
    # Same default ceiling as the gateway's upload limit; the gateway enforces its own too.
    max_body_bytes: int = 20 * 1024 * 1024
    # Total deadline of one proxied call: progression runs three generators on a CPU.
    proxy_timeout_s: float = 120.0
    connect_timeout_s: float = 3.0
    # Production profile: the server adds the key; the browser never sees it.
    api_key: str = field(default="", repr=False)
    api_key_header: str = "X-API-Key"

    @classmethod
    def from_env(cls) -> FrontendSettings:
        """Build the settings from ``GATEWAY_URL``, ``FRONTEND_*`` variables."""
        gateway = os.environ.get("GATEWAY_URL", cls.gateway_url).rstrip("/")
        if not gateway.startswith(("http://", "https://")):
            raise ValueError(f"GATEWAY_URL must be an http(s) URL, got {gateway!r}")
        settings = cls(
            gateway_url=gateway,
            host=os.environ.get("FRONTEND_HOST", cls.host),
            port=_env_int("FRONTEND_PORT", cls.port),
            max_body_bytes=_env_int("FRONTEND_MAX_BODY_BYTES", cls.max_body_bytes),
            proxy_timeout_s=_env_float("FRONTEND_PROXY_TIMEOUT_S", cls.proxy_timeout_s),
            connect_timeout_s=_env_float("FRONTEND_CONNECT_TIMEOUT_S", cls.connect_timeout_s),
            api_key=os.environ.get("FRONTEND_API_KEY", ""),
            api_key_header=os.environ.get("FRONTEND_API_KEY_HEADER", cls.api_key_header),
        )
        if settings.max_body_bytes <= 0:
            raise ValueError("FRONTEND_MAX_BODY_BYTES must be positive")
        return settings


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The project's error shape ``{"error": {"code", "message"}}``, never a stack trace."""
    out = {"Cache-Control": "no-store", **(headers or {})}
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=out)


class SecurityHeadersMiddleware:
    """Adds the security headers to every response (static files, proxied API, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self._headers}
                # Our policy wins over whatever an upstream sent for the same header.
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + self._headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    """The request body passed the frontend's ceiling while it was being streamed."""


def _request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id", "")
    # Accept a caller's id only when it is short and harmless; otherwise make one.
    if 0 < len(rid) <= 64 and all(c.isalnum() or c in "-_." for c in rid):
        return rid
    return uuid.uuid4().hex


async def proxy_api(request: Request) -> Response:
    """Forward ``/api/<path>`` to ``<GATEWAY_URL>/<path>``, streaming both ways."""
    settings: FrontendSettings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.client
    path = request.path_params["path"]
    # Only the gateway's own path space; no absolute URLs or traversal into another host.
    if path.startswith("/") or ".." in path.split("/") or "://" in path:
        return error_response(400, "bad_path", "Invalid API path.")
    rid = _request_id(request)
    started = time.perf_counter()
    # Logged path: the API's route names only; anything else a client typed stays out of logs.
    log_path = path if path in LOGGED_PATHS else "other"

    raw_length = request.headers.get("content-length")
    if raw_length is not None:
        if not raw_length.isdigit():
            return error_response(400, "bad_content_length", "Malformed Content-Length header.")
        if int(raw_length) > settings.max_body_bytes:
            return error_response(
                413, "payload_too_large", f"Upload larger than {settings.max_body_bytes} bytes."
            )

    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
    headers["x-request-id"] = rid
    if settings.api_key:
        headers[settings.api_key_header] = settings.api_key
    if request.client is not None:
        headers["x-forwarded-for"] = request.client.host
    headers["x-forwarded-proto"] = request.url.scheme

    content: AsyncIterator[bytes] | None = None
    if request.method not in ("GET", "HEAD", "OPTIONS"):

        async def limited_body() -> AsyncIterator[bytes]:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > settings.max_body_bytes:
                    raise _BodyTooLarge
                yield chunk

        content = limited_body()

    url = f"{settings.gateway_url}/{path}"
    upstream_request = client.build_request(
        request.method, url, params=request.url.query or None, headers=headers, content=content
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except _BodyTooLarge:
        return error_response(413, "payload_too_large", f"Upload larger than {settings.max_body_bytes} bytes.")
    except ClientDisconnect:
        return Response(status_code=499)
    except httpx.TimeoutException:
        log.warning(json.dumps({"event": "gateway_timeout", "request_id": rid, "path": log_path}))
        return error_response(504, "gateway_timeout", "The API did not answer in time.", {"Retry-After": "5"})
    except httpx.TransportError as exc:
        log.warning(
            json.dumps({"event": "gateway_unreachable", "request_id": rid, "path": log_path, "error": type(exc).__name__})
        )
        return error_response(
            503, "gateway_unavailable", "The API is not reachable right now; try again shortly.", {"Retry-After": "2"}
        )

    response_headers = {
        k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
    }
    if "content-length" in upstream.headers and "content-encoding" not in upstream.headers:
        response_headers["content-length"] = upstream.headers["content-length"]
    response_headers["x-request-id"] = upstream.headers.get("x-request-id", rid)

    async def body() -> AsyncIterator[bytes]:
        try:
            # Raw bytes: the browser decodes whatever encoding the gateway chose.
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            log.info(
                json.dumps(
                    {
                        "event": "proxied",
                        "request_id": rid,
                        "method": request.method,
                        "path": log_path,
                        "status": upstream.status_code,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                )
            )

    return StreamingResponse(body(), status_code=upstream.status_code, headers=response_headers)


async def livez(request: Request) -> Response:
    """The process is up (it does not depend on the gateway)."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """Ready when the static page is present; reports (without failing on) the gateway."""
    settings: FrontendSettings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.client
    static_ok = (STATIC_DIR / "index.html").is_file()
    try:
        r = await client.get(f"{settings.gateway_url}/livez", timeout=1.0)
        gateway = "ok" if r.status_code == 200 else f"http {r.status_code}"
    except httpx.HTTPError as exc:
        gateway = f"unreachable ({type(exc).__name__})"
    body = {"ready": static_ok, "static": static_ok, "gateway": gateway}
    return JSONResponse(body, status_code=200 if static_ok else 503, headers={"Cache-Control": "no-store"})


class StaticPage(StaticFiles):
    """The static page; revalidated on every load so a redeploy is seen at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(settings: FrontendSettings | None = None) -> Starlette:
    """Build the frontend ASGI app (settings from the environment unless given)."""
    settings = settings or FrontendSettings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.proxy_timeout_s, connect=settings.connect_timeout_s)
        # trust_env=False: proxies from the environment must not reroute our upstream.
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            app.state.client = client
            yield

    app = Starlette(
        routes=[
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/api/{path:path}", proxy_api, methods=["GET", "POST", "HEAD", "OPTIONS"]),
            Mount("/", app=StaticPage(directory=STATIC_DIR, html=True), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def __getattr__(name: str) -> object:
    # `uvicorn server:app` imports `app` lazily so importing this module (tests) reads no env.
    if name == "app":
        value = create_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)


def main() -> None:
    """Run the frontend with uvicorn on ``FRONTEND_HOST:FRONTEND_PORT``."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # httpx logs every upstream URL at INFO, query string included: user input must not reach the log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = FrontendSettings.from_env()
    print(f"frontend: http://{settings.host}:{settings.port}/ -> API {settings.gateway_url}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
