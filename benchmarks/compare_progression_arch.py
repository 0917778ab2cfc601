"""Score progression generators trained without registration (``--no-register --out DIR``) side by side.

Used for the lite vs unet head-to-head in docs/progression.md.

Quality: for each ``LABEL=DIR`` (DIR is the ``--out`` of ``alzprog train progression``, holding
``<transition>/model``) it runs the library's ``evaluate_progression`` on the split's test pairs
(the same pairs for every label, identity baseline beside), and reads the steps from the
artifact's config and the images/s the CLI printed (``DIR/../LABEL-<transition>.jsonl`` if saved).
It also splits each output's error by spatial scale (``scale_split``): the in-brain MSE of
Gaussian-blurred (sigma 2 px) output against blurred truth (the coarse, anatomical part), the
correlation of the blurred predicted change with the blurred true change, and the fine-scale
energy (output minus its blur) beside the truth's: a generator that smooths away the input's
scanner noise gains SSIM / MSE against a noisy truth without predicting the disease better.

Cost: for each ``--arch ARCH:BASE:DEPTH`` it counts the multiply-accumulates of one 256 x 256
frame (conv layers, by hooks), times eager CPU inference at batch 1 (channels_last) and times
training steps through the trainer's own ``gan_step`` (generator + quick-preset PatchGAN, batch 8
of 128 x 128 crops). The architectures are timed in alternating rounds, so a change in the load
of a shared machine hits them alike; the median over rounds is reported.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compare_progression_arch.py --split SPLIT --max-pairs 48 \
        --out OUT lite=RUNS/lite60 unet=RUNS/unet60 --arch lite:16:4 --arch unet:16:3
    # cost only (no runs):
    OMP_WAIT_POLICY=ACTIVE .venv/bin/python benchmarks/compare_progression_arch.py --split SPLIT --out OUT --arch lite:16:4

Writes ``OUT/comparison.json`` and ``OUT/comparison.md``; one ``OUT/<label>/report.json`` each.
Nothing is registered or logged to MLflow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage as ndi

from alzprog.artifacts import load_artifact
from alzprog.constants import TRANSITIONS
from alzprog.data.split import load_split
from alzprog.evaluation.progression import evaluate_progression, subsample
from alzprog.models.progression_generator import build_discriminator, build_generator, generator_config, init_dcgan_weights
from alzprog.training.config import load_config
from alzprog.training.progression import find_pairs, gan_step, generate, split_pair_cache

METRICS = ("ssim_brain", "mse_brain", "psnr_brain")
BLUR_SIGMA = 2.0  # pixels; the phantom's noise is pixel-scale, its disease changes are larger


def _blur(images: np.ndarray) -> np.ndarray:
    return np.stack([ndi.gaussian_filter(np.asarray(i, dtype=np.float64) / 255.0, BLUR_SIGMA) for i in images])


def scale_split(source: np.ndarray, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Coarse in-brain MSE, coarse change correlation and fine-scale energy of ``pred`` (uint8 frames, [0, 1] units)."""
    s, p, t = _blur(source), _blur(pred), _blur(target)
    change_p, change_t = (p - s)[mask], (t - s)[mask]
    corr = float(np.corrcoef(change_p, change_t)[0, 1]) if change_p.std() > 0 else float("nan")
    fine = float(((np.asarray(pred, dtype=np.float64) / 255.0 - p)[mask] ** 2).mean())
    return {"mse_brain_coarse": float(((p - t)[mask] ** 2).mean()), "change_corr_coarse": corr, "fine_energy": fine}


def held_out_pairs(split: Path, slug: str, max_pairs: int) -> tuple[np.ndarray, ...]:
    """The same test pairs as ``evaluate_progression`` (source, source mask, target, target mask)."""
    test = load_split(split, sides=("test",))["test"]
    pairs = subsample(find_pairs(test, slug, None), max_pairs)
    cache = split_pair_cache({"test": test}, None, progress=False)
    si, ti = cache.index_of(list(pairs["source_path"])), cache.index_of(list(pairs["target_path"]))
    return (np.asarray(cache.images[si]), np.asarray(cache.masks[si]), np.asarray(cache.images[ti]), np.asarray(cache.masks[ti]))


def conv_macs(model: nn.Module, size: int = 256) -> int:
    """Multiply-accumulates of every Conv2d / ConvTranspose2d for one (1, 2, size, size) input."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        if isinstance(mod, nn.ConvTranspose2d):
            # every input pixel is scattered through the kernel into out_channels maps
            total += inp[0].numel() // inp[0].shape[0] * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        else:
            total += out.numel() // out.shape[0] * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(1, 2, size, size))
    for h in handles:
        h.remove()
    return total


def latency_ms(model: nn.Module, size: int = 256, repeats: int = 10) -> float:
    """Median eager forward time, batch 1, channels_last, no grad (after two warm-up calls)."""
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.zeros(1, 2, size, size).uniform_(-1, 1).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


class StepBench:
    """Training steps of one architecture through the trainer's ``gan_step`` (quick preset's D and optimiser)."""

    def __init__(self, arch: str, base: int, depth: int, batch: int = 8, crop: int = 128) -> None:
        cfg = load_config("progression", "quick")
        model_cfg = generator_config("default", arch=arch, base_channels=base, depth=depth, roi=True,
                                     disc_channels=int(cfg["disc_channels"]), norm=str(cfg["norm"]))
        torch.manual_seed(0)
        self.gen, self.disc = build_generator(model_cfg), build_discriminator(model_cfg)
        self.disc.apply(init_dcgan_weights)
        betas = (float(cfg["beta1"]), float(cfg["beta2"]))
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=float(cfg["lr"]), betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=float(cfg["lr"]), betas=betas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.lambda_l1 = float(cfg["lambda_l1"])
        # Convolution cost does not depend on the pixel values: random crops with a brain-like mask.
        self.x = torch.zeros(batch, 1, crop, crop).uniform_(-1, 1)
        self.y = (self.x + 0.05 * torch.randn_like(self.x)).clamp(-1, 1)
        self.m = (torch.rand(batch, 1, crop, crop) > 0.3).float()
        self.batch = batch

    def images_per_second(self, steps: int) -> float:
        self.gen.train()
        self.disc.train()
        t = time.perf_counter()
        for _ in range(steps):
            gan_step(self.gen, self.disc, self.opt_g, self.opt_d, self.scaler, self.x, self.m, self.y, self.m,
                     paired=True, roi=True, lambda_adv=1.0, lambda_l1=self.lambda_l1, lambda_id=0.0,
                     device=torch.device("cpu"), use_amp=False)
        return steps * self.batch / (time.perf_counter() - t)


def arch_costs(specs: list[str], rounds: int, steps: int, repeats: int) -> dict[str, dict[str, Any]]:
    """GMAC, parameters, inference latency and training images/s per ``ARCH:BASE:DEPTH``, timed in alternating rounds."""
    benches, models, out = {}, {}, {}
    for spec in specs:
        arch, base, depth = spec.split(":")
        models[spec] = build_generator(generator_config("default", arch=arch, base_channels=int(base), depth=int(depth))).eval()
        benches[spec] = StepBench(arch, int(base), int(depth))
        benches[spec].images_per_second(1)  # warm-up
        out[spec] = {"gmac_256": conv_macs(models[spec]) / 1e9, "params": sum(p.numel() for p in models[spec].parameters()),
                     "latency_ms": [], "train_images_per_second": []}
    for _ in range(rounds):
        for spec in specs:
            out[spec]["latency_ms"].append(latency_ms(models[spec], repeats=repeats))
            out[spec]["train_images_per_second"].append(benches[spec].images_per_second(steps))
    for spec in specs:
        out[spec]["latency_ms_median"] = statistics.median(out[spec]["latency_ms"])
        out[spec]["train_images_per_second_median"] = statistics.median(out[spec]["train_images_per_second"])
        out[spec]["threads"] = torch.get_num_threads()
    return out


def training_record(run_dir: Path, label: str, slug: str) -> dict[str, Any]:
    """Steps from the artifact config; images/s and seconds from the CLI's JSON line if saved."""
    cfg = json.loads((run_dir / slug / "model" / "config.json").read_text())
    rec: dict[str, Any] = {"steps": cfg.get("training", {}).get("steps"), "arch": cfg.get("arch"),
                           "base_channels": cfg.get("base_channels"), "depth": cfg.get("depth")}
    line = run_dir.parent / f"{label}-{slug}.jsonl"
    if line.is_file() and line.read_text().strip():
        cli = json.loads(line.read_text().strip().splitlines()[-1])
        rec.update(images_per_second=cli.get("images_per_second"), seconds=cli.get("seconds"), val=cli.get("val"))
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="LABEL=DIR, DIR the --out of alzprog train progression --no-register")
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-pairs", type=int, default=48)
    ap.add_argument("--arch", action="append", default=None, help="ARCH:BASE:DEPTH to cost (repeatable; default lite:16:4 and unet:16:3)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per architecture")
    ap.add_argument("--steps", type=int, default=5, help="training steps per round")
    ap.add_argument("--repeats", type=int, default=10, help="timed forwards per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the latency (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    summary: dict[str, Any] = {"split": str(args.split.resolve()), "max_pairs": args.max_pairs, "blur_sigma": BLUR_SIGMA,
                               "runs": {}, "identity_scale_split": {}}
    pairs: dict[str, tuple[np.ndarray, ...]] = {}
    for spec in args.runs:
        label, _, d = spec.partition("=")
        run_dir = Path(d)
        slugs = [s for s, _, _ in TRANSITIONS if (run_dir / s / "model" / "config.json").is_file()]
        if not slugs:
            raise SystemExit(f"{run_dir}: no <transition>/model artifact")
        models = {s: load_artifact(run_dir / s / "model", device="cpu").model for s in slugs}
        report = evaluate_progression(args.split, args.out / label, device="cpu", max_pairs=args.max_pairs,
                                      log_mlflow=False, generators={"model": models})
        entry: dict[str, Any] = {"transitions": {}}
        for s in [*slugs, "chain"]:
            r = report.get(s, {})
            if "model" not in r or r["model"].get("ssim_brain") is None:
                continue
            entry["transitions"][s] = {
                "n": r.get("n_pairs", r.get("n_chains")),
                "model": {k: r["model"][k] for k in METRICS},
                "identity": {k: r["identity"][k] for k in METRICS},
                "csf_growth_share": r.get("ventricle_monotonic_share"),
                **({"training": training_record(run_dir, label, s)} if s != "chain" else {}),
            }
            if s != "chain":
                if s not in pairs:
                    pairs[s] = held_out_pairs(args.split, s, args.max_pairs)
                    src, sm, tgt, tm = pairs[s]
                    summary["identity_scale_split"][s] = scale_split(src, src, tgt, sm | tm) | {"truth_fine_energy": scale_split(src, tgt, tgt, sm | tm)["fine_energy"]}
                src, sm, tgt, tm = pairs[s]
                entry["transitions"][s]["scale_split"] = scale_split(src, generate(models[s], src, sm, torch.device("cpu")), tgt, sm | tm)
        summary["runs"][label] = entry

    summary["arch_costs"] = arch_costs(args.arch or ["lite:16:4", "unet:16:3"], args.rounds, args.steps, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(summary, indent=2))
    md = ["| transition | arch | steps | train images/s | pairs | SSIM brain: model | identity | MSE brain: model | identity "
          "| PSNR brain: model | identity | CSF grows |", "|" + "---|" * 12]
    order = [s for s, _, _ in TRANSITIONS] + ["chain"]
    for s in order:
        for label, e in summary["runs"].items():
            t = e["transitions"].get(s)
            if not t:
                continue
            tr = t.get("training", {})
            ips = f"{tr['images_per_second']:.2f}" if tr.get("images_per_second") else ""
            csf = "" if t["csf_growth_share"] is None else f"{t['csf_growth_share']:.3f}"
            md.append(f"| {s} | {label} | {tr.get('steps', '')} | {ips} | {t['n']} | {t['model']['ssim_brain']:.4f} | "
                      f"{t['identity']['ssim_brain']:.4f} | {t['model']['mse_brain']:.5f} | {t['identity']['mse_brain']:.5f} | "
                      f"{t['model']['psnr_brain']:.2f} | {t['identity']['psnr_brain']:.2f} | "
                      f"{csf} |")
    md += ["", f"Error by scale (Gaussian blur sigma {BLUR_SIGMA:g} px; in-brain; [0, 1] units):", "",
           "| transition | arch | coarse MSE brain: model | identity | coarse change corr. | fine energy: model | input | truth |",
           "|" + "---|" * 8]
    for s in order[:-1]:
        ident = summary["identity_scale_split"].get(s)
        for label, e in summary["runs"].items():
            t = e["transitions"].get(s)
            if not t or ident is None:
                continue
            c = t["scale_split"]
            md.append(f"| {s} | {label} | {c['mse_brain_coarse']:.6f} | {ident['mse_brain_coarse']:.6f} | {c['change_corr_coarse']:.3f} | "
                      f"{c['fine_energy']:.6f} | {ident['fine_energy']:.6f} | {ident['truth_fine_energy']:.6f} |")
    md += ["", "| arch:base:depth | GMAC per 256 x 256 frame | parameters | inference ms, batch 1, 256 x 256 | "
           "training images/s (batch 8 of 128 x 128 crops, G + D) | threads |", "|---|---|---|---|---|---|"]
    for spec, c in summary["arch_costs"].items():
        md.append(f"| {spec} | {c['gmac_256']:.2f} | {c['params']:,} | {c['latency_ms_median']:.1f} | "
                  f"{c['train_images_per_second_median']:.1f} | {c['threads']} |")
    (args.out / "comparison.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
