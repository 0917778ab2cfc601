"""Comparison 2: the classifier service vs ``mlflow models serve`` on the same registered version.

Both serve the same untrained EfficientNet-B4 (256 x 256) weights registered in the bench's
MLflow server and receive the same canonical image: ours as the raw canonical pixels of the
internal wire format (the gateway canonicalises once), the baseline as the base64 PNG of those
pixels in a ``dataframe_split`` JSON body (what a pyfunc user sends). Both are hit by the same
closed-loop load generator at concurrency 1, 4 and 16.

The in-process reference of the ``service_vs_inprocess_p50`` target is the work the service
does per request, done in this process at full speed: ``classifier_input`` of the canonical
image plus one ONNX Runtime forward of the same ``model.onnx`` with all CPUs.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Measurement, measurement, time_callable, torch_threads
from benchmarks.loadgen import RequestSpec, run_load
from benchmarks.stack import BenchStack, free_port

log = logging.getLogger(__name__)

CONCURRENCIES = (1, 4, 16)


def sample_upload() -> bytes:
    """A real OASIS slice (JPEG) from the samples beside the checkout, else a synthetic head PNG."""
    from benchmarks.stack import repo_root

    for root in (repo_root().parent / "shared" / "oasis-samples" / "Data", repo_root() / "shared" / "oasis-samples" / "Data"):
        files = sorted((root / "Non Demented").glob("*.jpg")) if root.is_dir() else []
        if files:
            return files[len(files) // 2].read_bytes()
    from benchmarks.original_pipeline import png_bytes

    log.warning("OASIS samples not found; using a synthetic head image")
    yy, xx = np.mgrid[0:248, 0:496]
    head = (((yy - 124) / 110.0) ** 2 + ((xx - 248) / 200.0) ** 2) < 1
    brain = (((yy - 124) / 90.0) ** 2 + ((xx - 248) / 170.0) ** 2) < 1
    img = np.where(brain, 150, np.where(head, 230, 0)).astype(np.uint8)
    return png_bytes(img)


def canonical_of(upload: bytes):  # noqa: ANN201 - CanonicalSlice
    from alzprog.preprocessing import load_canonical

    return load_canonical(upload)


def canonical_request(image: np.ndarray, mask: np.ndarray | None = None) -> RequestSpec:
    """``POST /v1/classify`` with the internal wire format."""

    from services.common.wire import encode_canonical

    body, headers = encode_canonical(image, mask)
    return RequestSpec("POST", "/v1/classify", {"content": body, "headers": headers})


def pyfunc_request(image: np.ndarray) -> RequestSpec:
    """``POST /invocations`` of ``mlflow models serve``: base64 PNG in a ``dataframe_split``."""
    from benchmarks.original_pipeline import png_bytes

    b64 = base64.b64encode(png_bytes(image)).decode("ascii")
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}})
    return RequestSpec("POST", "/invocations", {"content": body, "headers": {"Content-Type": "application/json"}})


def inprocess_reference(model_dir: Path, image: np.ndarray, *, repeats: int, warmup: int,
                        threads: int | None = None) -> dict[str, Any]:
    """p50 of classifier_input + ONNX Runtime forward of ``model_dir/model.onnx`` in this process."""
    from benchmarks.forward import ort_session
    from alzprog.preprocessing import classifier_input

    cfg = json.loads((model_dir / "config.json").read_text())
    session = ort_session(model_dir / "model.onnx", threads or torch_threads())
    name = session.get_inputs()[0].name
    size, mean, std = int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"])

    def run() -> Any:
        x = classifier_input(image, size, mean, std).numpy()[None]
        return session.run(None, {name: x})

    return time_callable(run, warmup=warmup, repeats=repeats)


def _requests_for(concurrency: int, quick: bool) -> int:
    if quick:
        return 4
    return {1: 30, 4: 48}.get(concurrency, 96)


def bench_classifier_service(stack: BenchStack, image: np.ndarray, *, quick: bool, case_prefix: str = "classifier",
                             variant: str = "alzprog service", name: str = "classifier",
                             concurrencies: tuple[int, ...] = CONCURRENCIES, baseline: str = "mlflow models serve",
                             comparison: str = "service", note: str = "") -> list[Measurement]:
    """Load the running classifier service ``name`` at each concurrency."""
    proc = stack.procs[name]
    spec = canonical_request(image)
    rows = []
    for c in concurrencies:
        stats = run_load(proc.url, lambda i: spec, concurrency=c, n_requests=_requests_for(c, quick),
                         warmup=2 if quick else 5)
        rows.append(measurement(comparison, f"{case_prefix} c{c}", variant, stats, unit="request", concurrency=c,
                                baseline=baseline, note=note))
        log.info("%s %s c%d: p50 %.1f ms, %.2f req/s, %d errors", comparison, variant, c, stats["p50_ms"],
                 stats["throughput"], stats["errors"])
    return rows


def start_mlflow_serve(stack: BenchStack, model_name: str, version: str) -> None:
    """``mlflow models serve -m models:/<name>/<version> --env-manager local`` (one uvicorn worker)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    argv = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{model_name}/{version}",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = stack.service_env()
    env["PATH"] = str(bin_dir) + ":" + env.get("PATH", "")
    stack.start("mlflow-serve", argv, env=env, port=port, health="/ping", timeout=240)


def run(stack: BenchStack, *, quick: bool = False, repeats: int = 30) -> tuple[list[Measurement], dict[str, float]]:
    """Comparison 2. Returns the rows and ``{"service_vs_inprocess_p50", "service_vs_mlflow_throughput_c16"}``.

    Expects ``stack`` to have MLflow running and the classifier champion registered; starts the
    classifier service if it is not running, starts and stops ``mlflow models serve``.
    """
    from benchmarks.original_pipeline import register_pyfunc
    from alzprog.constants import CLASSIFIER_MODEL_NAME
    from alzprog.registry import resolve_model

    rows: list[Measurement] = []
    canon = canonical_of(sample_upload())
    version = stack.versions[CLASSIFIER_MODEL_NAME]
    model_dir = Path(resolve_model(f"models:/{CLASSIFIER_MODEL_NAME}/{version}").local_dir)

    # The in-process reference is the faster of one thread and all CPUs (with two cores busy
    # elsewhere, one thread can win): the service is held to the best the process can do.
    refs = []
    for threads in sorted({1, torch_threads()}):
        ref = inprocess_reference(model_dir, canon.image, repeats=3 if quick else repeats, warmup=1 if quick else 3,
                                  threads=threads)
        refs.append(ref)
        rows.append(measurement("service", "classifier c1", f"in-process onnxruntime, {threads} thread(s)", ref,
                                unit="request", baseline="mlflow models serve",
                                note="classifier_input + ORT forward, no HTTP"))
    ref = min(refs, key=lambda r: r["p50_ms"])

    if "classifier" not in stack.procs:
        stack.start_classifier()
    concs = (1, 16) if quick else CONCURRENCIES
    ours = bench_classifier_service(stack, canon.image, quick=quick, concurrencies=concs)
    rows += ours
    if not quick:
        # The adaptive thread policy switched off in the same run: every request gets all CPUs.
        fixed = "classifier-fixed-threads"
        stack.start_classifier(name=fixed, extra_env={"CLASSIFIER_INTRA_OP_THREADS": str(torch_threads())})
        try:
            rows += bench_classifier_service(stack, canon.image, quick=quick, concurrencies=concs, name=fixed,
                                             variant="alzprog service, fixed threads",
                                             note=f"adaptive ORT threads off: {torch_threads()} intra-op threads always")
        finally:
            stack.stop(fixed)

    pyfunc_name, pyfunc_version = register_pyfunc(model_dir, CLASSIFIER_MODEL_NAME, version)
    start_mlflow_serve(stack, pyfunc_name, pyfunc_version)
    spec = pyfunc_request(canon.image)
    try:
        for c in concs:
            stats = run_load(stack.procs["mlflow-serve"].url, lambda i: spec, concurrency=c,
                             n_requests=_requests_for(c, quick) if c < 16 else (6 if quick else 48),
                             warmup=2 if quick else 5)
            rows.append(measurement("service", f"classifier c{c}", "mlflow models serve", stats, unit="request",
                                    concurrency=c, baseline="mlflow models serve",
                                    note=f"pyfunc {pyfunc_name} v{pyfunc_version} wraps v{version}, eager torch"))
            log.info("service mlflow c%d: p50 %.1f ms, %.2f req/s, %d errors", c, stats["p50_ms"], stats["throughput"],
                     stats["errors"])
    finally:
        stack.stop("mlflow-serve")

    by = {(r.case, r.variant): r for r in rows}
    ours_c1 = by[("classifier c1", "alzprog service")]
    targets = {
        "service_vs_inprocess_p50": ours_c1.p50_ms / ref["p50_ms"],
        "service_vs_mlflow_throughput_c16": (by[("classifier c16", "alzprog service")].throughput
                                             / by[("classifier c16", "mlflow models serve")].throughput),
    }
    return rows, targets
