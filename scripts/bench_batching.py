"""Measure the classifier's dynamic batching: throughput and latency with it off and on.

Starts ``python -m services.classifier`` twice on the champion in the model cache of
``ALZPROG_HOME`` (MLflow is not needed: the service falls back to its cache), and drives each
with N concurrent clients for T seconds against ``POST /v1/classify``:

    ALZPROG_HOME=./data .venv/bin/python scripts/bench_batching.py --clients 8 --seconds 15

Prints one line per configuration: requests, throughput, p50/p95/p99 latency.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body() -> tuple[bytes, dict[str, str]]:
    from alzprog.preprocessing import canonicalize
    from services.common.wire import encode_canonical

    rng = np.random.default_rng(0)
    img = np.zeros((208, 176), np.uint8)
    img[20:190, 20:160] = rng.integers(50, 220, (170, 140), dtype=np.uint8)
    c = canonicalize(img)
    return encode_canonical(c.image, c.mask)


def run(config: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, **config, "CLASSIFIER_PORT": str(port), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "PYTHONPATH": str(REPO), "CLASSIFIER_MAX_QUEUE": str(clients * 4), "CLASSIFIER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "services.classifier"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("classifier not ready")
        data, headers = body()
        for _ in range(5):
            httpx.post(url + "/v1/classify", content=data, headers=headers, timeout=30)
        latencies: list[float] = []
        failures = 0
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client() -> None:
            nonlocal failures
            with httpx.Client(timeout=60) as c:
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    r = c.post(url + "/v1/classify", content=data, headers=headers)
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 200:
                            latencies.append(dt)
                        else:
                            failures += 1

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
        info = httpx.get(url + "/v1/info", timeout=5).json()
        return {"requests": len(latencies), "failures": failures, "rps": len(latencies) / wall,
                "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "p99_ms": q[98] * 1000,
                "batches": info["batching"]["batches"], "version": info["models"][0]["version"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-size", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    for label, cfg in (
        ("batching off", {"CLASSIFIER_BATCH_MAX_SIZE": "1"}),
        (f"batching on (max {args.max_size}, {args.max_wait_ms} ms)",
         {"CLASSIFIER_BATCH_MAX_SIZE": str(args.max_size), "CLASSIFIER_BATCH_MAX_WAIT_MS": str(args.max_wait_ms)}),
    ):
        r = run(cfg, args.clients, args.seconds)
        print(f"{label:32s} v{r['version']}: {r['requests']} ok, {r['failures']} failed, {r['rps']:.1f} req/s, "
              f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, forward passes {r['batches'] or r['requests']}",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
