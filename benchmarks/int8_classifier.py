"""Int8 against fp32 for a stage classifier with ONNX Runtime on this CPU: speed and the admission check.

    .venv/bin/python -m benchmarks.int8_classifier MODEL_DIR --split SPLIT_DIR [--formats qdq qoperator]

``MODEL_DIR`` is a classifier artifact folder (e.g. a registered version's cache folder, or the
``model/`` folder of ``alzprog train classifier --out``); ``SPLIT_DIR`` is its own split. Every
format is quantized as ``alzprog serving quantize`` does (``alzprog.quantization.quantize_classifier``,
the same calibration and check) and then timed against the fp32 serving graph on the split's
test slices: p50 latency of one slice (batch 1) and throughput at batch 16, the variants
alternating within each round so that a load change on the shared machine hits all of them,
the median over rounds. Sessions use every available CPU (the service's lone-request session).
Prints the figures and the int8/fp32 ratios and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import write_result


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})


def _time(session, x: np.ndarray, n: int) -> list[float]:  # noqa: ANN001 - ort.InferenceSession
    name = session.get_inputs()[0].name
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        ts.append(time.perf_counter() - t0)
    return ts


def main(argv: list[str] | None = None) -> int:
    from alzprog.data.split import load_split
    from alzprog.inference.runtime import available_cpus
    from alzprog.quantization import (DEFAULT_CALIBRATION_SLICES, FORMATS, canonical_slices, cpu_session, model_inputs,
                                      quantize_classifier, serving_graph)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    ap.add_argument("--calibration-slices", type=int, default=DEFAULT_CALIBRATION_SLICES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--b1-runs", type=int, default=10, help="batch-1 runs per variant per round")
    ap.add_argument("--b16-runs", type=int, default=3, help="batch-16 runs per variant per round")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: every available CPU)")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)

    config = json.loads((args.model_dir / "config.json").read_text())
    test = load_split(args.split, ("test",))["test"].reset_index(drop=True)
    images = canonical_slices(list(test["path"].astype(str)))
    threads = args.threads or available_cpus()
    load_before = os.getloadavg()

    variants: dict[str, object] = {"fp32": serving_graph(args.model_dir)}
    checks: dict[str, dict] = {}
    quantize_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        for fmt in args.formats:
            t0 = time.perf_counter()
            result = quantize_classifier(args.model_dir, args.split, Path(tmp) / fmt, fmt=fmt,
                                         calibration_slices=args.calibration_slices)
            quantize_s[fmt] = round(time.perf_counter() - t0, 1)
            checks[fmt] = result.record
            variants[f"int8-{fmt}"] = result.int8_path.read_bytes()
        sessions = {k: cpu_session(g, threads) for k, g in variants.items()}
    x1 = model_inputs(images[:1], config)
    x16 = model_inputs([images[i % len(images)] for i in range(16)], config)
    for s in sessions.values():  # first runs allocate: untimed
        _time(s, x1, 2)
        _time(s, x16, 1)
    b1: dict[str, list[float]] = {k: [] for k in sessions}
    b16: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            b1[k].append(statistics.median(_time(s, x1, args.b1_runs)) * 1000)
            b16[k].append(16 / statistics.median(_time(s, x16, args.b16_runs)))
    load_after = os.getloadavg()
    figures = {k: {"b1_p50_ms": round(statistics.median(b1[k]), 2), "b1_rounds_ms": [round(v, 2) for v in b1[k]],
                   "b16_images_per_s": round(statistics.median(b16[k]), 2), "b16_rounds": [round(v, 2) for v in b16[k]]}
               for k in sessions}
    for k in sessions:
        if k != "fp32":
            figures[k]["b1_ratio_int8_over_fp32"] = round(figures[k]["b1_p50_ms"] / figures["fp32"]["b1_p50_ms"], 3)
            figures[k]["b16_ratio_int8_over_fp32"] = round(figures[k]["b16_images_per_s"] / figures["fp32"]["b16_images_per_s"], 3)
    import onnxruntime as ort

    out = {
        "what": "int8 vs fp32 stage classifier, ONNX Runtime CPU, alternating rounds, medians",
        "label": args.label, "model_dir": str(args.model_dir), "split": str(args.split),
        "arch": config.get("arch"), "image_size": config.get("image_size"),
        "test_slices": len(images), "threads": threads, "rounds": args.rounds,
        "b1_runs_per_round": args.b1_runs, "b16_runs_per_round": args.b16_runs,
        "figures": figures, "quantize_seconds": quantize_s,
        "checks": {fmt: rec["check"] for fmt, rec in checks.items()},
        "calibration_slices": args.calibration_slices,
        "machine": {"cpu_flags": _cpu_flags(), "cpus": threads, "platform": platform.platform(),
                    "onnxruntime": ort.__version__, "load_avg_before": [round(v, 2) for v in load_before],
                    "load_avg_after": [round(v, 2) for v in load_after]},
    }
    for k, f in figures.items():
        ratio = "" if k == "fp32" else f"  (int8/fp32: latency x{f['b1_ratio_int8_over_fp32']}, throughput x{f['b16_ratio_int8_over_fp32']})"
        print(f"{k:>15}: batch 1 p50 {f['b1_p50_ms']:.2f} ms, batch 16 {f['b16_images_per_s']:.1f} img/s{ratio}")
    for fmt, c in out["checks"].items():
        print(f"check {fmt}: {'passed' if c['passed'] else 'FAILED'}; subject macro-F1 int8 {c['macro_f1_int8']:.4f} vs fp32 "
              f"{c['macro_f1_fp32']:.4f}; max |dp| {c['max_abs_prob']:.4f}, mean |dp| {c['mean_abs_prob']:.5f}; {c['reasons']}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    path = write_result(out, "int8-classifier")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
