"""One short GPU check (training throughput, DDP, the loader): run once on a lent CUDA machine, prints JSON.

Runs on a bare accelerator node without MLflow (``PYTHONPATH=shared``):
  1. EfficientNet-B4 @256 (`full` preset architecture): AMP training images/s (model only)
     and inference images/s, plus batch-1 latency fp32 / AMP with PyTorch CUDA.
  2. ONNX Runtime CUDA provider latency for B4, when the provider is installed (else: why not).
  3. The `full` classifier preset trained for a short budget on a carried phantom with the
     project's real data pipeline (index, subject split, canonical cache, loader): images/s.
  4. The `full` progression generator (default variant, ROI): AMP training images/s on real
     phantom pairs, and batch-1 / batch-16 generation latency.

Usage (device): PYTHONPATH=shared python3 benchmarks/gpu_check.py --phantom .gpu/phantom --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch


def _timed(fn, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def step(results: dict, name: str, fn) -> None:
    t0 = time.time()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one failing check must not lose the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    results[name] = {"wall_s": round(time.time() - t0, 1), **(results[name] if isinstance(results[name], dict) else {"value": results[name]})}
    print(name, json.dumps(results[name], default=str)[:1500], flush=True)


def classifier_model_only() -> dict:
    from alzprog.training.classifier import measure_throughput

    cfg = {"kind": "stage_classifier", "arch": "efficientnet_b4", "image_size": 256, "num_classes": 4, "dropout": 0.4}
    return measure_throughput(cfg, device="cuda", batch_size=64, steps=20, warmup=5, amp=True, infer_batch_size=128)


def classifier_latency() -> dict:
    from alzprog.models.stage_classifier import build_stage_classifier

    cfg = {"kind": "stage_classifier", "arch": "efficientnet_b4", "image_size": 256, "num_classes": 4, "dropout": 0.4}
    model = build_stage_classifier(cfg).cuda().eval()
    x1 = torch.randn(1, 3, 256, 256, device="cuda")
    res = {}
    with torch.no_grad():
        res["b1_fp32_ms_p50"] = statistics.median(_timed(lambda: model(x1), 50))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res["b1_amp_ms_p50"] = statistics.median(_timed(lambda: model(x1), 50))
    return res


def ort_cuda() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"available": False, "why": f"onnxruntime not importable: {exc}"}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"available": False, "providers": providers,
                "why": "this image's onnxruntime is the CPU build (no CUDAExecutionProvider); onnxruntime-gpu is too large to carry (64 MiB limit)"}
    import io

    from alzprog.models.stage_classifier import build_stage_classifier

    cfg = {"kind": "stage_classifier", "arch": "efficientnet_b4", "image_size": 256, "num_classes": 4}
    model = build_stage_classifier(cfg).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 256, 256), buf, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CUDAExecutionProvider"])
    x1 = np.random.randn(1, 3, 256, 256).astype(np.float32)
    x8 = np.random.randn(8, 3, 256, 256).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"x": x1})
    t = []
    for _ in range(50):
        t0 = time.perf_counter()
        sess.run(None, {"x": x1})
        t.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(20):
        sess.run(None, {"x": x8})
    return {"available": True, "b1_ms_p50": statistics.median(t), "b8_images_per_s": 160 / (time.perf_counter() - t0)}


def classifier_full_preset(phantom: Path, work: Path) -> dict:
    from alzprog.data.manifest import build_manifest
    from alzprog.data.split import split_manifest
    from alzprog.training.classifier import train_classifier
    from alzprog.training.config import load_config

    manifest = work / "manifest.csv"
    build_manifest(phantom, manifest)
    split = work / "split"
    split_manifest(manifest, split, seed=1, test_fraction=0.2, val_fraction=0.2)
    cfg = load_config("classifier", "full", overrides={
        "pretrained": "none", "phase1.epochs": 2, "phase2.epochs": 4, "num_workers": 8, "device": "cuda",
    })
    t0 = time.time()
    res = train_classifier(cfg, split, out_dir=work / "clf", register=False, use_mlflow=False, progress=False)
    wall = time.time() - t0
    keep = ("epoch", "phase", "train_loss", "val_macro_f1", "train_images_per_second", "epoch_seconds")
    rates = {}
    for f in (work / "clf").rglob("*.json"):
        try:
            data = json.loads(f.read_text())
        except Exception:  # noqa: BLE001
            continue
        if isinstance(data, dict):
            rates.update({f"{f.name}:{k}": v for k, v in data.items() if "per_second" in k or "seconds" in k})
    return {"wall_s_training": wall, "rates": rates, "best_val_macro_f1": res.best_val_macro_f1,
            "history": [{k: h.get(k) for k in keep if k in h} for h in res.history],
            "note": "pretrained none (no ImageNet weights on the node); a tiny 40-subject phantom: images/s, not accuracy, is the point"}


def generator_full_preset(phantom: Path) -> dict:
    import pandas as pd

    from alzprog.preprocessing import load_canonical
    from alzprog.training.config import load_config
    from alzprog.training.progression import throughput_run

    lon = pd.read_csv(phantom / "longitudinal" / "longitudinal.csv")
    src = lon[lon.stage_index == 0].sort_values(["subject", "slice"])
    tgt = lon[lon.stage_index == 1].sort_values(["subject", "slice"])
    s_img, s_mask, t_img = [], [], []
    for a, b in zip(src.path, tgt.path):
        cs = load_canonical(phantom / "longitudinal" / a)
        ct = load_canonical(phantom / "longitudinal" / b)
        s_img.append(cs.image), s_mask.append(cs.mask), t_img.append(ct.image)
    arrays = {"source": np.stack(s_img), "target": np.stack(t_img), "source_mask": np.stack(s_mask)}
    cfg = load_config("progression", "full", overrides={"device": "cuda"})
    cfg["transition"] = "nd-vmd"
    out = throughput_run(arrays, cfg, seconds=45, device="cuda")
    out["n_pairs"] = len(s_img)

    from alzprog.models.progression_generator import build_generator
    from alzprog.training.progression import _model_config

    gen = build_generator(_model_config(cfg, "nd-vmd")).cuda().eval()
    for bs in (1, 16):
        x = torch.randn(bs, 1, 256, 256, device="cuda").clamp(-1, 1)
        m = torch.ones(bs, 1, 256, 256, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            ms = statistics.median(_timed(lambda: gen(x, m), 30))
        out[f"generate_b{bs}_amp_ms_p50"] = ms
        out[f"generate_b{bs}_images_per_s"] = bs * 1000 / ms
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phantom", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu_check")
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                     "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(json.dumps(results), flush=True)
    if not torch.cuda.is_available():
        print("no CUDA device", flush=True)
        return 1
    torch.backends.cudnn.benchmark = True
    step(results, "classifier_b4_model_only", classifier_model_only)
    step(results, "classifier_b4_latency_torch", classifier_latency)
    step(results, "generator_full_preset", lambda: generator_full_preset(args.phantom))
    step(results, "classifier_full_preset_pipeline", lambda: classifier_full_preset(args.phantom, work))
    step(results, "ort_cuda_b4", ort_cuda)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
