"""``/livez`` and ``/readyz``: whether the gateway runs, and whether it can answer."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from services.common.app import Lifecycle
from services.gateway.clients import BackendClient
from services.gateway.deps import InFlightDep, StateDep
from services.gateway.schemas import ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/livez")
def livez() -> dict[str, str]:
    """The gateway process is alive."""
    return {"status": "alive"}


async def backend_check(client: BackendClient, deadline_s: float) -> dict[str, Any]:
    """One backend's ``/readyz`` as the gateway reports it: ready, circuit state, models, why not."""
    try:
        r = await client.http.get(f"{client.base_url}/readyz", timeout=deadline_s)
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


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(s: StateDep, in_flight: InFlightDep, response: Response) -> dict[str, Any]:
    """Ready when the classifier is ready. Generator and cache are reported; a degraded cache stays ready."""
    deadline_s = s.settings.info_deadline_s
    clf, gen, cache = await asyncio.gather(backend_check(s.classifier, deadline_s), backend_check(s.generator, deadline_s), s.cache.check())
    ready = clf["ready"] and not Lifecycle.draining
    body = {"ready": ready, "checks": {"classifier": clf, "generator": gen, "cache": cache, "gateway": {"ready": not Lifecycle.draining, **in_flight.snapshot()}}}
    if Lifecycle.draining:
        body["checks"]["gateway"]["detail"] = "draining"
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "2"
    return body
