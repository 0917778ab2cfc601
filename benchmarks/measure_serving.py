"""Latency figures of a running stack (``make run``): cached vs uncached, and under failures.

    .venv/bin/python benchmarks/measure_serving.py --gateway http://127.0.0.1:8000 --sample slice.jpg

Measures, each over ``--n`` requests: ``/predict`` uncached (a fresh image each time) and
cached, ``/progression`` uncached and cached, then the answer time of ``/progression`` with
the generator unreachable when ``--kill-generator-pid`` is given (the first 503s pay the
connection attempts, the later ones meet the open circuit), and the added latency of a
Redis that accepts connections but never answers (a second gateway on a black-holed port,
``--blackhole-redis``). Prints one line per figure (median and max, milliseconds).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def variant(sample: bytes, k: int) -> bytes:
    """The sample with a small block inside the head changed: a new canonical SHA-256, so nothing
    is cached (a change in the background would be cropped away by canonicalisation)."""
    im = np.array(Image.open(io.BytesIO(sample)).convert("L"))
    h, w = im.shape
    im[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = (k * 37) % 256
    im[h // 3 - 2 : h // 3 + 2, w // 3 - 2 : w // 3 + 2] = (k * 91) % 256
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="PNG")
    return buf.getvalue()


def timed(fn) -> tuple[float, httpx.Response]:  # noqa: ANN001
    t0 = time.perf_counter()
    r = fn()
    return (time.perf_counter() - t0) * 1000, r


def uncached_posts(post: Callable[[bytes], httpx.Response], sample: bytes, first_seed: int, n: int) -> tuple[list[float], list[int]]:
    """Time ``post`` on ``n`` fresh variants of the sample (nothing cached): milliseconds and statuses."""
    ms_list, statuses = [], []
    for i in range(n):
        data = variant(sample, first_seed + i)
        ms, r = timed(lambda: post(data))
        ms_list.append(ms)
        statuses.append(r.status_code)
    return ms_list, statuses


def report(label: str, ms: list[float], statuses: list[int]) -> None:
    print(f"{label:58s} median {statistics.median(ms):8.1f} ms  max {max(ms):8.1f} ms  statuses {sorted(set(statuses))}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateway", default="http://127.0.0.1:8000")
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--kill-generator-pid", type=int, default=None)
    ap.add_argument("--blackhole-redis", action="store_true")
    args = ap.parse_args()
    sample = args.sample.read_bytes()
    c = httpx.Client(base_url=args.gateway, timeout=120, trust_env=False)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    seed = int(time.time()) % 100000

    for path, extra in (("/predict", {}), ("/progression", {"from_stage": "nd"})):
        cold, warm, st = [], [], []
        for i in range(args.n):
            data = variant(sample, seed + i)
            ms, r = timed(lambda: c.post(path, files={"file": ("x.png", data)}, data=extra))
            cold.append(ms)
            st.append(r.status_code)
            ms, r = timed(lambda: c.post(path, files={"file": ("x.png", data)}, data=extra))
            warm.append(ms)
            st.append(r.status_code)
            assert r.json().get("cached") is True, r.text[:200]
        report(f"{path} uncached", cold, st)
        report(f"{path} cached (Redis hit)", warm, st)

    if args.blackhole_redis:
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        gw_port = port.getsockname()[1]
        port.close()
        info = c.get("/readyz").json()
        env = {**os.environ, "PYTHONPATH": str(REPO), "GATEWAY_PORT": str(gw_port), "GATEWAY_LOG_LEVEL": "WARNING",
               "REDIS_URL": f"redis://127.0.0.1:{hole.getsockname()[1]}/0"}
        for name in ("classifier", "generator"):
            env[f"GATEWAY_{name.upper()}_URL"] = os.environ.get(f"GATEWAY_{name.upper()}_URL", f"http://127.0.0.1:{8001 if name == 'classifier' else 8002}")
        proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            g2 = httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", timeout=120, trust_env=False)
            from alzprog.readiness import wait_ready

            wait_ready("/readyz", timeout=60, proc=proc, get=g2.get, interval=0.5, accept=lambda r: r.status_code == 200)
            ms_list, st = uncached_posts(lambda data: g2.post("/predict", files={"file": ("x.png", data)}), sample, seed + 1000, args.n)
            report("/predict uncached, Redis black-holed (0.25 s timeout)", ms_list, st)
            print(f"  readyz cache check: {g2.get('/readyz').json()['checks']['cache']}", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            hole.close()
        del info

    if args.kill_generator_pid:
        os.killpg(args.kill_generator_pid, signal.SIGKILL)
        time.sleep(0.5)
        ms_list, st = uncached_posts(lambda data: c.post("/progression", files={"file": ("x.png", data)}, data={"from_stage": "nd"}),
                                     sample, seed + 2000, args.n)
        report("/progression with the generator killed (first attempts)", ms_list[:3], st[:3])
        report("/progression with the generator killed (circuit open)", ms_list[3:], st[3:])
        ms_list, st = uncached_posts(lambda data: c.post("/predict", files={"file": ("x.png", data)}), sample, seed + 3000, args.n)
        report("/predict uncached with the generator killed", ms_list, st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
