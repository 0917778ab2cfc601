"""Bounded concurrency plus a bounded wait queue for model work.

At most ``max_concurrency`` requests compute at once; at most ``max_queue`` more wait. A
request that finds the queue full is refused at once with 503 + Retry-After instead of
piling up, so admitted requests keep their latency under overload. A request that waits
longer than ``queue_timeout`` is refused the same way.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from services.common import metrics
from services.common.errors import unavailable


class AdmissionLimiter:
    """Admission control for one model service (one instance per process).

    With ``service``, each refusal is also counted in that service's overload metric (the
    model services' routes); without, only in :attr:`rejected` (an internal pool).
    """

    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout: float = 10.0, service: str | None = None) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.service = service
        self._sem = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.waiting = 0
        self.rejected = 0

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Enter when a slot is free; raise a 503 ServiceError when the queue is full."""
        if self.in_flight >= self.max_concurrency and self.waiting >= self.max_queue:
            self._refused()
            raise unavailable("overloaded", "too many requests in progress; retry shortly", retry_after=1)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), timeout=self.queue_timeout)
        except TimeoutError:
            self._refused()
            raise unavailable("overloaded", "request waited too long for a free worker", retry_after=2) from None
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._sem.release()

    def _refused(self) -> None:
        self.rejected += 1
        if self.service is not None:
            metrics.OVERLOAD_REJECTIONS.labels(self.service).inc()
