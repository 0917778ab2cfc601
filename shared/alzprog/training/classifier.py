"""Train the stage classifier: two-phase EfficientNet transfer learning on a subject-level split.

Phase 1 trains the new 4-stage head on a frozen backbone (Adam, 1e-3); phase 2 unfreezes
everything (Adam, 1e-5 in the ``full`` preset) with ReduceLROnPlateau on validation macro-F1.
The checkpoint with the best validation macro-F1 (not accuracy: the classes are imbalanced)
is kept, temperature-scaled on the validation split, saved as a code-free artifact
(safetensors + JSON + ONNX), logged to MLflow and registered as ``alzheimer-stage-classifier``.

Runs under ``torchrun`` unchanged: DistributedDataParallel, a per-rank sampler, metrics and
MLflow on rank 0 only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset, WeightedRandomSampler
from tqdm.auto import tqdm

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_EXPERIMENT, CLASSIFIER_MODEL_NAME, STAGES
from alzprog.metrics import classification as cm
from alzprog.metrics.plots import confusion_matrix_png
from alzprog.training.common import (
    DistContext,
    autocast_context,
    environment_info,
    plot_curves,
    seed_everything,
)
from alzprog.training.config import save_config

log = logging.getLogger(__name__)

SELECTION_METRIC = "val_macro_f1"


class _OfflineTracker:
    """Stands in for the ``mlflow`` module when tracking is off: every call is a no-op."""

    def log_params(self, *_a, **_k) -> None: ...
    def set_tags(self, *_a, **_k) -> None: ...
    def log_metrics(self, *_a, **_k) -> None: ...
    def log_artifact(self, *_a, **_k) -> None: ...
    def log_artifacts(self, *_a, **_k) -> None: ...
    def end_run(self, *_a, **_k) -> None: ...
    def active_run(self) -> None:
        return None


@dataclass
class TrainResult:
    """What a training run produced (rank 0; other ranks get ``model_dir=None``)."""

    run_id: str | None
    model_dir: Path | None
    version: str | None
    promoted: bool
    best_val_macro_f1: float
    best_epoch: int
    temperature: float
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def subject_fingerprint(subject: str) -> str:
    """Short one-way fingerprint of a subject id, stored with a model so evaluation can refuse
    test subjects it was trained or validated on without shipping the ids themselves."""
    return hashlib.sha256(f"alzprog-subject:{subject}".encode()).hexdigest()[:16]


def shuffle_subject_labels(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Random-label control: permute stage labels across subjects (a subject keeps one label).

    Slices of one subject stay together, so whatever the model learns from the images cannot
    be mapped back to the true stage; under a subject-level split test scores must stay at chance.
    """
    rng = np.random.default_rng(seed)
    per_subject = frame.groupby("subject")["stage_index"].agg(lambda s: int(s.mode().iloc[0]))
    permuted = pd.Series(rng.permutation(per_subject.to_numpy()), index=per_subject.index)
    out = frame.copy()
    out["stage_index"] = out["subject"].map(permuted).astype(np.int64)
    out["stage"] = out["stage_index"].map(lambda i: STAGES[int(i)])
    return out


def model_config_from(cfg: dict[str, Any], temperature: float = 1.0) -> dict[str, Any]:
    """The artifact config (``config.json``) of a training config."""
    from alzprog.models.stage_classifier import classifier_config

    m = cfg["model"]
    return classifier_config(
        m["arch"],
        int(m["image_size"]),
        width_mult=m.get("width_mult"),
        depth_mult=m.get("depth_mult"),
        dropout=m.get("dropout"),
        feature_stages=m.get("feature_stages"),
        pooling=m.get("pooling"),
        temperature=temperature,
        pretrained=str(cfg.get("pretrained", "imagenet")),
    )


def _flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            out[key] = v
    return out


def _class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=len(STAGES)).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (len(STAGES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _train_sampler(cfg, frame, ds, dist: DistContext, epoch: int, samples_per_epoch: int | None = None):
    seed = int(cfg["seed"])
    g = torch.Generator()
    g.manual_seed(seed * 1000 + epoch * 17 + dist.rank)
    if cfg["imbalance"] == "sampler":
        from alzprog.data.dataset import subject_balanced_weights

        # Independent weighted draws per rank (with replacement) shard a weighted sampler exactly.
        weights = torch.as_tensor(subject_balanced_weights(frame), dtype=torch.double)
        n = int(samples_per_epoch or len(ds))
        return WeightedRandomSampler(weights, math.ceil(n / dist.world_size), replacement=True, generator=g)
    if dist.distributed:
        s = DistributedSampler(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return s
    return RandomSampler(ds, generator=g)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


@torch.no_grad()
def predict_logits(model: nn.Module, ds, device: torch.device, batch_size: int, dist: DistContext | None = None,
                   amp: bool = False, desc: str = "predict", progress: bool = True) -> np.ndarray:
    """Logits for every sample of ``ds`` (in order). With ``dist``, each rank predicts a strided
    shard and the shards are gathered, so all ranks return the full array."""
    model.eval()
    n = len(ds)
    world = dist.world_size if dist is not None else 1
    rank = dist.rank if dist is not None else 0
    idx = list(range(rank, n, world))
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, num_workers=0)
    chunks = []
    for x, _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress or rank != 0):
        with autocast_context(device, amp):
            chunks.append(model(x.to(device, non_blocking=True)).float().cpu())
    local = torch.cat(chunks).numpy() if chunks else np.zeros((0, len(STAGES)), np.float32)
    if dist is None or not dist.distributed:
        return local
    gathered = dist.all_gather_object((idx, local))
    out = np.zeros((n, len(STAGES)), dtype=np.float32)
    for ids, logits in gathered:
        out[ids] = logits
    return out


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, subjects: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """Slice- and subject-level loss/accuracy/macro-F1 of a set of logits (labels present only)."""
    probs = cm.softmax(logits, temperature)
    pred = probs.argmax(1)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))) if len(labels) else float("nan")
    _, sprobs, slab = cm.subject_soft_vote(probs, labels, subjects)
    spred = sprobs.argmax(1)
    return {
        "loss": nll,
        "accuracy": cm.accuracy(labels, pred),
        "macro_f1": cm.macro_f1(labels, pred),
        "balanced_accuracy": cm.balanced_accuracy(labels, pred),
        "subject_accuracy": cm.accuracy(slab, spred),
        "subject_macro_f1": cm.macro_f1(slab, spred),
        "ece": cm.expected_calibration_error(probs, labels),
    }


def train_classifier(
    cfg: dict[str, Any],
    split_dir: Path | str,
    *,
    out_dir: Path | str | None = None,
    register: bool = True,
    promote: bool = False,
    shuffle_labels: bool = False,
    run_name: str | None = None,
    progress: bool = True,
    use_mlflow: bool = True,
) -> TrainResult:
    """Train, calibrate, save, log and (on rank 0) register a stage classifier.

    ``cfg`` is a resolved config (:func:`alzprog.training.config.load_config`). The split is
    loaded through the leakage guard. With ``shuffle_labels`` the train and validation labels
    are permuted across subjects (the random-label control) and the model is never promoted.
    ``use_mlflow=False`` writes the same files without tracking or registration.
    """
    from alzprog.artifacts import save_artifact
    from alzprog.data.dataset import CanonicalCache, StageSliceDataset, augment_batch
    from alzprog.data.manifest import data_source
    from alzprog.data.split import load_split, read_report, split_hash
    from alzprog.models.stage_classifier import (
        build_stage_classifier,
        load_imagenet_weights,
        set_backbone_trainable,
    )
    from alzprog.preprocessing import CANONICAL_SIZE

    split_dir = Path(split_dir)
    threads_before = torch.get_num_threads()
    if cfg.get("threads"):
        # On a CPU shared with other jobs, fewer threads avoid OpenMP spin contention.
        torch.set_num_threads(int(cfg["threads"]))
    dist = DistContext.from_env(cfg.get("device", "auto"))
    device = dist.device
    seed_everything(int(cfg["seed"]), bool(cfg.get("deterministic", False)))
    amp = bool(cfg.get("amp", True)) and device.type == "cuda"
    main = dist.is_main
    t_start = time.time()

    frames = load_split(split_dir, ("train", "val"))  # refuses a leaking split
    train_df, val_df = frames["train"], frames["val"]
    label_agreement = None
    if shuffle_labels:
        true_labels = train_df.groupby("subject")["stage_index"].first()
        train_df = shuffle_subject_labels(train_df, int(cfg["seed"]) + 1)
        val_df = shuffle_subject_labels(val_df, int(cfg["seed"]) + 2)
        # Share of training subjects whose permuted label happens to equal the true one
        # (about 1/4 for four balanced stages); logged so the control can be audited.
        label_agreement = float((train_df.groupby("subject")["stage_index"].first() == true_labels).mean())
        cfg = {**cfg, "shuffled_label_agreement": label_agreement}

    size = int(cfg["model"]["image_size"])
    mc = model_config_from(cfg)
    mean, std = tuple(mc["mean"]), tuple(mc["std"])
    # Rank 0 canonicalises every slice once; the others then reopen the same persisted cache.
    paths = list(pd.concat([train_df["path"], val_df["path"]]).astype(str))
    if main:
        cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, progress=progress)
    dist.barrier()
    if not main:
        cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, progress=False)
    # uint8 pixels through the loader (12x fewer bytes than floats); augment_batch finishes the
    # batch on the device (the float path starves the step: docs/performance.md).
    train_ds = StageSliceDataset(train_df, cache, size, True, mean, std, augment_in_dataset=False, pixels=True)
    val_ds = StageSliceDataset(val_df, cache, size, False, mean, std)
    val_labels = val_ds.labels
    val_subjects = np.asarray(val_ds.subjects)[val_ds.subject_idx]

    model = build_stage_classifier(mc)
    pretrained = str(cfg.get("pretrained", "imagenet")).lower()
    if pretrained == "imagenet":
        if mc.get("width_mult") is not None:
            raise ValueError("a scaled EfficientNet (width_mult/depth_mult) has no ImageNet weights; use --pretrained none")
        load_imagenet_weights(model, mc["arch"])
    elif pretrained != "none":
        raise ValueError(f"--pretrained must be 'imagenet' or 'none', got {pretrained!r}")
    model.to(device)

    loss_weight = _class_weights(train_ds.labels).to(device) if cfg["imbalance"] == "weighted_loss" else None
    criterion = nn.CrossEntropyLoss(weight=loss_weight)
    use_scaler = amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    aug = cfg.get("augment", {})
    aug_gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    aug_gen.manual_seed(int(cfg["seed"]) + 7919 * dist.rank)

    out_dir = Path(out_dir) if out_dir else None
    mlflow = None
    run_id = None
    if main:
        if use_mlflow:
            import mlflow as _mlflow

            from alzprog import registry

            mlflow = _mlflow
            registry.tracking_uri()
            exp_id = registry.ensure_experiment(CLASSIFIER_EXPERIMENT)
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
            run_id = run.info.run_id
        else:
            # No tracking stack (e.g. a bare GPU node): same outputs on disk, nothing registered.
            mlflow = _OfflineTracker()
            run_id = f"offline-{time.strftime('%Y%m%d-%H%M%S')}"
            register = False
        if out_dir is None:
            from alzprog.paths import data_home

            out_dir = data_home() / "runs" / "classifier" / run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            report = read_report(split_dir)
        except FileNotFoundError:
            report = {}
        params = _flat_params(cfg)
        params.update({
            "split_sha256": split_hash(split_dir),
            "manifest_sha256": report.get("manifest_sha256", "unknown"),
            "n_train_images": len(train_ds), "n_val_images": len(val_ds),
            "n_train_subjects": len(train_ds.subjects), "n_val_subjects": len(val_ds.subjects),
            "world_size": dist.world_size, "device": str(device), "amp": amp,
            "shuffle_labels": shuffle_labels,
            "data_kind": data_source(train_df["path"]),  # the model card's "trained on"
        })
        mlflow.log_params({k: (str(v)[:500] if v is not None else "None") for k, v in params.items()})
        mlflow.set_tags({
            "pretrained": pretrained,
            "from_scratch": str(pretrained == "none").lower(),
            "preset": str(cfg.get("preset")),
            "control": "shuffled_labels" if shuffle_labels else "none",
            "model_kind": "stage_classifier",
        })
        save_config(cfg, out_dir / "config.yaml")
    try:
        history: list[dict[str, Any]] = []
        best = {"f1": -1.0, "loss": float("inf"), "epoch": -1, "state": None}
        epoch_global = 0
        stop = False
        train_seconds = 0.0
        train_images = 0
        for phase_name in ("phase1", "phase2"):
            pcfg = cfg[phase_name]
            epochs = int(pcfg["epochs"])
            if epochs <= 0 or stop:
                continue
            frozen = phase_name == "phase1"
            set_backbone_trainable(model, not frozen)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=float(pcfg["lr"]), weight_decay=float(pcfg.get("weight_decay", 0.0)))
            scheduler = None
            if not frozen:
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="max", factor=float(pcfg.get("plateau_factor", 0.5)),
                    patience=int(pcfg.get("plateau_patience", 2)),
                )
            if frozen and pretrained == "imagenet" and bool(pcfg.get("cached_features", False)):
                # A frozen backbone computes the same features every epoch: compute them once
                # (no augmentation), then train the head on them alone.
                epoch_global = _head_on_cached_features(
                    model, train_ds, val_ds, train_df, val_labels, val_subjects, cfg, pcfg, optimizer, device,
                    amp, dist, history, best, epoch_global, mlflow if main else None, progress,
                )
                continue
            # DDP registers gradient hooks for the parameters that require grad at wrap time,
            # so the model is wrapped anew for each phase.
            net: nn.Module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if dist.distributed else model
            since_best = 0
            for _ in range(epochs):
                epoch_global += 1
                net.train()
                if frozen and pretrained == "imagenet":
                    # A frozen pretrained backbone keeps its ImageNet batch-norm statistics.
                    _unwrap(net).features.eval()
                if not frozen and pcfg.get("freeze_bn", False):
                    # Small CPU batches give noisy batch statistics: fine-tune the weights and
                    # keep the pretrained (and phase-1) normalisation.
                    for mod in _unwrap(net).modules():
                        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                            mod.eval()
                sampler = _train_sampler(cfg, train_df, train_ds, dist, epoch_global, pcfg.get("samples_per_epoch"))
                loader = DataLoader(
                    train_ds, batch_size=int(cfg["batch_size"]), sampler=sampler,
                    num_workers=int(cfg.get("num_workers", 0)), drop_last=False,
                    pin_memory=device.type == "cuda", persistent_workers=False,
                )
                tot_loss = torch.zeros(2, dtype=torch.float64)
                ys, ps = [], []
                t0 = time.time()
                bar = tqdm(loader, desc=f"{phase_name} epoch {epoch_global}", leave=False, disable=not (progress and main))
                for x, y, _ in bar:
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    x = augment_batch(
                        x, mean, std, generator=aug_gen,
                        max_rotation=float(aug.get("max_rotation", 15.0)), flip_p=float(aug.get("flip_p", 0.5)),
                        brightness=float(aug.get("brightness", 0.1)), contrast=float(aug.get("contrast", 0.1)),
                    )
                    with autocast_context(device, amp):
                        logits = net(x)
                        loss = criterion(logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    tot_loss += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
                    ys.append(y.cpu().numpy())
                    ps.append(logits.argmax(1).cpu().numpy())
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                train_seconds += time.time() - t0
                tot_loss = dist.all_reduce_sum(tot_loss).cpu()
                train_images += int(tot_loss[1].item())
                pairs = dist.all_gather_object((np.concatenate(ys), np.concatenate(ps)))
                ty = np.concatenate([p[0] for p in pairs])
                tp = np.concatenate([p[1] for p in pairs])

                vlogits = predict_logits(net, val_ds, device, int(cfg.get("eval_batch_size", 64)), dist, amp,
                                         desc="validate", progress=progress)
                v = evaluate_logits(vlogits, val_labels, val_subjects)
                row = {
                    "epoch": epoch_global, "phase": phase_name,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": float(tot_loss[0] / max(tot_loss[1], 1)),
                    "train_accuracy": cm.accuracy(ty, tp), "train_macro_f1": cm.macro_f1(ty, tp),
                    "val_loss": v["loss"], "val_accuracy": v["accuracy"], "val_macro_f1": v["macro_f1"],
                    "val_balanced_accuracy": v["balanced_accuracy"],
                    "val_subject_accuracy": v["subject_accuracy"], "val_subject_macro_f1": v["subject_macro_f1"],
                    "epoch_seconds": time.time() - t0,
                }
                history.append(row)
                improved = _keep_if_best(best, v, epoch_global, _unwrap(net))
                since_best = 0 if improved else since_best + 1
                if main:
                    log.info(
                        "%s epoch %d: train loss %.4f acc %.3f F1 %.3f | val loss %.4f acc %.3f F1 %.3f subjF1 %.3f%s",
                        phase_name, epoch_global, row["train_loss"], row["train_accuracy"], row["train_macro_f1"],
                        row["val_loss"], row["val_accuracy"], row["val_macro_f1"], row["val_subject_macro_f1"],
                        " *" if improved else "",
                    )
                    mlflow.log_metrics({k: float(row[k]) for k in row if k not in ("epoch", "phase") and row[k] == row[k]},
                                       step=epoch_global)
                if scheduler is not None:
                    scheduler.step(v["macro_f1"])
                patience = int(pcfg.get("early_stop_patience", 0) or 0)
                if not frozen and patience and since_best >= patience:
                    if main:
                        log.info("early stop: no better validation macro-F1 for %d epochs", patience)
                    stop = True
                    break
            if dist.distributed:
                # Unwrap before the next phase re-wraps the module.
                model = _unwrap(net)
        if best["state"] is None:
            raise RuntimeError("no epoch was trained (phase1.epochs and phase2.epochs are both 0)")

        result = TrainResult(run_id=run_id, model_dir=None, version=None, promoted=False,
                             best_val_macro_f1=float(best["f1"]), best_epoch=int(best["epoch"]),
                             temperature=1.0, history=history, out_dir=out_dir)
        if main:
            result = _finish_main(
                cfg, split_dir, model, best, history, train_df, val_df, val_ds, val_labels, val_subjects,
                device, amp, out_dir, run_id, mlflow, register, promote, shuffle_labels, dist,
                train_seconds, train_images, t_start, progress, save_artifact,
            )
        dist.barrier()
        return result
    except BaseException:
        if main and mlflow is not None:
            mlflow.end_run(status="FAILED")
        raise
    finally:
        if main and mlflow is not None and mlflow.active_run() is not None:
            mlflow.end_run()
        dist.cleanup()
        torch.set_num_threads(threads_before)


def _keep_if_best(best: dict[str, Any], v: dict[str, float], epoch: int, model: nn.Module) -> bool:
    """Keep a copy of ``model`` in ``best`` when its validation macro-F1 is higher (ties: lower loss)."""
    improved = (v["macro_f1"] > best["f1"] + 1e-9) or (abs(v["macro_f1"] - best["f1"]) <= 1e-9 and v["loss"] < best["loss"])
    if improved:
        best.update(f1=v["macro_f1"], loss=v["loss"], epoch=epoch,
                    state={k: t.detach().cpu().clone() for k, t in model.state_dict().items()})
    return improved


@torch.no_grad()
def pooled_features(model: nn.Module, ds, device: torch.device, batch_size: int, amp: bool = False,
                    desc: str = "features", progress: bool = True) -> np.ndarray:
    """The frozen backbone's pooled features (N, C) of every sample of ``ds``, in order (no augmentation)."""
    from alzprog.data.dataset import classifier_batch
    from alzprog.models.stage_classifier import forward_features

    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    chunks = []
    for x, _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x = classifier_batch(x.to(device), ds.mean, ds.std, augment=False)
        with autocast_context(device, amp):
            chunks.append(forward_features(model, x).float().cpu())
    return torch.cat(chunks).numpy()


def cached_features(model: nn.Module, ds, device: torch.device, batch_size: int, amp: bool, desc: str,
                     progress: bool) -> np.ndarray:
    """:func:`pooled_features`, kept on disk under ``<data_home>/cache/features-<key>.npy``.

    The key hashes the frozen backbone's weights, the input size and normalisation and the
    dataset's canonical pixels (the canonical cache's own content key and the row order), so a
    rerun or the random-label control of the same split reuses them, and any change recomputes.
    """
    path = _features_path(model, ds)
    if path is None:
        return pooled_features(model, ds, device, batch_size, amp, desc, progress)
    if path.is_file():
        log.info("%s: reusing %s", desc, path)
        return np.load(path)
    feats = pooled_features(model, ds, device, batch_size, amp, desc, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats


def _features_path(model: nn.Module, ds) -> Path | None:
    """Where :func:`cached_features` keeps this backbone's features of ``ds`` (None: not kept)."""
    from alzprog.paths import data_home

    if getattr(ds.cache, "directory", None) is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not name.startswith("classifier."):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    # What the features are, beyond the weights: the tapped stages and how they are pooled.
    lite_cfg = getattr(model, "cfg", None)
    head_spec = [list(lite_cfg.feature_stages or ()), list(lite_cfg.pooling)] if lite_cfg is not None else None
    h.update(json.dumps([ds.size, ds.mean, ds.std, str(ds.cache.directory.name), head_spec]).encode())
    h.update(np.asarray(ds.rows, dtype=np.int64).tobytes())
    return data_home() / "cache" / f"features-{h.hexdigest()[:24]}.npy"


@torch.no_grad()
def _logits_from_kept_features(model: nn.Module, ds) -> np.ndarray | None:
    """The model's logits of ``ds`` from features already kept for its exact backbone (a run
    whose backbone never left phase 1), else None. The head on the pooled features is the
    model's own forward in eval, so this only skips recomputing them."""
    path = _features_path(model, ds)
    if path is None or not path.is_file():
        return None
    device = next(model.classifier.parameters()).device
    return model.classifier(torch.from_numpy(np.load(path)).to(device)).float().cpu().numpy()


def _head_on_cached_features(model, train_ds, val_ds, train_df, val_labels, val_subjects, cfg, pcfg, optimizer,
                             device, amp, dist: DistContext, history, best, epoch_global, mlflow, progress) -> int:
    """Phase 1 on features computed once: epochs of the head alone over the same sampler the
    image path uses; validation every epoch from the cached validation features. Every rank
    computes the same (small) thing, so no gradient needs to be shared."""
    bs = int(cfg.get("eval_batch_size", 64))
    t0 = time.time()
    ftrain = torch.from_numpy(cached_features(model, train_ds, device, bs, amp, "phase1 features (train)", progress))
    fval = torch.from_numpy(cached_features(model, val_ds, device, bs, amp, "phase1 features (val)", progress))
    feature_seconds = pass_seconds = time.time() - t0
    ytrain = torch.as_tensor(np.array(train_ds.labels))
    classifier = model.classifier.to(device)
    norm = classifier[0] if isinstance(classifier[0], nn.BatchNorm1d) else None
    if norm is not None:
        # The cached features' own statistics: the head then trains on standardised inputs.
        norm.running_mean.copy_(ftrain.mean(0).to(device))
        norm.running_var.copy_(ftrain.var(0).to(device))
    criterion = nn.CrossEntropyLoss()
    for _ in range(int(pcfg["epochs"])):
        epoch_global += 1
        t1 = time.time()
        classifier.train()
        if norm is not None:
            norm.eval()
        sampler = _train_sampler(cfg, train_df, train_ds, DistContext(device=device), epoch_global)
        order = torch.as_tensor(list(iter(sampler)))
        tot, n, ys, ps = 0.0, 0, [], []
        for i in range(0, len(order), int(cfg["batch_size"])):
            idx = order[i : i + int(cfg["batch_size"])]
            x, y = ftrain[idx].to(device), ytrain[idx].to(device)
            logits = classifier(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tot += loss.item() * len(y)
            n += len(y)
            ys.append(y.cpu().numpy())
            ps.append(logits.argmax(1).detach().cpu().numpy())
        classifier.eval()
        with torch.no_grad():
            vlogits = classifier(fval.to(device)).cpu().numpy()
        v = evaluate_logits(vlogits, val_labels, val_subjects)
        ty, tp = np.concatenate(ys), np.concatenate(ps)
        row = {
            "epoch": epoch_global, "phase": "phase1",
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": tot / max(n, 1),
            "train_accuracy": cm.accuracy(ty, tp), "train_macro_f1": cm.macro_f1(ty, tp),
            "val_loss": v["loss"], "val_accuracy": v["accuracy"], "val_macro_f1": v["macro_f1"],
            "val_balanced_accuracy": v["balanced_accuracy"],
            "val_subject_accuracy": v["subject_accuracy"], "val_subject_macro_f1": v["subject_macro_f1"],
            "epoch_seconds": time.time() - t1 + feature_seconds,
        }
        feature_seconds = 0.0  # the one feature pass is counted in the first head epoch
        history.append(row)
        _keep_if_best(best, v, epoch_global, model)
        if mlflow is not None:
            log.info("phase1 epoch %d (cached features): train loss %.4f F1 %.3f | val loss %.4f F1 %.3f subjF1 %.3f",
                     epoch_global, row["train_loss"], row["train_macro_f1"], row["val_loss"], row["val_macro_f1"],
                     row["val_subject_macro_f1"])
            mlflow.log_metrics({k: float(row[k]) for k in row if k not in ("epoch", "phase") and row[k] == row[k]},
                               step=epoch_global)
    if mlflow is not None:
        log.info("phase 1 on cached features: %d + %d slices in %.1f s, then %d head epochs",
                 len(train_ds), len(val_ds), pass_seconds, int(pcfg["epochs"]))
    return epoch_global


def _finish_main(cfg, split_dir, model, best, history, train_df, val_df, val_ds, val_labels, val_subjects,
                 device, amp, out_dir: Path, run_id, mlflow, register, promote, shuffle_labels, dist,
                 train_seconds, train_images, t_start, progress, save_artifact) -> TrainResult:
    """Rank 0: restore the best checkpoint, calibrate, save the artifact, report, log, register."""
    from alzprog import ood, registry

    model.load_state_dict(best["state"])
    model.eval()
    vlogits = _logits_from_kept_features(model, val_ds)
    if vlogits is None:
        vlogits = predict_logits(model, val_ds, device, int(cfg.get("eval_batch_size", 64)), None, amp,
                                 desc="calibrate", progress=progress)
    temperature = cm.fit_temperature(vlogits, val_labels)
    before = evaluate_logits(vlogits, val_labels, val_subjects, 1.0)
    after = evaluate_logits(vlogits, val_labels, val_subjects, temperature)

    mc = model_config_from(cfg, temperature)
    mc["selection"] = {"metric": SELECTION_METRIC, "value": float(best["f1"]), "epoch": int(best["epoch"])}
    # Fingerprints of every subject the model saw (train + val): evaluation refuses them.
    mc["seen_subject_fingerprints"] = sorted(
        {subject_fingerprint(s) for s in pd.concat([train_df["subject"], val_df["subject"]]).astype(str)}
    )
    mc["training"] = {
        "run_id": run_id, "preset": cfg.get("preset"), "shuffle_labels": shuffle_labels,
        "split_sha256": _safe_split_hash(split_dir),
    }
    curves = plot_curves(history, out_dir / "training_curves.png",
                         title=f"stage classifier ({cfg.get('preset')}){' - SHUFFLED LABELS' if shuffle_labels else ''}")
    vprobs = cm.softmax(vlogits, temperature)
    vsum = cm.classification_summary(val_labels, vprobs.argmax(1))
    cmat_png = confusion_matrix_png(vsum["confusion_matrix"], out_dir / "val_confusion_matrix.png", "validation slices (best epoch)")
    wall = time.time() - t_start
    summary = {
        "run_id": run_id,
        "preset": cfg.get("preset"),
        "pretrained": cfg.get("pretrained"),
        "shuffle_labels": shuffle_labels,
        "shuffled_label_agreement": cfg.get("shuffled_label_agreement"),
        "best_epoch": int(best["epoch"]),
        "best_val_macro_f1": float(best["f1"]),
        "temperature": temperature,
        "val_before_temperature": before,
        "val_after_temperature": after,
        "val_per_class": vsum["per_class"],
        "n_train_images": len(train_df), "n_val_images": len(val_df),
        "n_train_subjects": int(train_df["subject"].nunique()), "n_val_subjects": int(val_df["subject"].nunique()),
        "train_images_per_second": train_images / train_seconds if train_seconds > 0 else None,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "world_size": dist.world_size,
        "device": str(device),
        "digests": None,
        "history": history,
    }
    (out_dir / "environment.json").write_text(json.dumps(environment_info(), indent=2))
    # The reports are written before the export so a failed ONNX parity check still leaves them.
    (out_dir / "train_report.json").write_text(json.dumps(summary, indent=2, default=float))
    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    example = torch.stack([val_ds[i][0] for i in range(min(2, len(val_ds)))])
    model_cpu = model.to("cpu").float()
    summary["digests"] = save_artifact(model_dir, model_cpu, mc, example)
    summary["digests"] = ood.attach_reference(model_dir, model_cpu, train_df, val_ds, device, int(cfg.get("eval_batch_size", 64)))
    (out_dir / "train_report.json").write_text(json.dumps(summary, indent=2, default=float))
    (out_dir / "train_report.md").write_text(_train_markdown(summary))

    mlflow.log_metrics({
        "best_val_macro_f1": float(best["f1"]), "best_epoch": float(best["epoch"]),
        "temperature": temperature, "val_ece_before": before["ece"], "val_ece_after": after["ece"],
        "train_images_per_second": float(summary["train_images_per_second"] or 0.0),
        "wall_seconds": wall,
    })
    for name in ("train_report.json", "train_report.md", "environment.json", "config.yaml"):
        mlflow.log_artifact(str(out_dir / name), artifact_path="report")
    mlflow.log_artifact(str(curves), artifact_path="plots")
    mlflow.log_artifact(str(cmat_png), artifact_path="plots")
    for name in ("train.csv", "val.csv", "test.csv", "split_report.json"):
        if (Path(split_dir) / name).exists():
            mlflow.log_artifact(str(Path(split_dir) / name), artifact_path="split")

    version = None
    promoted = False
    if register:
        tags = {"val_macro_f1": repr(float(best["f1"])), "preset": str(cfg.get("preset")),
                "pretrained": str(cfg.get("pretrained")), "control": "shuffled_labels" if shuffle_labels else "none"}
        version = registry.register_artifact(model_dir, CLASSIFIER_MODEL_NAME, run_id, tags=tags)
        if shuffle_labels:
            log.info("random-label control registered as version %s; never promoted", version)
        else:
            promoted = registry.promote_if_better(CLASSIFIER_MODEL_NAME, version, SELECTION_METRIC, float(best["f1"]),
                                                  force=promote, alias=CHAMPION_ALIAS)
        mlflow.set_tags({"registered_version": version, "promoted_to_champion": str(promoted).lower()})
    else:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    log.info("model saved to %s (val macro-F1 %.4f at epoch %d, T=%.3f)%s", model_dir, best["f1"], best["epoch"],
             temperature, f"; registered version {version}{' -> champion' if promoted else ''}" if version else "")
    return TrainResult(run_id=run_id, model_dir=model_dir, version=version, promoted=promoted,
                       best_val_macro_f1=float(best["f1"]), best_epoch=int(best["epoch"]),
                       temperature=temperature, history=history, out_dir=out_dir)


def _safe_split_hash(split_dir: Path) -> str | None:
    from alzprog.data.split import split_hash

    try:
        return split_hash(split_dir)
    except FileNotFoundError:
        return None


def _train_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Stage classifier training run {s['run_id']}",
        "",
        f"- preset: `{s['preset']}`, pretrained: `{s['pretrained']}`, shuffled labels: {s['shuffle_labels']}",
        f"- train: {s['n_train_images']} slices / {s['n_train_subjects']} subjects; "
        f"validation: {s['n_val_images']} slices / {s['n_val_subjects']} subjects",
        f"- best epoch {s['best_epoch']}: validation macro-F1 (slices) {s['best_val_macro_f1']:.4f}",
        f"- temperature {s['temperature']:.3f}: validation ECE {s['val_before_temperature']['ece']:.4f} -> "
        f"{s['val_after_temperature']['ece']:.4f}",
        f"- {s['world_size']} process(es) on {s['device']}; training throughput "
        f"{(s['train_images_per_second'] or 0):.1f} images/s; wall time {s['wall_seconds']:.0f} s",
        "",
        "Validation numbers select the checkpoint; the honest figures come from "
        "`alzprog evaluate classifier` on the held-out test subjects.",
        "",
        "| epoch | phase | train loss | train acc | train F1 | val loss | val acc | val F1 | val subject F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["history"]:
        lines.append(
            f"| {r['epoch']} | {r['phase']} | {r['train_loss']:.4f} | {r['train_accuracy']:.3f} | {r['train_macro_f1']:.3f} "
            f"| {r['val_loss']:.4f} | {r['val_accuracy']:.3f} | {r['val_macro_f1']:.3f} | {r['val_subject_macro_f1']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def measure_throughput(
    model_config: dict[str, Any],
    device: str = "auto",
    batch_size: int = 32,
    steps: int = 20,
    warmup: int = 5,
    amp: bool = True,
    infer_batch_size: int | None = None,
) -> dict[str, Any]:
    """Model-only images/second for a training step (forward, backward, Adam) and for inference.

    Synthetic inputs, so the figure isolates the accelerator from data loading; the training
    run's own ``train_images_per_second`` includes the input pipeline.
    """
    from alzprog.models.stage_classifier import build_stage_classifier
    from alzprog.training.common import select_device

    dev = select_device(device)
    use_amp = amp and dev.type == "cuda"
    size = int(model_config["image_size"])
    model = build_stage_classifier(model_config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, size, size, device=dev)
    y = torch.randint(0, len(STAGES), (batch_size,), device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with autocast_context(dev, use_amp):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_ips = batch_size * steps / (time.perf_counter() - t0)

    ib = infer_batch_size or batch_size * 2
    xi = torch.randn(ib, 3, size, size, device=dev)
    model.eval()
    with torch.no_grad():
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            with autocast_context(dev, use_amp):
                model(xi)
        sync()
    infer_ips = ib * steps / (time.perf_counter() - t0)
    return {
        "arch": model_config.get("arch"), "image_size": size, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "amp": use_amp, "train_batch_size": batch_size, "infer_batch_size": ib, "steps": steps,
        "train_images_per_second": train_ips, "inference_images_per_second": infer_ips,
    }
