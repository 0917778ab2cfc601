"""Comparison 3: the gateway -- ``/predict`` cache miss vs hit, ``/progression`` vs the original pipeline.

Misses are real misses: every request uploads a different image (the sample slice with a few
brain pixels changed, so its canonical SHA-256 differs) and the answer must say
``"cached": false``. Hits repeat one upload already answered and must say ``"cached": true``.
The cache is the real Redis (DB 11 by default) under a key prefix unique to the run; the
bench deletes its own keys afterwards and never flushes a database.

``/progression`` (classify and the three generator steps, through the gateway, every upload
new; an idle gateway starts the chain from its guess, Non Demented, beside the classifier)
is compared with :class:`~alzprog.bench.original_pipeline.OriginalPipeline` run in this
process on the same uploads. The two are timed in alternating rounds (a few requests of one,
then a few calls of the other), so a drift of the machine's speed during the run falls on
both alike: the target is their ratio.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import numpy as np

from benchmarks.harness import Measurement, measurement, merge_stats, time_callable
from benchmarks.loadgen import RequestSpec, run_load
from benchmarks.stack import BenchStack

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"


def redis_url() -> str:
    """Redis of the benchmark: ``$ALZPROG_BENCH_REDIS_URL``, else DB 11 of the local server."""
    return os.environ.get("ALZPROG_BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def unique_uploads(upload: bytes, n: int, seed: int = 0) -> list[bytes]:
    """``n`` PNG uploads of the same slice, each with a distinct small change inside the head."""
    from benchmarks.original_pipeline import png_bytes
    from alzprog.decode import decode_slice

    gray = decode_slice(upload)
    h, w = gray.shape
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        g = gray.copy()
        # A short run of pixels near the centre, its values encoding i: enough to change the
        # canonical image (and its SHA-256), far too little to change what the models see.
        cy, cx = h // 2, w // 2
        vals = rng.integers(0, 256, size=8, dtype=np.uint8)
        vals[0] = i % 256
        vals[1] = (i // 256) % 256
        g[cy, cx : cx + 8] = vals
        out.append(png_bytes(g))
    return out


def upload_request(path: str, data: bytes, form: dict[str, str] | None = None) -> RequestSpec:
    return RequestSpec("POST", path, {"files": {"file": ("slice.png", data, "image/png")}, "data": form or {}})


def _generator_backends(url: str) -> str:
    """The backend each transition's model runs on, as the generator service chose it at load."""
    import httpx

    try:
        models = httpx.get(url + "/v1/info", timeout=5).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return "unknown"
    return "/".join(str(m.get("backend")) for m in models) or "unknown"


def _generator_request(upload: bytes) -> RequestSpec:
    """``POST /v1/progress?from_stage=0`` of the generator service with the canonical image + mask."""
    from alzprog.preprocessing import load_canonical

    from services.common.wire import encode_canonical

    c = load_canonical(upload)
    body, headers = encode_canonical(c.image, c.mask)
    return RequestSpec("POST", "/v1/progress", {"content": body, "headers": headers, "params": {"from_stage": "0"}})


def _cached_is(expected: bool, steps: int | None = None):  # noqa: ANN202
    def check(resp: Any) -> bool:
        body = resp.json()
        if body.get("cached") is not expected:
            return False
        return steps is None or len(body.get("steps", [])) == steps

    return check


def _png_rows(image: Any, warm: int, repeats: int) -> list[Measurement]:
    """Marking + PNG encoding of three steps in process, at the served level and at level 6."""
    import base64
    import io

    from PIL import Image

    from alzprog.decode import png_data_url
    from alzprog.preprocessing import mark_synthetic

    def level6(marked: Any) -> str:  # png_data_url with Pillow's default level: like with like
        buf = io.BytesIO()
        Image.fromarray(marked).save(buf, format="PNG", optimize=False, compress_level=6)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    rows = []
    for variant, encode in (("mark + PNG x3, served zlib level", png_data_url), ("mark + PNG x3, zlib level 6", level6)):
        stats = time_callable(lambda encode=encode: [encode(mark_synthetic(image)) for _ in range(3)],
                              warmup=warm, repeats=repeats)
        rows.append(measurement("gateway", "/progression c1", variant, stats, unit="request",
                                baseline="original eager pipeline",
                                note="in process, one after another, on the sample's canonical slice"))
    return rows


def delete_prefix(url: str, prefix: str) -> int:
    """Delete the keys of this run (``prefix*``) with SCAN + DEL; returns how many."""
    import redis

    r = redis.Redis.from_url(url, socket_timeout=2)
    n = 0
    try:
        batch = []
        for key in r.scan_iter(match=f"{prefix}*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                n += r.delete(*batch)
                batch = []
        if batch:
            n += r.delete(*batch)
    finally:
        r.close()
    return n


def run(stack: BenchStack, *, quick: bool = False, repeats: int = 30) -> tuple[list[Measurement], dict[str, float]]:
    """Comparison 3. Returns rows and ``{"cache_hit_vs_miss_p50", "progression_vs_eager_p50"}``.

    Starts the classifier, generator and gateway services if they are not running yet.
    """
    import redis

    from benchmarks.original_pipeline import OriginalPipeline
    from benchmarks.services import sample_upload

    url = redis_url()
    redis.Redis.from_url(url, socket_timeout=2).ping()  # fail fast with a clear error when Redis is down
    prefix = f"alzprog-bench-{uuid.uuid4().hex[:8]}"
    if "classifier" not in stack.procs:
        stack.start_classifier()
    if "generator" not in stack.procs:
        stack.start_generator()
    if "gateway" not in stack.procs:
        stack.start_gateway(url, prefix)
    gw = stack.procs["gateway"].url

    n_miss = 4 if quick else max(10, repeats)
    n_hit = 6 if quick else max(20, 2 * repeats)
    n_prog = 2 if quick else max(6, repeats // 3)
    rounds = 1 if quick else 4  # alternating rounds of /progression and the eager pipeline
    per_round = 2 if quick else 3
    warm = 1 if quick else 3
    upload = sample_upload()
    n_pool = warm + max(n_miss, n_prog, rounds * per_round)
    uploads = unique_uploads(upload, 8 * n_pool + 1)
    # Disjoint pools: an upload used once is cached, so each miss series needs its own.
    miss_pool, prog_pool, prog2_pool, prog3_pool, prog4_pool, prog5_pool, prog6_pool, prog7_pool = (
        uploads[k * n_pool:(k + 1) * n_pool] for k in range(8))
    rows: list[Measurement] = []
    try:
        # /predict miss: request i (warm-up ones negative) gets its own upload.
        stats = run_load(gw, lambda i: upload_request("/predict", miss_pool[i + warm if i >= 0 else -i - 1]),
                         concurrency=1, n_requests=n_miss, warmup=warm, check=_cached_is(False))
        rows.append(measurement("gateway", "/predict c1", "cache miss", stats, unit="request", baseline="cache miss"))
        # /predict hit: the first (warm-up) request fills the cache, the timed ones must hit.
        hot = uploads[-1]
        stats = run_load(gw, lambda i: upload_request("/predict", hot), concurrency=1, n_requests=n_hit, warmup=warm,
                         check=_cached_is(True))
        rows.append(measurement("gateway", "/predict c1", "cache hit", stats, unit="request", baseline="cache miss",
                                note="Redis hit: upload record (raw bytes SHA-256) + result GET; nothing decoded"))
        # /progression through the gateway, every upload new, in rounds alternating with the
        # original eager pipeline on the same uploads (in this process).
        pipeline = OriginalPipeline(tiny=quick)
        ours, eager = [], []
        for r in range(rounds):
            offset = warm + r * per_round
            ours.append(run_load(gw, lambda i, offset=offset: upload_request("/progression", prog_pool[offset + i if i >= 0 else -i - 1]),
                                 concurrency=1, n_requests=per_round, warmup=warm if r == 0 else 0,
                                 check=_cached_is(False, steps=3)))
            k = iter(range(offset, offset + per_round + warm))
            eager.append(time_callable(lambda: pipeline(prog_pool[next(k) % len(prog_pool)]), warmup=warm if r == 0 else 0,
                                       repeats=per_round))
        eager_stats = merge_stats(eager)
        stats = merge_stats(ours)
        rows.append(measurement("gateway", "/progression c1", "alzprog gateway", stats, unit="request",
                                baseline="original eager pipeline",
                                note="idle gateway: chain from Non Demented (its guess) beside the classifier; cache miss; "
                                     f"generator backends {_generator_backends(stack.procs['generator'].url)}"))
        if not quick:
            # The same with the start stage given: the gateway then classifies and generates at once.
            stats = run_load(gw, lambda i: upload_request("/progression", prog2_pool[i + warm if i >= 0 else -i - 1],
                                                          {"from_stage": "Non Demented"}),
                             concurrency=1, n_requests=n_prog, warmup=warm, check=_cached_is(False, steps=3))
            rows.append(measurement("gateway", "/progression c1", "alzprog gateway, from_stage given", stats,
                                    unit="request", baseline="original eager pipeline",
                                    note="classify and 3 generator steps in parallel; cache miss"))
            # The gateway guesses the start stage when idle (GATEWAY_SPECULATE_FROM_STAGE, default
            # Non Demented): the same requests with the guess off, and with a wrong guess.
            for variant, guess, pool in (("alzprog gateway, no speculation", "-1", prog3_pool),
                                         ("alzprog gateway, wrong guess (Very mild)", "1", prog4_pool)):
                other = stack.start_gateway(url, prefix, name=f"gateway-spec{guess}",
                                            extra_env={"GATEWAY_SPECULATE_FROM_STAGE": guess})
                try:
                    stats = run_load(other.url, lambda i, pool=pool: upload_request("/progression", pool[i + warm if i >= 0 else -i - 1]),
                                     concurrency=1, n_requests=n_prog, warmup=warm, check=_cached_is(False, steps=3))
                finally:
                    stack.stop(other.name)
                rows.append(measurement("gateway", "/progression c1", variant, stats, unit="request",
                                        baseline="original eager pipeline",
                                        note="classify, then 3 generator steps" if guess == "-1" else
                                        "chain from Very mild started beside the classifier, then the right one from Non Demented"))
            # The generator's serving choices switched off or forced in the same run, each
            # through a second generator service: ONNX Runtime fp32 forced (no backend timing at
            # load, no bf16); eager PyTorch forced; and eager PyTorch with glibc's allocator
            # thresholds raised (the removed mallopt trick, set here through the environment).
            glibc = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}
            for variant, env, pool, note in (
                ("alzprog gateway, generator ORT fp32 forced", {"GENERATOR_BACKEND": "onnxruntime", "GENERATOR_PRECISION": "fp32"},
                 prog5_pool, "no backend choice by timing, no bf16"),
                ("alzprog gateway, generator torch forced", {"GENERATOR_BACKEND": "torch"},
                 prog6_pool, "eager PyTorch channels-last (bf16 where the CPU has it and the model passes)"),
                ("alzprog gateway, generator torch forced + glibc thresholds", {"GENERATOR_BACKEND": "torch", **glibc},
                 prog7_pool, "as the row above, with MALLOC_MMAP_THRESHOLD_=256 MiB, MALLOC_TRIM_THRESHOLD_=512 MiB"),
            ):
                plain = stack.start_generator(name="generator-variant", extra_env=env)
                other = stack.start_gateway(url, prefix, name="gateway-variant", generator=plain.name)
                try:
                    stats = run_load(other.url, lambda i, pool=pool: upload_request("/progression", pool[i + warm if i >= 0 else -i - 1]),
                                     concurrency=1, n_requests=n_prog, warmup=warm, check=_cached_is(False, steps=3))
                    backends = _generator_backends(plain.url)
                finally:
                    stack.stop(other.name)
                    stack.stop(plain.name)
                rows.append(measurement("gateway", "/progression c1", variant, stats, unit="request",
                                        baseline="original eager pipeline", note=f"{note}; backends {backends}"))
            # Where the time goes: the generator chain alone, straight to the generator service.
            gen_spec = _generator_request(upload)
            stats = run_load(stack.procs["generator"].url, lambda i: gen_spec, concurrency=1, n_requests=n_prog,
                             warmup=warm)
            rows.append(measurement("gateway", "/progression c1", "generator service alone", stats, unit="request",
                                    baseline="original eager pipeline",
                                    note="POST /v1/progress from Non Demented: 3 steps, PNG out, no gateway"))
    finally:
        deleted = delete_prefix(url, prefix)
        log.info("deleted %d bench keys under %s", deleted, prefix)

    # What a hit would cost if the cache were keyed by the canonical pixels only (the gateway
    # looks up the upload's raw-bytes hash first, so a repeated upload skips this).
    from alzprog.preprocessing import load_canonical

    stats = time_callable(lambda: load_canonical(hot), warmup=warm, repeats=n_miss)
    rows.append(measurement("gateway", "/predict c1", "in-process decode + canonicalise", stats, unit="request",
                            baseline="cache miss", note="what a hit keyed by the canonical pixels alone would add; skipped by the upload record"))

    # What the answer's three SYNTHETIC images cost to mark and encode, one after another as the
    # generator does it: at the served zlib level, and at Pillow's default level 6.
    rows.extend(_png_rows(load_canonical(hot).image, warm, n_miss))

    # The original-style pipeline, timed in rounds beside the gateway's /progression above.
    rows.append(measurement("gateway", "/progression c1", "original eager pipeline", eager_stats, unit="request",
                            baseline="original eager pipeline",
                            note=f"in process: eager B4 + 3 eager DCGAN generators, PNG out; weights kept in memory; "
                                 f"timed in {rounds} round(s) alternating with the gateway row"))
    for r in rows:
        log.info("gateway %s %s: p50 %.1f ms, %d errors", r.case, r.variant, r.p50_ms, r.errors)

    by = {(r.case, r.variant): r for r in rows}
    targets = {
        "cache_hit_vs_miss_p50": by[("/predict c1", "cache hit")].p50_ms / by[("/predict c1", "cache miss")].p50_ms,
        "progression_vs_eager_p50": (by[("/progression c1", "alzprog gateway")].p50_ms
                                     / by[("/progression c1", "original eager pipeline")].p50_ms),
    }
    return rows, targets
