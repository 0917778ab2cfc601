"""GPU check (run by ``benchmarks/gpu_check.sh`` on a CUDA machine): inference and AMP training.

Measures, for the production architectures (EfficientNet-B4 at 256 and the ``full`` preset's
generator at 256, untrained weights):

- inference latency (p50) and throughput at several batch sizes with ONNX Runtime's CUDA
  provider when this onnxruntime build has it (otherwise the row says so and is skipped),
  and with PyTorch on CUDA (fp32, and bf16 autocast + channels_last) for comparison;
- training images/s of the ``full`` presets' steps under AMP (the trainers' autocast: bf16
  where supported): the classifier (B4, batch 32, Adam, all layers) and the generator (U-Net +
  ROI PatchGAN, batch 16, one D and one G update), fed from tensors on the GPU.

Prints a table and writes JSON to ``$OUT/gpu_check.json`` (or ``./gpu_check.json``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn


def _timed(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def _row(kind: str, model: str, backend: str, batch: int, times: list[float], **extra: Any) -> dict[str, Any]:
    p50 = float(np.median(times)) * 1000
    return {"kind": kind, "model": model, "backend": backend, "batch": batch, "p50_ms": round(p50, 3),
            "p95_ms": round(float(np.percentile(times, 95)) * 1000, 3),
            "images_per_s": round(batch * len(times) / float(np.sum(times)), 1), **extra}


def inference_rows(name: str, model: nn.Module, example: Callable[[int], torch.Tensor], batches: tuple[int, ...],
                   workdir: Path) -> list[dict[str, Any]]:
    """ORT CUDA EP (if available) and PyTorch CUDA inference of ``model`` at each batch size."""
    import onnxruntime as ort

    from alzprog.artifacts import export_onnx_model

    rows: list[dict[str, Any]] = []
    dev = torch.device("cuda")
    model = model.eval()
    onnx_path = workdir / f"{name}.onnx"
    export_onnx_model(model, example(1), onnx_path)
    providers = ort.get_available_providers()
    session = None
    if "CUDAExecutionProvider" in providers:
        session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    else:
        rows.append({"kind": "inference", "model": name, "backend": "onnxruntime CUDA",
                     "note": f"not measured: this onnxruntime {ort.__version__} has no CUDA provider ({providers})"})
    gpu_model = model.to(dev)
    cl_model = None
    for b in batches:
        x = example(b)
        if session is not None:
            io_name = session.get_inputs()[0].name
            feed = {io_name: x.numpy()}
            rows.append(_row("inference", name, "onnxruntime CUDA (host I/O)", b, _timed(lambda: session.run(None, feed), 5, 30)))
        xg = x.to(dev)
        with torch.inference_mode():
            rows.append(_row("inference", name, "torch CUDA fp32", b, _timed(lambda: gpu_model(xg), 5, 30)))
            if cl_model is None:
                cl_model = gpu_model.to(memory_format=torch.channels_last)
            xcl = xg.contiguous(memory_format=torch.channels_last)

            def bf16() -> Any:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return cl_model(xcl)

            rows.append(_row("inference", name, "torch CUDA bf16 channels_last", b, _timed(bf16, 5, 30)))
        gpu_model = gpu_model.to(memory_format=torch.contiguous_format)
    return rows


def training_rows(steps: int = 20) -> list[dict[str, Any]]:
    """AMP training images/s of the ``full`` presets (classifier and generator), data on the GPU."""
    from alzprog.bench import forward
    from alzprog.models.progression_generator import build_discriminator, build_generator
    from alzprog.training.common import autocast_context
    from alzprog.training.config import load_config
    from alzprog.training.progression import gan_step

    dev = torch.device("cuda")
    rows = []
    ccfg = load_config("classifier", "full")
    bs = int(ccfg["batch_size"])
    model = forward.build_classifier().to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    crit = nn.CrossEntropyLoss()
    x = torch.randn(bs, 3, 256, 256, device=dev)
    y = torch.randint(0, 4, (bs,), device=dev)

    def clf_step() -> None:
        with autocast_context(dev, True):
            loss = crit(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows.append(_row("training", "classifier full (B4 256)", "torch CUDA AMP", bs, _timed(clf_step, 3, steps)))
    del model, opt

    pcfg = load_config("progression", "full")
    bs = int(pcfg["batch_size"])
    gen = build_generator(forward.generator_config("default")).to(dev).train()
    disc = build_discriminator({**pcfg, "variant": "default"}).to(dev).train()
    betas = (float(pcfg["beta1"]), float(pcfg["beta2"]))
    og = torch.optim.Adam(gen.parameters(), lr=float(pcfg["lr"]), betas=betas)
    od = torch.optim.Adam(disc.parameters(), lr=float(pcfg["lr"]), betas=betas)
    xg = forward.generator_example(bs).to(dev)
    img, m = xg[:, :1], xg[:, 1:]
    tgt = img.flip(-1)

    scaler = torch.amp.GradScaler("cuda", enabled=not torch.cuda.is_bf16_supported())
    lam = (float(pcfg["lambda_adv"]), float(pcfg["lambda_l1"]), float(pcfg["lambda_identity"]))

    def step() -> None:
        # The trainer's own step under the trainer's AMP policy.
        gan_step(gen, disc, og, od, scaler, img, m, tgt, m, paired=True, roi=bool(pcfg["roi"]), lambda_adv=lam[0],
                 lambda_l1=lam[1], lambda_id=lam[2], device=dev, use_amp=True)

    rows.append(_row("training", "generator full (U-Net 256 + ROI PatchGAN)", "torch CUDA AMP", bs, _timed(step, 3, steps)))
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    from alzprog.bench import forward

    torch.backends.cudnn.benchmark = True
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    print(json.dumps(info))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += inference_rows("classifier (B4 256)", forward.build_classifier(), forward.classifier_example, (1, 8, 64), Path(tmp))
        rows += inference_rows("generator (full U-Net 256)", forward.build_progression_generator("default"),
                               forward.generator_example, (1, 8, 32), Path(tmp))
    rows += training_rows()
    print(f"{'kind':<10} {'model':<42} {'backend':<32} {'batch':>5} {'p50 ms':>9} {'img/s':>9}")
    for r in rows:
        if "p50_ms" in r:
            print(f"{r['kind']:<10} {r['model']:<42} {r['backend']:<32} {r['batch']:>5} {r['p50_ms']:>9.2f} {r['images_per_s']:>9.1f}")
        else:
            print(f"{r['kind']:<10} {r['model']:<42} {r['backend']:<32}   {r['note']}")
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
