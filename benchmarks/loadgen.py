"""A closed-loop HTTP load generator (httpx, asyncio): ``concurrency`` clients, ``n`` requests.

Each client sends its next request as soon as its previous one is answered, so the server
always has ``concurrency`` requests in flight: the throughput measured is what the service
sustains at that concurrency, and the latencies include any queueing inside the service.
Non-2xx answers and transport errors are counted, never timed as successes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from benchmarks.harness import load_average, summarize


@dataclass(frozen=True)
class RequestSpec:
    """What one request sends: method, path and the keyword arguments of ``httpx.AsyncClient.request``."""

    method: str
    path: str
    kwargs: dict[str, Any]


async def _run(
    base_url: str,
    make_request: Callable[[int], RequestSpec],
    concurrency: int,
    n_requests: int,
    warmup: int,
    timeout_s: float,
    check: Callable[[Any], bool] | None,
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def one(i: int) -> tuple[float, bool]:
            spec = make_request(i)
            t0 = time.perf_counter()
            try:
                resp = await client.request(spec.method, spec.path, **spec.kwargs)
                ok = 200 <= resp.status_code < 300 and (check is None or check(resp))
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - t0, ok

        # Warm-up: sequential, so connections, caches and lazily built graphs are ready.
        for i in range(warmup):
            await one(-1 - i)

        latencies: list[float] = []
        errors = 0
        counter = iter(range(n_requests))

        async def worker() -> None:
            nonlocal errors
            for i in counter:  # the shared iterator hands out request numbers
                dt, ok = await one(i)
                if ok:
                    latencies.append(dt)
                else:
                    errors += 1

        load_before = load_average()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    out: dict[str, Any] = summarize(latencies)
    out["n"] = len(latencies)
    out["errors"] = errors
    out["throughput"] = len(latencies) / wall if wall > 0 else float("nan")
    out["wall_s"] = wall
    out["load1"] = (load_before + load_average()) / 2.0
    out["latencies_s"] = latencies
    return out


def run_load(
    base_url: str,
    make_request: Callable[[int], RequestSpec],
    *,
    concurrency: int,
    n_requests: int,
    warmup: int = 3,
    timeout_s: float = 120.0,
    check: Callable[[Any], bool] | None = None,
) -> dict[str, Any]:
    """Send ``n_requests`` with ``concurrency`` in flight (after ``warmup`` sequential ones).

    ``make_request(i)`` builds request ``i`` (negative ``i`` for warm-up requests), so a caller
    can make every request unique (cache misses) or identical (cache hits). ``check(response)``
    may reject a 2xx answer whose body is wrong. Returns the summary of the successful requests
    (p50/p95/p99/mean in ms, ``n``, ``errors``, ``throughput`` in requests/s, ``wall_s``,
    ``load1``).
    """
    return asyncio.run(_run(base_url, make_request, concurrency, n_requests, warmup, timeout_s, check))
