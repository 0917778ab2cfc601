"""Training of the three stage-transition generators (``alzprog train progression``).

One generator per transition (``nd-vmd``, ``vmd-md``, ``md-mod``), each its own MLflow run in
experiment ``Alzheimers_Progression`` and its own registered model
``alzheimer-progression-<transition>``.

Pairs: a training pair is (subject, slice) at stage k -> the *same subject and slice* at stage
k+1. They come from the phantom's ``longitudinal/`` table next to the split's images (found with
``find_phantom_root``) or from a ``--pairs`` CSV (columns ``source_path, target_path, subject,
transition``), restricted to the subjects of one split side, so train and test never mix. When a
transition has no pairs (a cross-sectional set like OASIS-1), it trains *unpaired*: source-stage
and target-stage images of different people are never matched; the generator is pushed towards
the target stage by the adversary and kept on the input's anatomy by an identity term.

Losses (default variant): adversarial (conditional PatchGAN, ROI-weighted with ``roi``) + L1 to
the true future inside the source brain mask. ``dcgan`` reproduces the published baseline:
adversarial BCE only, unconditional discriminator. Both use Adam 2e-4, betas (0.5, 0.999).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from alzprog.constants import (
    CHAMPION_ALIAS,
    DCGAN_ALIAS,
    PROGRESSION_EXPERIMENT,
    STAGES,
    TRANSITIONS,
    progression_model_name,
)

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("source_path", "target_path", "subject", "transition")
PROMOTION_METRIC = "val_ssim_brain"
TRANSITION_SLUGS = tuple(t[0] for t in TRANSITIONS)


def transition_stages(transition: str) -> tuple[int, int]:
    """(source, target) stage indices of a transition slug."""
    for slug, src, tgt in TRANSITIONS:
        if slug == transition:
            return src, tgt
    raise ValueError(f"unknown transition {transition!r}; expected one of {', '.join(TRANSITION_SLUGS)} or 'all'")


def expand_transitions(transition: str) -> list[str]:
    """``all`` -> the three slugs in chain order; a single slug -> itself (validated)."""
    if transition == "all":
        return list(TRANSITION_SLUGS)
    transition_stages(transition)
    return [transition]


# --------------------------------------------------------------------------- pairs


def _longitudinal_table(image_paths: Sequence[str]) -> tuple[Path, pd.DataFrame] | None:
    """The phantom's ``longitudinal.csv`` next to the images (absolute paths), or None."""
    from alzprog.data.phantom import find_phantom_root

    try:
        root = find_phantom_root([Path(p) for p in image_paths])
    except (FileNotFoundError, ValueError, LookupError):
        return None
    if root is None:
        return None
    table_path = Path(root) / "longitudinal" / "longitudinal.csv"
    if not table_path.is_file():
        return None
    table = pd.read_csv(table_path, dtype={"subject": str})
    table["path"] = [str((table_path.parent / p).resolve()) for p in table["path"]]
    return Path(root), table


def find_pairs(frame: pd.DataFrame, transition: str, pairs_csv: Path | str | None = None) -> pd.DataFrame:
    """Same-subject pairs of one transition for the subjects of ``frame`` (one split side).

    Returns columns ``source_path, target_path, subject, transition, slice, group`` where
    ``group`` is the subject's cross-sectional stage in the manifest (used to balance the
    stream). Empty when no longitudinal data exists: never pairs of different people.
    """
    src, tgt = transition_stages(transition)
    subjects = set(frame["subject"].astype(str))
    group = frame.drop_duplicates("subject").set_index(frame.drop_duplicates("subject")["subject"].astype(str))["stage_index"]
    if pairs_csv is not None:
        pairs = pd.read_csv(pairs_csv, dtype={"subject": str})
        missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
        if missing:
            raise ValueError(f"{pairs_csv}: missing pair column(s) {', '.join(missing)}")
        pairs = pairs[(pairs["transition"] == transition) & pairs["subject"].isin(subjects)].copy()
        base = Path(pairs_csv).resolve().parent
        for col in ("source_path", "target_path"):
            pairs[col] = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in pairs[col]]
        if "slice" not in pairs:
            pairs["slice"] = -1
    else:
        found = _longitudinal_table(list(frame["path"]))
        if found is None:
            return pd.DataFrame(columns=[*PAIR_COLUMNS, "slice", "group"])
        _, table = found
        table = table[table["subject"].isin(subjects)]
        a = table[table["stage_index"] == src][["subject", "slice", "path"]].rename(columns={"path": "source_path"})
        b = table[table["stage_index"] == tgt][["subject", "slice", "path"]].rename(columns={"path": "target_path"})
        pairs = a.merge(b, on=["subject", "slice"], how="inner")  # same person, same slice, by construction
        pairs["transition"] = transition
    pairs["group"] = pairs["subject"].map(group).astype(int)
    return pairs.sort_values(["subject", "slice"]).reset_index(drop=True)


def unpaired_sets(frame: pd.DataFrame, transition: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source-stage and target-stage images of one side for the unpaired objective."""
    src, tgt = transition_stages(transition)
    return frame[frame["stage_index"] == src].reset_index(drop=True), frame[frame["stage_index"] == tgt].reset_index(drop=True)


def balanced_weights(pairs: pd.DataFrame) -> np.ndarray:
    """Sampling weight per pair: each subject group (cross-sectional stage) and each subject gets
    equal mass, so minority stages are upsampled and no subject dominates."""
    from alzprog.data.dataset import subject_balanced_weights

    return subject_balanced_weights(pairs.assign(stage_index=pairs["group"]))


# --------------------------------------------------------------------------- batches


@dataclass
class PairData:
    """Canonical uint8 sources/targets/masks of a list of pairs (or unpaired sets), in memory."""

    source: np.ndarray  # (N, H, W) uint8
    target: np.ndarray  # (M, H, W) uint8; M == N when paired
    source_mask: np.ndarray  # (N, H, W) bool
    target_mask: np.ndarray  # (M, H, W) bool
    paired: bool
    weights: np.ndarray  # sampling weights of the sources
    target_weights: np.ndarray | None = None
    subjects: list[str] = field(default_factory=list)


def load_pair_data(pairs: pd.DataFrame, *, progress: bool = True, cache: Any = None) -> PairData:
    """Canonicalise every image of the pairs once (the shared ``CanonicalCache``; pass ``cache``
    to reuse one built over several transitions)."""
    from alzprog.data.dataset import CanonicalCache

    if cache is None:
        cache = CanonicalCache.build(list(pairs["source_path"]) + list(pairs["target_path"]), progress=progress)
    si, ti = cache.index_of(list(pairs["source_path"])), cache.index_of(list(pairs["target_path"]))
    return PairData(
        source=np.asarray(cache.images[si]), target=np.asarray(cache.images[ti]),
        source_mask=np.asarray(cache.masks[si]), target_mask=np.asarray(cache.masks[ti]),
        paired=True, weights=balanced_weights(pairs), subjects=list(pairs["subject"].astype(str)),
    )


def load_unpaired_data(source: pd.DataFrame, target: pd.DataFrame, *, progress: bool = True) -> PairData:
    """Unpaired source-stage and target-stage images (different people; never matched)."""
    from alzprog.data.dataset import CanonicalCache, subject_balanced_weights

    cache = CanonicalCache.build(list(source["path"]) + list(target["path"]), progress=progress)
    si, ti = cache.index_of(list(source["path"])), cache.index_of(list(target["path"]))
    return PairData(
        source=np.asarray(cache.images[si]), target=np.asarray(cache.images[ti]),
        source_mask=np.asarray(cache.masks[si]), target_mask=np.asarray(cache.masks[ti]),
        paired=False, weights=subject_balanced_weights(source), target_weights=subject_balanced_weights(target),
        subjects=list(source["subject"].astype(str)),
    )


def to_generator_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images + bool masks -> (N,1,H,W) generator inputs in [-1, 1] and 0/1 masks.

    Goes through ``alzprog.preprocessing`` (the one preprocessing path shared with serving).
    """
    from alzprog import preprocessing as pp

    x = torch.stack([pp.generator_input(np.asarray(im)) for im in images])
    m = torch.stack([pp.mask_tensor(np.asarray(mk)) for mk in masks]).to(x.dtype)
    return x, m


def random_crops(tensors: Sequence[torch.Tensor], size: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random ``size`` x ``size`` window (and horizontal flip) for every tensor of a sample.

    Generators and discriminators are fully convolutional, so crops cut the cost of a step by
    (256/size)^2 and the trained weights still apply to whole 256 x 256 frames.
    """
    n, _, h, w = tensors[0].shape
    out = [torch.empty(t.shape[0], t.shape[1], min(size, h), min(size, w), dtype=t.dtype) for t in tensors]
    for i in range(n):
        top = int(rng.integers(0, h - out[0].shape[-2] + 1))
        left = int(rng.integers(0, w - out[0].shape[-1] + 1))
        flip = bool(rng.random() < 0.5)
        for t, o in zip(tensors, out):
            patch = t[i, :, top : top + o.shape[-2], left : left + o.shape[-1]]
            o[i] = patch.flip(-1) if flip else patch
    return out


# --------------------------------------------------------------------------- losses


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the mask's pixels."""
    return ((a - b).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (radius 3 sigma)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, H, W)`` (reflect padding); ``sigma <= 0`` is a no-op."""
    if sigma <= 0:
        return image
    k = gaussian_kernel1d(sigma, image.dtype).to(image.device)
    r = (len(k) - 1) // 2
    h = F.conv2d(F.pad(image, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(h, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def smoothed_masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """L1 of the Gaussian-smoothed images inside the mask.

    The true future carries its own independent noise; unsmoothed, the L1 optimum is the
    median of that noise plus the change, and most of the loss is noise no generator can
    predict. Smoothing both sides keeps the change and averages the noise away.
    """
    return masked_l1(gaussian_smooth(a, sigma), gaussian_smooth(b, sigma), mask)


def adversarial_loss(logits: torch.Tensor, real: bool, weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE on realness logits (Sigmoid + BCE in one stable op), optionally weighted per patch."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if weights is None:
        return bce.mean()
    return (bce * weights.float()).mean()


# --------------------------------------------------------------------------- evaluation helpers


@torch.no_grad()
def generate(model: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Run a generator on uint8 canonical images; returns uint8 outputs (N, H, W)."""
    from alzprog import preprocessing as pp

    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x, m = to_generator_tensors(images[i : i + batch_size], masks[i : i + batch_size])
        y = model(x.to(device), m.to(device)).float().cpu()
        out.extend(pp.generator_output_to_uint8(t) for t in y)
    return np.stack(out) if out else np.empty((0,) + images.shape[1:], dtype=np.uint8)


def brain_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean whole-frame and in-brain MSE / PSNR / SSIM of uint8 predictions against the truth."""
    from alzprog.metrics.image import pixel_metrics, summarize

    return summarize(pixel_metrics(pred, target, mask))


def sample_grid(source: np.ndarray, generated: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """Rows of (input | generated | true future) uint8 tiles, one row per sample."""
    rows = []
    for i in range(len(source)):
        tiles = [source[i], generated[i]] + ([target[i]] if target is not None else [])
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def plot_loss_curves(history: list[dict[str, Any]], path: Path, step_history: list[dict[str, Any]] | None = None) -> Path:
    """Generator / discriminator losses (per logged step window when given, else per epoch) and
    the validation in-brain SSIM of the model and of the identity baseline per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, xkey, prefix = (step_history, "step", "train_") if step_history else (history, "epoch", "")
    xs = [h[xkey] for h in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for key in ("g_adv", "d_loss"):
        axes[0].plot(xs, [h.get(prefix + key, np.nan) for h in rows], "-o", ms=3, label=key)
    axes[0].set_title("adversarial losses")
    for key in ("g_l1", "g_identity"):
        if any(prefix + key in h for h in rows):
            axes[1].plot(xs, [h.get(prefix + key, np.nan) for h in rows], "-o", ms=3, label=key)
    axes[1].set_title("reconstruction losses (brain)")
    epochs = [h["epoch"] for h in history]
    for key, style in (("val_ssim_brain", "-o"), ("val_identity_ssim_brain", "--o")):
        axes[2].plot(epochs, [h.get(key, np.nan) for h in history], style, ms=4, label=key.replace("val_", ""))
    axes[2].set_title("validation in-brain SSIM")
    for ax, label in zip(axes, (xkey, xkey, "epoch")):
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- training


@dataclass
class TransitionResult:
    """What one transition's training produced."""

    transition: str
    variant: str
    run_id: str | None
    model_name: str
    version: str | None
    alias_moved: bool
    artifact_dir: Path
    metrics: dict[str, float]
    images_per_second: float
    seconds: float


def _model_config(cfg: dict[str, Any], transition: str) -> dict[str, Any]:
    from alzprog.models.progression_generator import generator_config

    src, tgt = transition_stages(transition)
    return generator_config(
        cfg["variant"],
        arch=str(cfg.get("arch", "lite")),
        base_channels=int(cfg["base_channels"]),
        depth=int(cfg["depth"]),
        max_change=float(cfg.get("max_change", 1.0)),
        max_disp=float(cfg.get("max_disp", 4.0)),
        max_residual=float(cfg.get("max_residual", 0.1)),
        norm=str(cfg.get("norm", "batch")),
        image_size=int(cfg.get("image_size", 256)),
        roi=bool(cfg["roi"]),
        disc_channels=int(cfg.get("disc_channels", 32)),
        transition=transition,
        source_stage=STAGES[src],
        target_stage=STAGES[tgt],
    )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_transition(
    split_dir: Path | str,
    transition: str,
    cfg: dict[str, Any],
    *,
    pairs_csv: Path | str | None = None,
    out_dir: Path | str | None = None,
    register: bool = True,
    promote: bool = False,
    ctx: Any = None,
    frames: dict[str, pd.DataFrame] | None = None,
    cache: Any = None,
) -> TransitionResult:
    """Train one transition generator, log it to MLflow, save the code-free artifact and register it.

    ``cfg`` is a resolved config (``load_config("progression", ...)``). Pairs come from the split's
    train side, validation from its val side. With ``register`` the artifact becomes a new
    version of ``alzheimer-progression-<transition>``: ``dcgan`` runs get the ``dcgan`` alias,
    default runs the ``champion`` alias when their validation in-brain SSIM beats the current
    champion's (or ``promote``).
    """
    import mlflow

    from alzprog import registry
    from alzprog.artifacts import save_artifact
    from alzprog.data.split import load_split
    from alzprog.models.progression_generator import build_discriminator, build_generator, init_dcgan_weights, stack_input
    from alzprog.paths import data_home
    from alzprog.training.common import DistContext, environment_info, seed_everything
    from alzprog.training.config import save_config

    t_start = time.monotonic()
    ctx = ctx or DistContext.from_env(cfg.get("device", "auto"))
    device = ctx.device
    variant = cfg["variant"]
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    seed_everything(int(cfg.get("seed", 0)) + ctx.rank)
    rng = np.random.default_rng(int(cfg.get("seed", 0)) + 1000 * ctx.rank)

    # Leakage guard over the whole split first; training uses train, validation val, never test.
    frames = frames or load_split(Path(split_dir), sides=("train", "val"))
    train_pairs = find_pairs(frames["train"], transition, pairs_csv)
    val_pairs = find_pairs(frames["val"], transition, pairs_csv)
    overlap = set(train_pairs["subject"]) & set(val_pairs["subject"])
    if overlap:
        raise RuntimeError(f"pairs of the same subject on train and val: {sorted(overlap)[:5]}")
    paired = len(train_pairs) > 0
    show = ctx.is_main and bool(cfg.get("progress", True))
    if paired:
        data = load_pair_data(train_pairs, progress=show, cache=cache)
    else:
        src_frame, tgt_frame = unpaired_sets(frames["train"], transition)
        if len(src_frame) == 0 or len(tgt_frame) == 0:
            raise RuntimeError(f"{transition}: no pairs and no {('source', 'target')[len(src_frame) > 0]}-stage images on the train side")
        log.warning("%s: no same-subject pairs found; training the unpaired objective (adversarial + identity)", transition)
        data = load_unpaired_data(src_frame, tgt_frame, progress=show)
    # Validation needs the true future, so it uses pairs only (capped, deterministic subset).
    val_data = None
    if len(val_pairs) > 0:
        cap = int(cfg.get("val_max_pairs", 64))
        idx = np.linspace(0, len(val_pairs) - 1, min(cap, len(val_pairs))).round().astype(int)
        val_data = load_pair_data(val_pairs.iloc[np.unique(idx)].reset_index(drop=True), progress=show, cache=cache)

    val_epoch = _spread(val_data, int(cfg.get("val_epoch_pairs", 8))) if val_data is not None else None
    # Keep the epoch whose validation change is most like the true change, not the last one:
    # late in a run the discriminator can win and pull the field off the ventricles.
    keep_best = bool(cfg.get("keep_best", True)) and val_epoch is not None
    best = BestEpoch()

    model_cfg = _model_config(cfg, transition)
    gen = build_generator(model_cfg).to(device)
    disc = build_discriminator(model_cfg).to(device)
    disc.apply(init_dcgan_weights)
    if variant == "dcgan":
        gen.apply(init_dcgan_weights)  # the default U-Net keeps its zero-initialised change head
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        gen, disc = DDP(gen, device_ids=ids), DDP(disc, device_ids=ids)
    betas = (float(cfg.get("beta1", 0.5)), float(cfg.get("beta2", 0.999)))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(cfg["lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(cfg["lr"]), betas=betas)
    use_amp = bool(cfg.get("amp", True)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    lambda_adv = float(cfg.get("lambda_adv", 1.0))
    lambda_l1 = float(cfg.get("lambda_l1", 100.0)) if variant == "default" else 0.0
    lambda_id = float(cfg.get("lambda_identity", 10.0)) if (variant == "default" and not paired) else 0.0
    recon_sigma = float(cfg.get("recon_sigma", 0.0)) if variant == "default" else 0.0
    lambda_smooth = float(cfg.get("lambda_smooth", 0.0)) if variant == "default" else 0.0
    roi = bool(cfg["roi"])
    batch_size = int(cfg["batch_size"])
    samples = int(cfg.get("samples_per_epoch") or len(data.source))
    steps_per_epoch = max(1, math.ceil(samples / (batch_size * ctx.world_size)))
    epochs = int(cfg["epochs"])
    max_steps = int(cfg["max_steps"]) if cfg.get("max_steps") else None
    time_limit = float(cfg["time_limit_s"]) if cfg.get("time_limit_s") else None
    crop = int(cfg.get("crop_size") or 256)
    weights = torch.as_tensor(data.weights, dtype=torch.double)
    tweights = torch.as_tensor(data.target_weights, dtype=torch.double) if data.target_weights is not None else None
    sampler_gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)) + ctx.rank)

    out = Path(out_dir or data_home() / "runs" / "progression" / f"{transition}-{variant}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    resolved = dict(cfg, transition=transition, paired=paired, n_train_pairs=len(train_pairs), n_val_pairs=len(val_pairs))
    if ctx.is_main:
        save_config(resolved, out / "config.yaml")

    run = None
    if ctx.is_main:
        registry.tracking_uri()
        mlflow.set_experiment(experiment_id=registry.ensure_experiment(PROGRESSION_EXPERIMENT))
        run = mlflow.start_run(run_name=f"{transition}-{variant}{'' if roi else '-noroi'}")
        mlflow.set_tags({"transition": transition, "variant": variant, "roi": str(roi), "paired": str(paired), "preset": cfg.get("preset", "")})
        mlflow.log_params({k: v for k, v in _flat(resolved).items() if v is not None and len(str(v)) < 500})
        from alzprog.data.manifest import data_source

        mlflow.log_param("data_kind", data_source(frames["train"]["path"]))  # the model card's "trained on"
        mlflow.log_dict(environment_info(), "environment.json")

    history: list[dict[str, Any]] = []
    step_history: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    log_every = max(1, int(cfg.get("log_every_steps", 5)))
    step = 0
    images_seen = 0
    train_seconds = 0.0
    stop = False
    try:
        for epoch in range(1, epochs + 1):
            gen.train()
            disc.train()
            sums: dict[str, float] = {}
            n_batches = 0
            t_epoch = time.monotonic()
            bar = tqdm(range(steps_per_epoch), desc=f"{transition} {variant} epoch {epoch}/{epochs}", disable=not show, leave=False)
            for _ in bar:
                idx = torch.multinomial(weights, batch_size, replacement=True, generator=sampler_gen).numpy()
                x, m = to_generator_tensors(data.source[idx], data.source_mask[idx])
                if data.paired:
                    y, _ = to_generator_tensors(data.target[idx], data.target_mask[idx])
                    ym = m
                else:
                    tidx = torch.multinomial(tweights, batch_size, replacement=True, generator=sampler_gen).numpy()
                    y, ym = to_generator_tensors(data.target[tidx], data.target_mask[tidx])
                if crop < x.shape[-1]:
                    x, m, y, ym = random_crops([x, m, y, ym], crop, rng)
                x, m, y, ym = (t.to(device, non_blocking=True) for t in (x, m, y, ym))

                parts = gan_step(
                    gen, disc, opt_g, opt_d, scaler, x, m, y, ym, paired=data.paired, roi=roi, lambda_adv=lambda_adv,
                    lambda_l1=lambda_l1, lambda_id=lambda_id, device=device, use_amp=use_amp,
                    recon_sigma=recon_sigma, lambda_smooth=lambda_smooth,
                )
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                    window[k] = window.get(k, 0.0) + v
                n_batches += 1
                step += 1
                if ctx.is_main and step % log_every == 0:
                    # Step-level loss curves: a time-capped quick run may finish inside one epoch.
                    point = {f"train_{k}": v / log_every for k, v in window.items()}
                    step_history.append({"step": step, **point})
                    mlflow.log_metrics(point, step=step)
                    window = {}
                images_seen += batch_size * ctx.world_size
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
                if max_steps is not None and step >= max_steps:
                    stop = True
                    break
                if time_limit is not None and time.monotonic() - t_start > time_limit:
                    log.warning("%s: time limit %.0fs reached after %d steps", transition, time_limit, step)
                    stop = True
                    break
            train_seconds += time.monotonic() - t_epoch
            row: dict[str, Any] = {"epoch": epoch, "step": step, **{k: v / max(1, n_batches) for k, v in sums.items()}}
            if ctx.is_main and val_epoch is not None:
                # The same spread subset every epoch (curves, sample grid, the epoch kept); the
                # whole validation set scores the kept epoch once at the end.
                row.update(_validate(_unwrap(gen), val_epoch, device, out, epoch))
                row["val_pairs"] = len(val_epoch.source)
                mlflow.log_artifact(str(out / "samples" / f"epoch_{epoch:03d}.png"), artifact_path="samples")
                if keep_best:
                    best.offer(epoch, row, _unwrap(gen))
            history.append(row)
            if ctx.is_main:
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}, step=epoch)
                log.info("%s %s epoch %d: %s", transition, variant, epoch, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
            if stop:
                break

        ips = images_seen / max(train_seconds, 1e-9)
        if ctx.is_main and best.restore(_unwrap(gen)):
            log.info("%s %s: keeping epoch %d of %d (validation change corr %.3f on %d pairs)", transition, variant,
                     best.epoch, len(history), best.score, len(val_epoch.source))
        final_val: dict[str, Any] = {}
        if ctx.is_main and val_data is not None:
            final_val = {**_validate(_unwrap(gen), val_data, device, out, len(history) + 1), "val_pairs": len(val_data.source),
                         "selected_epoch": best.epoch or len(history)}
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in final_val.items() if isinstance(v, (int, float))})
            log.info("%s %s final validation: %s", transition, variant,
                     json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final_val.items()}))
        result_metrics = {k: v for k, v in final_val.items() if k.startswith("val_")}
        result_metrics["images_per_second"] = ips
        version, moved = None, False
        artifact_dir = out / "model"
        if ctx.is_main:
            plot_loss_curves(history, out / "loss_curves.png", step_history)
            mlflow.log_artifact(str(out / "loss_curves.png"))
            (out / "history.json").write_text(json.dumps({"epochs": history, "steps": step_history, "final": final_val}, indent=2))
            mlflow.log_artifact(str(out / "history.json"))
            mlflow.log_metric("images_per_second", ips)
            final = _unwrap(gen).cpu().eval()
            if hasattr(final, "gain") and val_data is not None and bool(cfg.get("calibrate_gain", True)):
                calibration = calibrate_gain(final, val_data, torch.device("cpu"))
                final.gain = model_cfg["gain"] = calibration["gain"]
                model_cfg["gain_calibration"] = calibration
                mlflow.log_metrics({"gain": calibration["gain"], "val_growth_ratio_calibrated": calibration["growth_ratio"],
                                    "val_change_corr_calibrated": calibration["change_corr"]})
                log.info("%s: change gain %.2f (validation growth ratio %.3f -> %.3f)", transition, calibration["gain"],
                         calibration["growth_ratio_at_1"], calibration["growth_ratio"])
            example = stack_input(torch.zeros(1, 1, 256, 256).uniform_(-1, 1), (torch.rand(1, 1, 256, 256) > 0.3).float())
            model_cfg["training"] = {"run_id": run.info.run_id, "preset": cfg.get("preset"), "epochs_run": len(history), "steps": step, "paired": paired}
            save_artifact(artifact_dir, final, model_cfg, example, onnx_atol=float(cfg.get("onnx_atol", 1e-4)))
            mlflow.log_param("onnx_parity", "passed")
            if register:
                name = progression_model_name(transition)
                tags = {"variant": variant, "roi": str(roi), "transition": transition, "preset": str(cfg.get("preset"))}
                version = registry.register_artifact(artifact_dir, name, run.info.run_id, tags=tags)
                if variant == "dcgan":
                    # The baseline alias follows the newest dcgan run; dcgan is never champion.
                    registry.set_alias(name, DCGAN_ALIAS, version)
                    moved = True
                elif PROMOTION_METRIC in result_metrics:
                    moved = registry.promote_if_better(name, version, PROMOTION_METRIC, result_metrics[PROMOTION_METRIC], force=promote)
                else:
                    moved = registry.promote_if_better(name, version, PROMOTION_METRIC, float("-inf"), force=promote)
                mlflow.set_tags({"registered_version": version, "alias_moved": str(moved)})
        return TransitionResult(
            transition=transition, variant=variant, run_id=run.info.run_id if run else None,
            model_name=progression_model_name(transition), version=version, alias_moved=moved,
            artifact_dir=artifact_dir, metrics=result_metrics, images_per_second=ips,
            seconds=time.monotonic() - t_start,
        )
    finally:
        if run is not None:
            mlflow.end_run()


def gan_step(
    gen: nn.Module,
    disc: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    m: torch.Tensor,
    y: torch.Tensor,
    ym: torch.Tensor,
    *,
    paired: bool,
    roi: bool,
    lambda_adv: float,
    lambda_l1: float,
    lambda_id: float,
    device: torch.device,
    use_amp: bool,
    recon_sigma: float = 0.0,
    lambda_smooth: float = 0.0,
) -> dict[str, float]:
    """One discriminator update then one generator update; returns the loss parts.

    ``x``/``m``: inputs and their brain masks; ``y``/``ym``: the true future (paired) or
    target-stage images of other people (unpaired) and their masks. ``recon_sigma > 0``
    compares Gaussian-smoothed output and target (:func:`smoothed_masked_l1`);
    ``lambda_smooth`` weighs the displacement smoothness of a ``deform`` generator.
    """
    from alzprog.training.common import autocast_context

    core = _unwrap(gen)
    with autocast_context(device, use_amp):
        if lambda_smooth > 0 and core is gen and hasattr(core, "fields"):  # DDP: plain forward
            disp, residual = core.fields(x, m)
            fake = core.compose(x, m, disp, residual)
        else:
            disp, fake = None, gen(x, m)
        # Paired: the conditional D judges (input, future) vs (input, generated).
        # Unpaired: no true (input, future) pair exists, so it judges each image alone.
        real_cond, fake_cond = (x, x) if paired else (y, fake.detach())
        # One forward over real + fake (DDP allows one forward per backward).
        d_out = disc(torch.cat([real_cond, fake_cond]), torch.cat([y, fake.detach()]), torch.cat([ym, m]))
        d_real, d_fake = d_out[: len(x)], d_out[len(x) :]
    w_real = _patch_w(ym, d_real) if roi else None
    w_fake = _patch_w(m, d_fake) if roi else None
    d_loss = 0.5 * (adversarial_loss(d_real, True, w_real) + adversarial_loss(d_fake, False, w_fake))
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(d_loss).backward()
    scaler.step(opt_d)

    with autocast_context(device, use_amp):
        g_logits = disc(x if paired else fake, fake, m)
    g_adv = adversarial_loss(g_logits, True, w_fake)
    g_loss = lambda_adv * g_adv
    parts = {"g_adv": g_adv.detach(), "d_loss": d_loss.detach()}
    if lambda_l1 > 0 and paired:
        g_l1 = smoothed_masked_l1(fake.float(), y.float(), m, recon_sigma)
        g_loss = g_loss + lambda_l1 * g_l1
        parts["g_l1"] = g_l1.detach()
    if disp is not None:
        from alzprog.models.progression_generator import displacement_smoothness

        g_smooth = displacement_smoothness(disp.float())
        g_loss = g_loss + lambda_smooth * g_smooth
        parts["g_smooth"] = g_smooth.detach()
    if lambda_id > 0:
        g_id = masked_l1(fake.float(), x.float(), m)
        g_loss = g_loss + lambda_id * g_id
        parts["g_identity"] = g_id.detach()
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(g_loss).backward()
    scaler.step(opt_g)
    scaler.update()
    return {k: float(v) for k, v in parts.items()}


def _spread(data: PairData, n: int) -> PairData:
    """``n`` pairs evenly spread over the set (fixed, so per-epoch figures are comparable, and
    drawn from many subjects rather than the first one's slices)."""
    if n >= len(data.source):
        return data
    i = np.unique(np.linspace(0, len(data.source) - 1, max(1, n)).round().astype(int))
    return PairData(data.source[i], data.target[i], data.source_mask[i], data.target_mask[i], data.paired, data.weights[i])


class BestEpoch:
    """The generator weights of the best-scoring epoch so far (:func:`selection_score`), on the CPU."""

    def __init__(self) -> None:
        self.epoch, self.score, self.state = 0, float("-inf"), None

    def offer(self, epoch: int, row: dict[str, Any], model: nn.Module) -> bool:
        """Keep ``model``'s weights when this epoch's validation ``row`` beats every earlier one."""
        score = selection_score(row)
        if score <= self.score:
            return False
        self.epoch, self.score = epoch, score
        self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> bool:
        """Load the kept weights into ``model``; False when no epoch was offered."""
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True


def selection_score(row: dict[str, Any]) -> float:
    """Score of one epoch's validation for keeping it: the smoothed change correlation, provided
    the in-brain MSE is no worse than returning the input; otherwise below any such epoch."""
    corr = float(row.get("val_change_corr", float("nan")))
    if not np.isfinite(corr):
        return float("-inf")
    if row.get("val_mse_brain", 0.0) > row.get("val_identity_mse_brain", float("inf")):
        return corr - 2.0
    return corr


def _patch_w(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    from alzprog.models.progression_generator import patch_weights

    return patch_weights(mask, logits)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


GAIN_GRID = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)


@torch.no_grad()
def calibrate_gain(gen: nn.Module, val: PairData, device: torch.device, grid: Sequence[float] = GAIN_GRID) -> dict[str, Any]:
    """The field gain whose pooled validation growth ratio is nearest 1, among the gains whose
    in-brain MSE to the true future is no worse than the identity's (else 1).

    Like temperature scaling for the classifier: fitted on validation pairs only, it changes how
    much the generator moves the brain, not where (the change correlation is scale-free).
    """
    from alzprog.metrics.change import change_fidelity
    from alzprog.metrics.image import mse, to_unit

    mask = val.source_mask | val.target_mask
    target, in_brain = to_unit(val.target), torch.as_tensor(mask)

    def mse_brain(images: np.ndarray) -> float:  # the one figure the choice needs (no SSIM)
        return float(mse(to_unit(images), target, in_brain).mean())

    identity_mse = mse_brain(val.source)
    before = float(gen.gain)
    rows = []
    try:
        for g in grid:
            gen.gain = float(g)
            pred = generate(gen, val.source, val.source_mask, device)
            fid = change_fidelity(val.source, pred, val.target, val.source_mask, mask)
            rows.append({"gain": float(g), "growth_ratio": fid["growth_ratio"], "change_corr": fid["change_corr"],
                         "mse_brain": mse_brain(pred)})
    finally:
        gen.gain = before
    ok = [r for r in rows if r["mse_brain"] <= identity_mse and np.isfinite(r["growth_ratio"]) and r["growth_ratio"] > 0]
    best = min(ok, key=lambda r: abs(np.log(r["growth_ratio"]))) if ok else rows[0]
    return {**best, "growth_ratio_at_1": rows[0]["growth_ratio"], "identity_mse_brain": identity_mse,
            "n_pairs": int(len(val.source)), "grid": rows}


def _validate(gen: nn.Module, val: PairData, device: torch.device, out: Path, epoch: int) -> dict[str, float]:
    """Validation in-brain metrics of the generator and of the identity baseline; saves a sample grid."""
    from PIL import Image

    pred = generate(gen, val.source, val.source_mask, device)
    mask = val.source_mask | val.target_mask
    m = brain_metrics(pred, val.target, mask)
    ident = brain_metrics(val.source, val.target, mask)
    rows = min(4, len(pred))
    (out / "samples").mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_grid(val.source[:rows], pred[:rows], val.target[:rows])).save(out / "samples" / f"epoch_{epoch:03d}.png")
    res = {f"val_{k}": v for k, v in m.items() if k in ("ssim_brain", "mse_brain", "psnr_brain", "ssim", "mse")}
    res.update({f"val_identity_{k}": v for k, v in ident.items() if k in ("ssim_brain", "mse_brain")})
    from alzprog.metrics.change import change_fidelity

    fid = change_fidelity(val.source, pred, val.target, val.source_mask, mask)
    res["val_change_corr"] = fid["change_corr"]
    res["val_growth_ratio"] = fid["growth_ratio"]
    return res


def split_pair_cache(frames: dict[str, pd.DataFrame], pairs_csv: Path | str | None = None, *, progress: bool = True) -> Any:
    """One canonical cache over every paired image of the given sides, all transitions.

    The path list depends only on the split, so every later run on it (all transitions, the
    dcgan baseline, the ROI ablation) reopens the same persisted cache instead of recomputing.
    Returns None when there are no pairs (the unpaired path builds its own).
    """
    from alzprog.data.dataset import CanonicalCache

    paths: list[str] = []
    for frame in frames.values():
        for slug in TRANSITION_SLUGS:
            p = find_pairs(frame, slug, pairs_csv)
            paths += list(p["source_path"]) + list(p["target_path"])
    paths = sorted(set(paths))
    return CanonicalCache.build(paths, progress=progress) if paths else None


def train(split_dir: Path | str, transition: str, cfg: dict[str, Any], *, pairs_csv: Path | str | None = None,
          out_dir: Path | str | None = None, **options: Any) -> list[TransitionResult]:
    """Train ``transition`` (or all three in sequence with ``all``), each as its own MLflow run.

    ``options`` (``register``, ``promote``) go to :func:`train_transition` unchanged.
    """
    from alzprog.data.split import load_split
    from alzprog.training.common import DistContext

    ctx = DistContext.from_env(cfg.get("device", "auto"))
    frames = load_split(Path(split_dir), sides=("train", "val"))
    cache = split_pair_cache(frames, pairs_csv, progress=ctx.is_main and bool(cfg.get("progress", True)))
    results = []
    try:
        for t in expand_transitions(transition):
            sub = Path(out_dir) / t if out_dir else None
            results.append(
                train_transition(split_dir, t, cfg, pairs_csv=pairs_csv, out_dir=sub, ctx=ctx, frames=frames, cache=cache,
                                 **options)
            )
    finally:
        ctx.cleanup()
    return results


def throughput_run(
    arrays: dict[str, np.ndarray],
    cfg: dict[str, Any],
    seconds: float,
    device: str = "auto",
) -> dict[str, Any]:
    """Train one transition generator on in-memory pairs for ``seconds``; measure images/second.

    For accelerator checks where MLflow is not installed: ``arrays`` holds ``source``, ``target``
    (uint8 N x H x W), ``source_mask`` (bool) and optionally ``val_*`` of the same; the step is
    :func:`gan_step`, the same as in :func:`train_transition`. Batches are assembled on the device,
    so the figure is the model's training throughput, not the data loader's.
    """
    from alzprog.models.progression_generator import build_discriminator, build_generator, init_dcgan_weights
    from alzprog.training.common import select_device

    dev = select_device(device)
    cfg = dict(cfg)
    model_cfg = _model_config(cfg, cfg.get("transition", "nd-vmd"))
    gen, disc = build_generator(model_cfg).to(dev), build_discriminator(model_cfg).to(dev)
    disc.apply(init_dcgan_weights)
    betas = (float(cfg.get("beta1", 0.5)), float(cfg.get("beta2", 0.999)))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(cfg["lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(cfg["lr"]), betas=betas)
    use_amp = bool(cfg.get("amp", True)) and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    x_all = torch.as_tensor(arrays["source"], device=dev).float().div(127.5).sub(1).unsqueeze(1)
    y_all = torch.as_tensor(arrays["target"], device=dev).float().div(127.5).sub(1).unsqueeze(1)
    m_all = torch.as_tensor(arrays["source_mask"], device=dev).float().unsqueeze(1)
    bs, crop = int(cfg["batch_size"]), int(cfg.get("crop_size") or 256)
    g = torch.Generator(device="cpu").manual_seed(int(cfg.get("seed", 0)))
    steps, images, t0 = 0, 0, None
    start = time.monotonic()
    gen.train()
    disc.train()
    while time.monotonic() - start < seconds:
        idx = torch.randint(0, len(x_all), (bs,), generator=g).to(dev)
        x, y, m = x_all[idx], y_all[idx], m_all[idx]
        if crop < x.shape[-1]:
            top, left = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x, y, m = (t[..., top : top + crop, left : left + crop] for t in (x, y, m))
        parts = gan_step(gen, disc, opt_g, opt_d, scaler, x, m, y, m, paired=True, roi=bool(cfg["roi"]),
                         lambda_adv=float(cfg["lambda_adv"]), lambda_l1=float(cfg["lambda_l1"]), lambda_id=0.0,
                         device=dev, use_amp=use_amp, recon_sigma=float(cfg.get("recon_sigma", 0.0)),
                         lambda_smooth=float(cfg.get("lambda_smooth", 0.0)))
        steps += 1
        if steps == 5:  # skip warm-up (cuDNN autotuning, allocator growth)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, images = time.monotonic(), 0
        elif t0 is not None:
            images += bs
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.monotonic() - (t0 or start)
    result: dict[str, Any] = {"steps": steps, "images_per_second": images / elapsed if t0 else None, "last_losses": parts,
                              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
                              "batch_size": bs, "crop_size": crop, "amp": use_amp}
    if "val_source" in arrays:
        pred = generate(gen, arrays["val_source"], arrays["val_source_mask"], dev)
        mask = arrays["val_source_mask"] | arrays["val_target_mask"]
        result["val_model"] = brain_metrics(pred, arrays["val_target"], mask)
        result["val_identity"] = brain_metrics(arrays["val_source"], arrays["val_target"], mask)
    return result
