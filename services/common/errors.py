"""The one error shape of every service: ``{"error": {"code": str, "message": str}}``.

Handlers turn every failure into that shape: our own :class:`ServiceError`, FastAPI's
validation errors (422, without echoing the input), Starlette's HTTP errors (404, 405, the
400 of a malformed multipart body) and, last, any unexpected exception (500 with a generic
message; the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("services.errors")


class ErrorBody(BaseModel):
    """Machine-readable code plus a human sentence; never a stack trace."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """The JSON body of every error response."""

    error: ErrorBody


class ServiceError(Exception):
    """An error with an HTTP status, a short machine code and a message safe to show."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        if retry_after is not None:
            # Retry-After takes whole seconds; round up so clients never retry too early.
            self.headers["Retry-After"] = str(max(1, int(-(-retry_after // 1))))


def unavailable(code: str, message: str, retry_after: float = 1.0) -> ServiceError:
    """503 + Retry-After: a dependency is down or the service is not ready / overloaded."""
    return ServiceError(503, code, message, retry_after=retry_after)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Build the JSON error response (also used by the pure ASGI middlewares)."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# Responses documented on every route so the OpenAPI schema matches what we really send.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad input"},
    413: {"model": ErrorResponse, "description": "body or image too large"},
    415: {"model": ErrorResponse, "description": "unsupported image format"},
    422: {"model": ErrorResponse, "description": "invalid request fields"},
    429: {"model": ErrorResponse, "description": "rate limit or queue full"},
    503: {"model": ErrorResponse, "description": "a dependency is down or the service is not ready"},
}

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _validation_message(exc: RequestValidationError) -> str:
    # Only the location and pydantic's sentence: the offending input may be image bytes or a
    # file name, which must never be echoed back or logged.
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every failure the one JSON error shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the service log (request id in X-Request-ID)")
