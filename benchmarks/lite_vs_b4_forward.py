"""Forward cost per image of the stage classifier archs on one CPU thread: Lite0/1/2 at 224, B4 at 256.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lite_vs_b4_forward.py [--rounds 3] [--no-onnx]

Every arch is timed in eager PyTorch and, unless ``--no-onnx``, in ONNX Runtime (what the
classifier service runs), at batch 1 and 32, with untrained weights (the cost of a forward
does not depend on them). Rounds alternate between the archs so that a drift of the machine's
speed falls on all of them; the median per-image time over rounds is reported, with the
1-minute load average. Writes ``benchmarks/results/<YYYYMMDD-HHMM>-lite-vs-b4.csv`` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from alzprog.models.stage_classifier import build_stage_classifier, classifier_config

ARCHS = (("efficientnet_lite0", 224), ("efficientnet_lite1", 224), ("efficientnet_lite2", 224), ("efficientnet_b4", 256))
BATCHES = (1, 32)
RESULTS = Path(__file__).resolve().parent / "results"


def _ort_runner(model: torch.nn.Module, size: int, workdir: Path):  # noqa: ANN202
    import onnxruntime as ort

    from alzprog.artifacts import export_onnx_model

    path = workdir / f"{id(model)}.onnx"
    export_onnx_model(model, torch.zeros(1, 3, size, size), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def _seconds(fn, x: torch.Tensor, calls: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    """Time every (arch, backend, batch) and write the CSV."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, size in ARCHS:
            model = build_stage_classifier(classifier_config(arch, size, pretrained="none")).eval()
            params = sum(p.numel() for p in model.parameters())

            def eager(x: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
                with torch.no_grad():
                    return model(x)

            runners[(arch, "torch")] = (size, params, eager)
            if not args.no_onnx:
                runners[(arch, "onnxruntime")] = (size, params, _ort_runner(model, size, Path(tmp)))
        times: dict[tuple[str, str, int], list[float]] = {}
        for _ in range(args.rounds):
            for batch in BATCHES:
                for (arch, backend), (size, _, fn) in runners.items():
                    x = torch.randn(batch, 3, size, size)
                    fn(x)  # warm-up at this shape
                    calls = 5 if batch == 1 else 1
                    times.setdefault((arch, backend, batch), []).append(_seconds(fn, x, calls) / batch)
    load1 = os.getloadavg()[0]
    rows = []
    for (arch, backend, batch), ts in times.items():
        size, params, _ = runners[(arch, backend)]
        rows.append({
            "arch": arch, "image_size": size, "params_m": round(params / 1e6, 2), "backend": backend,
            "batch": batch, "threads": 1, "ms_per_image_median": round(1000 * statistics.median(ts), 1),
            "ms_per_image_min": round(1000 * min(ts), 1), "rounds": len(ts), "load1": round(load1, 2),
        })
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = RESULTS / f"{stamp}-lite-vs-b4.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| arch | size | params (M) | backend | batch | ms/image median (min) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['image_size']} | {r['params_m']} | {r['backend']} | {r['batch']} | "
              f"{r['ms_per_image_median']} ({r['ms_per_image_min']}) |")
    print(f"\n1 thread, {args.rounds} rounds, load1 {load1:.2f}; written to {out}")


if __name__ == "__main__":
    main()
