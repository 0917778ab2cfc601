"""How far bfloat16 moves a trained progression generator's output, on real slices and the probes.

The generator service serves a model in bf16 only when its bf16 output on the built-in probe
slices stays within ``alzprog.precision.BF16_TOLERANCE`` of fp32. This script measures the
same figures on real slices, to check that the probes stand for them and that the tolerance
is meaningful (docs/performance.md quotes its output):

    .venv/bin/python benchmarks/measure_bf16_fidelity.py ARTIFACT_DIR [ARTIFACT_DIR ...] \\
        --images ../shared/oasis-samples/Data

For every artifact (a folder with ``model.safetensors`` + ``config.json``, e.g. the ``model/``
folder of ``alzprog train progression --out``) it prints, over brain pixels, the mean, 99.9th
percentile and maximum of |bf16 - fp32| in grey levels, the share of pixels that moved at all,
the in-brain SSIM of bf16 against fp32, the mean |output - input| (how much the model changes
the slice, for scale) and both forward times on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from alzprog.artifacts import load_artifact
from alzprog.metrics.image import pixel_metrics
from alzprog.precision import compare_outputs, cpu_bf16_native, generator_runner, probe_slices
from alzprog.preprocessing import load_canonical


def median_ms(fn, image: np.ndarray, mask: np.ndarray, n: int = 10) -> float:  # noqa: ANN001
    for _ in range(3):
        fn(image, mask)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(image, mask)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000)


def measure(model: torch.nn.Module, slices: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    fp32, bf16 = generator_runner(model, False), generator_runner(model, True)
    ref = [fp32(i, m) for i, m in slices]
    low = [bf16(i, m) for i, m in slices]
    masks = [m for _, m in slices]
    fid = compare_outputs(ref, low, masks)
    moved = np.concatenate([(r != c)[m] for r, c, m in zip(ref, low, masks)])
    change = np.concatenate([np.abs(r.astype(np.int16) - i.astype(np.int16))[m] for r, (i, m) in zip(ref, slices)])
    return {
        **fid.as_dict(),
        "share_moved": round(float(moved.mean()), 4),
        "ssim_brain_bf16_vs_fp32": round(float(pixel_metrics(np.stack(low), np.stack(ref), np.stack(masks))["ssim_brain"].mean()), 5),
        "model_change_mean_abs": round(float(change.mean()), 3),
        "fp32_ms": round(median_ms(fp32, *slices[0]), 1),
        "bf16_ms": round(median_ms(bf16, *slices[0]), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--images", type=Path, required=True, help="folder searched recursively for .jpg/.png slices")
    args = ap.parse_args()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    real = [(c.image, c.mask) for c in (load_canonical(p) for p in files)]
    print(json.dumps({"cpu_bf16_native": cpu_bf16_native(), "real_slices": len(real), "threads": torch.get_num_threads()}))
    for path in args.artifacts:
        model = load_artifact(path).model.eval().to(memory_format=torch.channels_last)
        for name, slices in (("real", real), ("probes", probe_slices())):
            print(json.dumps({"artifact": str(path), "slices": name, **measure(model, slices)}))


if __name__ == "__main__":
    main()
