"""Gateway ``/predict`` latency: cache miss, cache hit, and a hit on new bytes of known pixels.

    .venv/bin/python benchmarks/measure_gateway_cache.py --n 40

Starts its own classifier (an untrained model seeded into a temporary model cache, MLflow
unreachable) and gateway (``python -m services.gateway``, Redis at ``--redis-url`` under a
key prefix of its own, deleted afterwards), then times, one request at a time:

- ``miss``: every upload new (the sample with a few brain pixels changed);
- ``hit, same bytes``: the same upload again and again (what a browser retry or a second
  click sends);
- ``hit, new bytes of known pixels``: the same PNG with a different number of bytes after
  its end (ignored by the decoder): the result is cached but these upload bytes were never
  seen, so the gateway must decode them to find the canonical pixels' hash.

Prints p50/p90 per case and the hit/miss ratio. ``--arch b4`` times the production
classifier (EfficientNet-B4 at 256 px, untrained weights; slower to export) instead of the
tiny test model.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "oasis-samples" / "Data" / "Non Demented"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def classifier_artifact(out: Path, arch: str) -> Path:
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.stage_classifier import classifier_config

    if arch == "b4":
        cfg = classifier_config("efficientnet_b4", 256, pretrained="none")
    else:
        cfg = classifier_config("efficientnet_b0", 64, width_mult=0.1, depth_mult=0.1, pretrained="none")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    size = int(cfg["image_size"])
    save_artifact(out, model, cfg, torch.randn(1, 3, size, size))
    return out


def start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=full, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    from alzprog.readiness import wait_ready as poll

    poll(url + "/readyz", timeout=timeout, proc=proc, accept=lambda r: r.status_code == 200)


def png(arr: np.ndarray, level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40, help="timed requests per case")
    ap.add_argument("--arch", choices=["tiny", "b4"], default="tiny")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gwcache-"))
    prefix = f"alzprog-measure-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    try:
        from alzprog.constants import CLASSIFIER_MODEL_NAME

        from alzprog.registry import store_in_cache

        cport, gport = free_port(), free_port()
        dead = f"http://127.0.0.1:{free_port()}"
        # The cache is keyed by registry: seed it for the (dead) registry URI the classifier uses.
        os.environ["ALZPROG_HOME"] = str(work / "home")
        store_in_cache(classifier_artifact(work / "clf", args.arch), CLASSIFIER_MODEL_NAME, 1, uri=dead)
        procs.append(start("services.classifier", {
            "ALZPROG_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": dead, "CLASSIFIER_PORT": str(cport),
            "CLASSIFIER_LOG_LEVEL": "WARNING", "CLASSIFIER_POLL_SECONDS": "600"}, work / "classifier.log"))
        curl = f"http://127.0.0.1:{cport}"
        wait_ready(curl, procs[-1])
        procs.append(start("services.gateway", {
            "GATEWAY_PORT": str(gport), "GATEWAY_CLASSIFIER_URL": curl, "GATEWAY_GENERATOR_URL": dead,
            "REDIS_URL": args.redis_url, "GATEWAY_CACHE_PREFIX": prefix, "GATEWAY_LOG_LEVEL": "WARNING"}, work / "gateway.log"))
        gurl = f"http://127.0.0.1:{gport}"
        wait_ready(gurl, procs[-1])

        sample = sorted(SAMPLE.glob("*.jpg"))[0].read_bytes() if SAMPLE.is_dir() else None
        base = np.asarray(Image.open(io.BytesIO(sample)).convert("L")) if sample else np.full((208, 176), 90, np.uint8)
        h, w = base.shape

        def variant(k: int) -> np.ndarray:
            im = base.copy()
            im[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = (k * 37) % 256
            im[h // 3 - 2 : h // 3 + 2, w // 3 - 2 : w // 3 + 2] = (k * 91) % 256
            return im

        client = httpx.Client(timeout=60)

        def post(data: bytes, expect_cached: bool) -> float:
            t0 = time.perf_counter()
            r = client.post(gurl + "/predict", files={"file": ("slice.png", data, "image/png")})
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200 or r.json()["cached"] is not expect_cached:
                raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:200]}")
            return dt

        for k in range(3):  # warm-up
            post(png(variant(1000 + k)), False)
        miss = [post(png(variant(k)), False) for k in range(args.n)]
        hot = png(variant(0))  # answered above: its result and its upload record are cached
        same = [post(hot, True) for _ in range(args.n)]
        # Same pixels, new bytes: the PNG with k bytes after IEND (ignored by the decoder).
        known = png(variant(1))
        fresh = [known + bytes(k + 1) for k in range(args.n)]
        hit_new = [post(d, True) for d in fresh]
        client.close()

        def p(xs: list[float], q: float) -> float:
            return float(np.percentile(xs, q))

        print(f"gateway /predict, classifier {args.arch}, {args.n} requests per case, one at a time, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for name, xs in (("miss", miss), ("hit, same bytes", same), ("hit, new bytes of known pixels", hit_new)):
            print(f"  {name:32s} p50 {p(xs, 50):7.2f} ms   p90 {p(xs, 90):7.2f} ms")
        print(f"  hit (same bytes) / miss p50 = {statistics.median(same) / statistics.median(miss):.3f}")
        return 0
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                pass
        try:
            import redis

            r = redis.Redis.from_url(args.redis_url, socket_timeout=2)
            keys = list(r.scan_iter(f"{prefix}:*"))
            if keys:
                r.delete(*keys)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
