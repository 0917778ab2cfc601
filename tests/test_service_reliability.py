"""Overload and shutdown behaviour of the model services, with real processes."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from service_helpers import dead_port, seed_cache, start_service, tiny_classifier_artifact, wait_ready

from alzprog.constants import CLASSIFIER_MODEL_NAME
from services.common.admission import AdmissionLimiter
from services.common.errors import ServiceError
from services.common.wire import encode_canonical

pytestmark = pytest.mark.slow


def test_admission_limiter_refuses_at_once_when_queue_is_full():
    async def scenario() -> tuple[list[str], float]:
        limiter = AdmissionLimiter(max_concurrency=1, max_queue=1, queue_timeout=5)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def job(name: str) -> None:
            try:
                async with limiter.admit():
                    await release.wait()
                    outcomes.append(f"{name}:done")
            except ServiceError as exc:
                outcomes.append(f"{name}:{exc.status}:{exc.code}:{exc.headers.get('Retry-After')}")

        running = asyncio.create_task(job("a"))  # takes the only slot
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(job("b"))  # takes the only queue place
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await job("c")  # queue full: refused immediately
        refused_in = time.perf_counter() - t0
        release.set()
        await asyncio.gather(running, queued)
        return outcomes, refused_in

    outcomes, refused_in = asyncio.run(scenario())
    assert outcomes[0] == "c:503:overloaded:1"
    assert sorted(outcomes[1:]) == ["a:done", "b:done"]
    assert refused_in < 0.05


@pytest.fixture(scope="module")
def classifier_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("rel_home")
    art = tiny_classifier_artifact(tmp_path_factory.mktemp("rel_art") / "clf", seed=9)
    dead_registry = f"http://127.0.0.1:{dead_port()}"
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, art, dead_registry)
    return {
        "ALZPROG_HOME": str(home),
        "MLFLOW_TRACKING_URI": dead_registry,
        "CLASSIFIER_RETRY_SECONDS": "0.5",
        "CLASSIFIER_MAX_CONCURRENCY": "1",
    }


def _body() -> tuple[bytes, dict[str, str]]:
    from alzprog.preprocessing import canonicalize

    rng = np.random.default_rng(0)
    img = np.zeros((200, 180), np.uint8)
    img[25:175, 25:155] = rng.integers(60, 200, (150, 130), dtype=np.uint8)
    c = canonicalize(img)
    return encode_canonical(c.image, c.mask)


def _burst(url: str, n: int, body: bytes, headers: dict[str, str]) -> list[httpx.Response | Exception]:
    results: list[httpx.Response | Exception] = [None] * n  # type: ignore[list-item]

    def one(i: int) -> None:
        try:
            results[i] = httpx.post(url, params={"explain": "true"}, content=body, headers=headers, timeout=60)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return results, threads


def test_excess_work_is_refused_with_503_retry_after(classifier_env, tmp_path):
    from conftest import free_port

    svc = start_service("classifier", free_port(), {**classifier_env, "CLASSIFIER_MAX_QUEUE": "0"}, tmp_path)
    try:
        wait_ready(svc)
        body, headers = _body()
        results, threads = _burst(svc.url + "/v1/classify", 8, body, headers)
        for t in threads:
            t.join()
    finally:
        svc.stop()
    statuses = [r.status_code for r in results]
    assert 200 in statuses, statuses
    refused = [r for r in results if r.status_code == 503]
    assert refused, f"8 concurrent Grad-CAM requests with 1 worker and no queue: {statuses}"
    for r in refused:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    assert set(statuses) <= {200, 503}


def test_sigterm_lets_in_flight_requests_finish(classifier_env, tmp_path):
    from conftest import free_port

    svc = start_service("classifier", free_port(), {**classifier_env, "CLASSIFIER_MAX_QUEUE": "16", "CLASSIFIER_QUEUE_TIMEOUT_S": "300"}, tmp_path)
    try:
        wait_ready(svc)
        body, headers = _body()
        results, threads = _burst(svc.url + "/v1/classify", 6, body, headers)
        # SIGTERM only once every request is inside the service (running, queued or done).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = httpx.get(svc.url + "/v1/info", timeout=10).json()
            done = sum(1 for r in results if r is not None)
            if info["in_flight"] + info["waiting"] + done >= 6 and info["in_flight"] + info["waiting"] > 0:
                break
            time.sleep(0.02)
        svc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        code = svc.proc.wait(timeout=30)
    finally:
        svc.stop()
    outcome = [getattr(r, "status_code", repr(r)) for r in results]
    assert outcome == [200] * 6, f"an in-flight request was dropped: {[getattr(r, 'text', '')[:120] for r in results]}"
    # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM)
    assert "draining" in svc.log_text()
