"""Admission before the body is read: a cap on the gateway's result requests in progress.

Pure ASGI middleware. It sits inside the API-key check (an unauthenticated or rate-limited
client takes no slot) and outside the body limit, so it runs before a byte of the upload is
read. At most ``max_total`` ``POST /predict`` + ``/progression`` requests are in progress at
once, of which at most ``max_progression`` are ``/progression`` (they also hold the
generator). One more is answered at once with 503 ``overloaded`` + ``Retry-After``: its body
is not read, parsed or decoded (uvicorn discards the unread body and keeps the connection
open), so a refusal costs microseconds and admitted requests keep their latency.

A request holds its slot from its first byte to the end of its response, the upload
included; a client that uploads slowly is bounded by the body limit's read timeout.

The defaults (``GATEWAY_MAX_IN_FLIGHT``, ``GATEWAY_MAX_IN_FLIGHT_PROGRESSION``, 0 = derived)
mirror what the backends admit with their own defaults on a machine like this one: the
classifier runs one request per CPU and queues 16 (every result request uses it), the
generator runs one per CPU and queues 8. Beyond that the backends would refuse anyway, but
only after the gateway had read and decoded the upload. With several gateway replicas in
front of one classifier, divide the cap among them.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from services.common import metrics
from services.common.errors import error_response

RESULT_PATHS = ("/predict", "/progression")


@dataclass
class InFlight:
    """The counters (one per process; the event loop is single-threaded, so no lock)."""

    max_total: int
    max_progression: int
    retry_after_s: int = 1
    total: int = 0
    progression: int = 0
    refused: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "in_flight": self.total,
            "max_in_flight": self.max_total,
            "progression_in_flight": self.progression,
            "max_in_flight_progression": self.max_progression,
            "refused": self.refused,
        }


class InFlightLimitMiddleware:
    """Refuse result requests beyond the caps of ``limits`` with 503 before reading them."""

    def __init__(self, app: ASGIApp, limits: InFlight) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.startswith(RESULT_PATHS):
            await self.app(scope, receive, send)
            return
        lim = self.limits
        progression = path.startswith("/progression")
        if lim.total >= lim.max_total or (progression and lim.progression >= lim.max_progression):
            lim.refused += 1
            metrics.OVERLOAD_REJECTIONS.labels("gateway").inc()
            await error_response(
                503,
                "overloaded",
                "too many requests in progress; retry shortly",
                {"Retry-After": str(lim.retry_after_s)},
            )(scope, receive, send)
            return
        lim.total += 1
        lim.progression += progression
        try:
            await self.app(scope, receive, send)
        finally:
            lim.total -= 1
            lim.progression -= progression
