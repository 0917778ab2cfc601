"""Prometheus metrics of the services (``GET /metrics``).

Labels are low-cardinality and carry no personal data: service, route template, method,
status, model name/version, cache outcome. Never a path, file name or key.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "alzprog_http_requests_total", "HTTP requests answered", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "alzprog_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INFERENCES = Counter("alzprog_inferences_total", "Model forward passes served", ["service", "model", "version"])
INFERENCE_LATENCY = Histogram(
    "alzprog_inference_duration_seconds",
    "Model compute time per request",
    ["service", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODEL_INFO = Gauge("alzprog_model_loaded", "1 for the model version being served", ["service", "model", "version"])
MODEL_SWAPS = Counter("alzprog_model_swaps_total", "Champion swaps without restart", ["service", "model"])
OVERLOAD_REJECTIONS = Counter("alzprog_overload_rejections_total", "Requests refused by admission control", ["service"])
CACHE_EVENTS = Counter("alzprog_cache_events_total", "Result cache outcomes", ["outcome"])
BACKEND_CALLS = Counter("alzprog_backend_calls_total", "Gateway calls to backends", ["backend", "outcome"])
GATEWAY_WORK = Counter("alzprog_gateway_work_total", "CPU work the gateway did on uploads", ["kind"])  # decode, png, brain_mask


def observer(service: str):
    """Callback for RequestContextMiddleware: count and time each request by route template."""

    def observe(route: str, method: str, status: int, seconds: float) -> None:
        HTTP_REQUESTS.labels(service, route, method, str(status)).inc()
        HTTP_LATENCY.labels(service, route).observe(seconds)

    return observe


def add_metrics_route(app: FastAPI) -> None:
    """Expose the process's metrics in the Prometheus text format at ``GET /metrics``."""

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
