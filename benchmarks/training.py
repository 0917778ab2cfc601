"""Comparison 5: training images/s with the data pipeline vs the same loop fed from memory.

Both loops are the trainers' steps (``alzprog.training.classifier.train_classifier`` phase 2
and ``alzprog.training.progression.train_transition``), on the production architectures:

- classifier: EfficientNet-B4 at 256, every layer trainable, Adam, cross-entropy, the batched
  augmentation ``augment_batch`` after collation. *Pipeline*: ``StageSliceDataset`` over the
  persisted ``CanonicalCache`` through a ``DataLoader`` with the subject-balanced sampler and
  the ``full`` preset's workers (capped to the CPUs). *In memory*: the same inputs prepared
  once as one tensor and indexed per step.
- generator: the ``full`` preset's U-Net with its ROI conditional PatchGAN and the trainer's
  own ``gan_step`` (one discriminator and one generator update: adversarial + L1 + identity).
  *Pipeline*: sample indices, ``to_generator_tensors`` from the canonical uint8 arrays (what
  the trainer does every step). *In memory*: the tensors converted once and indexed.

The ratio (pipeline images/s / in-memory images/s) says whether feeding the model is the
bottleneck. On CPU the batch is smaller than the preset's (whose batch sizes are for a GPU);
the per-image cost of the data pipeline does not depend on it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from benchmarks.harness import Measurement, load_average, summarize, torch_threads

log = logging.getLogger(__name__)


def dataset_frame(workdir: Path) -> pd.DataFrame:
    """Rows ``path, stage, stage_index, subject`` of a small dataset for the timing runs.

    A small synthetic phantom (``alzprog data synth``) when the module is available, else the
    real OASIS samples beside the checkout.
    """
    try:
        from alzprog.data.manifest import build_manifest
        from alzprog.data.phantom import synthesize

        root = workdir / "phantom"
        synthesize(root, n_subjects=8, seed=3, mix="balanced", slices_per_subject=4, progress=False)
        manifest = workdir / "manifest.csv"
        build_manifest(root, manifest)
        frame = pd.read_csv(manifest)
        if len(frame):
            return frame
    except Exception as exc:  # noqa: BLE001 - fall back to the real samples, say so
        log.warning("phantom unavailable (%s); timing on the OASIS samples", exc)
    from benchmarks.stack import repo_root
    from alzprog.constants import STAGES

    data = repo_root().parent / "shared" / "oasis-samples" / "Data"
    rows = []
    for i, stage in enumerate(STAGES):
        for p in sorted((data / stage).glob("*.jpg")):
            rows.append({"path": str(p), "stage": stage, "stage_index": i, "subject": p.name.split("_MR")[0]})
    if not rows:
        raise FileNotFoundError("no phantom module and no OASIS samples to time training on")
    return pd.DataFrame(rows)


def _time_interleaved(feeds: dict[str, tuple[Iterator[Any], Callable[[Any], None]]], n_steps: int, warmup: int,
                      batch_size: int) -> dict[str, dict[str, Any]]:
    """Time the steps of every feed, alternating feeds step by step.

    Each timed step includes fetching its batch. Alternating (A, B, A, B, ...) instead of
    running all of A then all of B means a change of machine load during the run hits both
    feeds alike, so their ratio stays meaningful on a shared machine.
    """
    for _ in range(warmup):
        for batches, step in feeds.values():
            step(next(batches))
    load_before = load_average()
    times: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(n_steps):
        for name, (batches, step) in feeds.items():
            t0 = time.perf_counter()
            step(next(batches))
            times[name].append(time.perf_counter() - t0)
    load = (load_before + load_average()) / 2.0
    out: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        st: dict[str, Any] = summarize(ts)
        st["n"] = len(ts)
        st["throughput"] = len(ts) * batch_size / float(np.sum(ts))
        st["load1"] = load
        out[name] = st
    return out


# ------------------------------------------------------------------------------- classifier


def classifier_rates(frame: pd.DataFrame, *, batch_size: int, n_steps: int, warmup: int,
                     num_workers: int, tiny: bool = False) -> dict[str, dict[str, Any]]:
    """Images/s of the classifier training step fed by the pipeline and from memory."""
    from torch.utils.data import DataLoader

    from benchmarks import forward
    from alzprog.data.dataset import CanonicalCache, StageSliceDataset, augment_batch, make_subject_balanced_sampler
    from alzprog.preprocessing import classifier_input

    cfg = forward.classifier_config(tiny)
    size, mean, std = int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
    cache = CanonicalCache.build(list(frame["path"].astype(str)), size=256, progress=False)
    ds = StageSliceDataset(frame, cache, size, True, mean, std, augment_in_dataset=False)
    torch.manual_seed(0)
    model = forward.build_classifier(tiny).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        x = augment_batch(x, mean, std, generator=gen, max_rotation=15.0, flip_p=0.5, brightness=0.1, contrast=0.1)
        loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    total = (warmup + n_steps) * batch_size
    sampler = make_subject_balanced_sampler(frame, num_samples=total, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        persistent_workers=False)

    def pipeline_batches() -> Iterator[Any]:
        for x, y, _ in loader:
            yield x, y

    # The same inputs, prepared once; a step only indexes them.
    x_all = torch.stack([classifier_input(np.asarray(cache.images[r]), size, mean, std) for r in ds.rows])
    y_all = torch.from_numpy(np.array(ds.labels, dtype=np.int64))
    rng = np.random.default_rng(3)

    def memory_batches() -> Iterator[Any]:
        while True:
            idx = torch.as_tensor(rng.integers(0, len(x_all), size=batch_size))
            yield x_all[idx], y_all[idx]

    return _time_interleaved({"pipeline": (pipeline_batches(), step), "in memory": (memory_batches(), step)},
                             n_steps, warmup, batch_size)


# ------------------------------------------------------------------------------- generator


def generator_rates(frame: pd.DataFrame, *, batch_size: int, n_steps: int, warmup: int,
                    tiny: bool = False) -> dict[str, dict[str, Any]]:
    """Images/s of the paired GAN step fed by ``to_generator_tensors`` per step vs from memory."""
    from benchmarks import forward
    from alzprog.data.dataset import CanonicalCache
    from alzprog.models.progression_generator import build_discriminator, build_generator
    from alzprog.training.config import load_config
    from alzprog.training.progression import gan_step, to_generator_tensors

    preset = load_config("progression", "full")
    cache = CanonicalCache.build(list(frame["path"].astype(str)), size=256, progress=False)
    images, masks = np.asarray(cache.images), np.asarray(cache.masks)
    # Pairs for timing: each slice with another one (the cost does not depend on which).
    n = len(images)
    partner = np.roll(np.arange(n), 1)
    torch.manual_seed(0)
    gen = build_generator(forward.generator_config("default", tiny)).train()
    disc = build_discriminator({**preset, "variant": "default", **({"disc_channels": 8} if tiny else {})}).train()
    betas = (float(preset["beta1"]), float(preset["beta2"]))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(preset["lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(preset["lr"]), betas=betas)
    lam_adv, lam_l1, lam_id = float(preset["lambda_adv"]), float(preset["lambda_l1"]), float(preset["lambda_identity"])

    scaler = torch.amp.GradScaler("cuda", enabled=False)  # no AMP on CPU, as in the trainer
    cpu = torch.device("cpu")

    def step(batch: tuple[torch.Tensor, ...]) -> None:
        # The trainer's own step: one discriminator update, then one generator update.
        x, m, y, ym = batch
        gan_step(gen, disc, opt_g, opt_d, scaler, x, m, y, m, paired=True, roi=bool(preset.get("roi", True)),
                 lambda_adv=lam_adv, lambda_l1=lam_l1, lambda_id=lam_id, device=cpu, use_amp=False)

    rng = np.random.default_rng(4)

    def pipeline_batches() -> Iterator[Any]:
        while True:
            idx = rng.integers(0, n, size=batch_size)
            x, m = to_generator_tensors(images[idx], masks[idx])
            y, ym = to_generator_tensors(images[partner[idx]], masks[partner[idx]])
            yield x, m, y, ym

    x_all, m_all = to_generator_tensors(images, masks)

    def memory_batches() -> Iterator[Any]:
        while True:
            idx = torch.as_tensor(rng.integers(0, n, size=batch_size))
            pidx = torch.as_tensor(partner)[idx]
            yield x_all[idx], m_all[idx], x_all[pidx], m_all[pidx]

    return _time_interleaved({"pipeline": (pipeline_batches(), step), "in memory": (memory_batches(), step)},
                             n_steps, warmup, batch_size)


def run(*, quick: bool = False, workdir: Path | None = None) -> tuple[list[Measurement], dict[str, float]]:
    """Comparison 5. Returns rows and ``{"training_pipeline_vs_inmemory": ...}`` (the lower of the
    classifier's and the generator's ratios: the target must hold for both loops)."""
    from alzprog.training.config import load_config

    torch.set_num_threads(torch_threads())
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="alzprog-bench-train-")
        workdir = Path(tmp.name)
    old_home = os.environ.get("ALZPROG_HOME")
    os.environ["ALZPROG_HOME"] = str(workdir / "home")  # the canonical cache goes to the bench folder
    rows: list[Measurement] = []
    ratios = []
    try:
        frame = dataset_frame(workdir)
        try:
            preset_workers = int(load_config("classifier", "full").get("num_workers", 0))
        except FileNotFoundError:
            preset_workers = 0
        workers = min(preset_workers, torch_threads())
        clf_batch, gen_batch = (2, 1) if quick else (8, 4)
        n_steps, warmup = (2, 1) if quick else (4, 1)
        loops = [
            ("classifier", clf_batch, lambda: classifier_rates(frame, batch_size=clf_batch, n_steps=n_steps,
                                                               warmup=warmup, num_workers=workers, tiny=quick),
             f"{'tiny smoke-test model' if quick else 'EfficientNet-B4 256'}, Adam, batch {clf_batch}, "
             f"DataLoader workers {workers}"),
            ("generator", gen_batch, lambda: generator_rates(frame, batch_size=gen_batch, n_steps=n_steps, warmup=warmup,
                                                             tiny=quick),
             f"{'tiny smoke-test U-Net' if quick else 'full-preset U-Net + ROI PatchGAN 256'}, batch {gen_batch}"),
        ]
        for name, batch, fn, note in loops:
            rates = fn()
            for variant in ("in memory", "pipeline"):
                st = rates[variant]
                rows.append(Measurement("training", f"{name} train step", variant, unit="image", batch=batch,
                                        n=st["n"], p50_ms=st["p50_ms"], p95_ms=st["p95_ms"], p99_ms=st["p99_ms"],
                                        mean_ms=st["mean_ms"], throughput=st["throughput"], load1=st["load1"],
                                        baseline="in memory", note=note + f"; {len(frame)} images"))
                log.info("training %s %s: %.2f images/s", name, variant, st["throughput"])
            ratios.append(rates["pipeline"]["throughput"] / rates["in memory"]["throughput"])
    finally:
        if old_home is None:
            os.environ.pop("ALZPROG_HOME", None)
        else:
            os.environ["ALZPROG_HOME"] = old_home
        if tmp is not None:
            tmp.cleanup()
    return rows, {"training_pipeline_vs_inmemory": min(ratios) if ratios else float("nan")}
