"""Calls from the gateway to the model services: deadlines, bounded retries, circuit breakers.

Every call has a total deadline (retries included). Connection failures, timeouts and a
backend answering "not ready" are retried at most ``retries`` times with full-jitter
exponential backoff (the calls are idempotent: a pure function of the canonical pixels).
Each backend has a :class:`CircuitBreaker`: after ``failures`` consecutive failures it opens
and the gateway answers 503 + Retry-After at once, without touching the network, until
``reset_s`` has passed; then one probe request is let through and success closes it again.
A backend that says it is overloaded is not retried (that would amplify the overload) and
does not count as broken.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import KW_ONLY, dataclass
from typing import Any

import httpx

from services.common import metrics
from services.common.errors import ServiceError, unavailable
from services.common.logs import request_id_var

log = logging.getLogger("gateway.clients")

_TRANSIENT = (httpx.TransportError,)  # connect/read/write errors and timeouts
_NOT_READY_CODES = {"model_not_loaded", "draining"}


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after ``reset_s`` -> closed on success."""

    def __init__(self, name: str, failures: int, reset_s: float) -> None:
        self.name = name
        self.threshold = failures
        self.reset_s = reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def before_call(self) -> None:
        """Raise 503 at once while open; let exactly one probe through when half-open."""
        state = self.state
        if state == "closed":
            return
        if state == "open" or self._probe_in_flight:
            remaining = self.reset_s - (time.monotonic() - (self.opened_at or 0.0))
            metrics.BACKEND_CALLS.labels(self.name, "circuit_open").inc()
            raise unavailable("backend_unavailable", f"the {self.name} service is unavailable; retry shortly", retry_after=max(remaining, 1.0))
        self._probe_in_flight = True

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("circuit closed", extra={"backend": self.name})
        self.failures = 0
        self.opened_at = None
        self._probe_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self.failures >= self.threshold:
            if self.opened_at is None or was_probe:
                log.warning("circuit opened", extra={"backend": self.name, "failures": self.failures})
            self.opened_at = time.monotonic()

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. overload): let the next request probe."""
        self._probe_in_flight = False


def _error_code(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
        return str(err.get("code", "")), str(err.get("message", ""))
    except Exception:  # noqa: BLE001 - a non-JSON error body
        return "", ""


@dataclass
class BackendClient:
    """One backend (classifier or generator) behind a shared ``httpx.AsyncClient``."""

    name: str
    base_url: str
    http: httpx.AsyncClient
    _: KW_ONLY
    retries: int
    backoff_base_s: float
    breaker: CircuitBreaker

    async def call(
        self,
        method: str,
        path: str,
        *,
        deadline_s: float,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        use_breaker: bool = True,
        retries: int | None = None,
    ) -> httpx.Response:
        """Send one logical request; return the 2xx response or raise a ServiceError (503/502)."""
        if use_breaker:
            self.breaker.before_call()
        hdrs = dict(headers or {})
        hdrs["X-Request-ID"] = request_id_var.get()
        end = time.monotonic() + deadline_s
        max_retries = self.retries if retries is None else retries
        attempt = 0
        last_problem = "no attempt made"
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                resp = await self.http.request(
                    method, f"{self.base_url}{path}", content=content, headers=hdrs, params=params, timeout=remaining
                )
            except _TRANSIENT as exc:
                last_problem = type(exc).__name__
            else:
                if resp.status_code < 300:
                    if use_breaker:
                        self.breaker.success()
                    metrics.BACKEND_CALLS.labels(self.name, "ok").inc()
                    return resp
                code, message = _error_code(resp)
                if resp.status_code in (429, 503) and code not in _NOT_READY_CODES:
                    # Overloaded: pass the refusal on, unretried; the backend is healthy.
                    if use_breaker:
                        self.breaker.release_probe()
                    metrics.BACKEND_CALLS.labels(self.name, "overloaded").inc()
                    retry_after = float(resp.headers.get("Retry-After", "1") or 1)
                    raise ServiceError(503, "backend_overloaded", f"the {self.name} service is busy; retry shortly", retry_after=retry_after)
                if resp.status_code == 503:
                    last_problem = code or "503"
                elif 400 <= resp.status_code < 500:
                    # Our request was wrong: a gateway bug, not a broken backend. Never retried.
                    if use_breaker:
                        self.breaker.release_probe()
                    metrics.BACKEND_CALLS.labels(self.name, "rejected").inc()
                    log.error("backend rejected request", extra={"backend": self.name, "status": resp.status_code, "code": code})
                    raise ServiceError(502, "bad_gateway", f"the {self.name} service rejected the request ({code or resp.status_code})")
                else:
                    # 5xx: deterministic failures are not retried.
                    if use_breaker:
                        self.breaker.failure()
                    metrics.BACKEND_CALLS.labels(self.name, "error").inc()
                    raise ServiceError(502, "bad_gateway", f"the {self.name} service failed ({code or resp.status_code})")
            if attempt >= max_retries:
                break
            attempt += 1
            # Full jitter: spreads the retries of many clients so a recovering backend is not stampeded.
            delay = random.uniform(0, self.backoff_base_s * (2**attempt))
            if time.monotonic() + delay >= end:
                break
            await asyncio.sleep(delay)
        if use_breaker:
            self.breaker.failure()
        metrics.BACKEND_CALLS.labels(self.name, "unavailable").inc()
        log.warning("backend unavailable", extra={"backend": self.name, "attempts": attempt + 1, "problem": last_problem})
        if last_problem in _NOT_READY_CODES:
            raise unavailable("backend_not_ready", f"the {self.name} service is not ready yet; retry shortly", retry_after=2.0)
        raise unavailable("backend_unavailable", f"the {self.name} service is unavailable; retry shortly", retry_after=self.breaker.reset_s)
