"""JSON logs, one object per line, each with the service name and the request id.

Privacy rule: log lines carry methods, route templates, status codes, durations, sizes,
model versions and error codes, never image bytes, file names, DICOM header values, query
strings or API keys. The access log therefore writes the matched route template
(``/predict``), not the raw path, and uvicorn's own access log is switched off.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.asgi import scope_header
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# A caller-supplied request id is kept only when it is short and plain, so it cannot smuggle
# log injection or personal data; otherwise we mint one.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object; ``extra={...}`` fields are merged in."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "request_id": request_id_var.get(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers that would otherwise print request URLs or noisy debug lines.
    for name in ("uvicorn.access", "httpx", "httpcore", "urllib3", "mlflow", "alembic", "botocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestContextMiddleware:
    """Pure ASGI middleware: sets the request id, echoes it in ``X-Request-ID`` and writes
    one JSON access line per request (route template, status, duration; nothing else)."""

    def __init__(self, app: ASGIApp, service: str, on_response: Any = None) -> None:
        self.app = app
        self.service = service
        self.on_response = on_response  # callback(route, method, status, seconds) for metrics
        self.log = logging.getLogger(f"{service}.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = scope_header(scope, b"x-request-id").decode("latin-1")
        rid = supplied if _SAFE_REQUEST_ID.match(supplied or "") else new_request_id()
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            if self.on_response is not None:
                self.on_response(route, scope.get("method", "?"), status, elapsed)
            self.log.info(
                "request",
                extra={"method": scope.get("method"), "route": route, "status": status, "ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)


def route_template(scope: Scope) -> str:
    """The matched route's template (``/predict``), or ``unmatched``: never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
