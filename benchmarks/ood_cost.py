"""What the OOD score costs on /predict: the classifier runtime with and without the reference.

    .venv/bin/python -m benchmarks.ood_cost [--model-dir /tmp/h1-ood-bench/classifier/model] [--split /tmp/h1-ood-bench/split]

The same model twice: as trained (with ``ood_reference.json``: the ONNX graph gains the pooled
features as a second output) and a copy without the reference (the plain graph, no score).
Median ``predict`` latency over the test slices, two alternating rounds, one ORT thread.
Writes benchmarks/results/<stamp>-ood-cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import write_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/h1-ood-bench/classifier/model"))
    ap.add_argument("--split", type=Path, default=Path("/tmp/h1-ood-bench/split"))
    ap.add_argument("--slices", type=int, default=30)
    args = ap.parse_args()

    import pandas as pd

    from alzprog.decode import read_slice
    from alzprog.ood import REFERENCE_FILE
    from alzprog.preprocessing import canonicalize
    from services.classifier.model_holder import ClassifierRuntime
    from services.common.model_slot import ModelRef

    cfg = json.loads((args.model_dir / "config.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="ood-cost-"))
    plain_dir = tmp / "model"
    shutil.copytree(args.model_dir, plain_dir)
    (plain_dir / REFERENCE_FILE).unlink()
    runtimes = {
        "with_reference": ClassifierRuntime(ModelRef("bench", "1", args.model_dir, cfg), ["CPUExecutionProvider"], 1),
        "without_reference": ClassifierRuntime(ModelRef("bench", "1", plain_dir, cfg), ["CPUExecutionProvider"], 1),
    }
    images = [canonicalize(read_slice(p)).image for p in pd.read_csv(args.split / "test.csv")["path"][: args.slices]]
    rounds: dict[str, list[float]] = {k: [] for k in runtimes}
    for _ in range(2):
        for name in ("without_reference", "with_reference"):
            rt = runtimes[name]
            times = []
            for im in images:
                t0 = time.perf_counter()
                rt.predict(im)
                times.append((time.perf_counter() - t0) * 1000)
            rounds[name].append(statistics.median(times))
    shutil.rmtree(tmp, ignore_errors=True)
    out = {"stamp": time.strftime("%Y%m%d-%H%M", time.gmtime()), "predict_median_ms_per_round": rounds,
           "slices": len(images), "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    path = write_result(out, "ood-cost")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
