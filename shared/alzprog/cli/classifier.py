"""Commands ``alzprog train classifier``, ``alzprog evaluate classifier`` and ``alzprog explain``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME

log = logging.getLogger(__name__)

DEFAULT_MODEL_URI = f"models:/{CLASSIFIER_MODEL_NAME}@{CHAMPION_ALIAS}"


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``classifier`` to the ``train`` and ``evaluate`` groups and ``explain`` at the top level."""
    p = groups["train"].add_parser(
        "classifier",
        help="two-phase EfficientNet stage classifier on a subject-level split (MLflow + registry)",
        description="Trains on SPLIT/train.csv, selects by validation macro-F1 on SPLIT/val.csv, calibrates, "
        "exports safetensors + ONNX, logs to MLflow and registers alzheimer-stage-classifier. "
        "Values: preset YAML < --config FILE < flags. Multi-GPU: torchrun --nproc_per_node N -m alzprog train classifier ...",
    )
    p.add_argument("--split", type=Path, required=True, help="split folder from `alzprog data split`")
    p.add_argument("--preset", default="transfer", choices=("transfer", "quick", "full"),
                   help="transfer: EfficientNet-Lite0 from the packaged ImageNet weights (the default); quick: small EfficientNet from scratch for tests; full: the B4 recipe (torchvision weights)")
    p.add_argument("--config", type=Path, default=None, help="YAML file whose values override the preset")
    p.add_argument("--pretrained", choices=("imagenet", "none"), default=None, help="imagenet: the packaged Lite weights or the torch hub cache (B4); none: from scratch")
    p.add_argument("--arch", default=None, help="efficientnet_lite0|1|2 or efficientnet_b0 ... efficientnet_b7")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--phase1-epochs", type=int, default=None, help="frozen-backbone epochs")
    p.add_argument("--phase2-epochs", type=int, default=None, help="unfrozen epochs")
    p.add_argument("--lr1", type=float, default=None, help="phase-1 learning rate")
    p.add_argument("--lr2", type=float, default=None, help="phase-2 learning rate")
    p.add_argument("--imbalance", choices=("sampler", "weighted_loss", "none"), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (slower)")
    p.add_argument("--device", default=None, help="auto (CUDA > MPS > CPU), cpu, cuda, mps")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision on CUDA")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <data_home>/runs/classifier/<run id>)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--no-register", dest="register", action="store_false", help="log the run but do not register the model")
    p.add_argument("--promote", action="store_true", help="move the champion alias to this version even if not better")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="random-label control: permute stage labels across subjects (never promoted)")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                   help="no tracking server at hand: write the run's files only (implies --no-register)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_train)

    p = groups["evaluate"].add_parser(
        "classifier",
        help="evaluate a classifier on the held-out test subjects (report.json, report.md, plots)",
    )
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--model", default=DEFAULT_MODEL_URI, help=f"models:/ URI or artifact folder (default {DEFAULT_MODEL_URI})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shuffle-labels", action="store_true",
                   help="permute the test labels across subjects (null check: scores must fall to chance)")
    p.add_argument("--control", default=None,
                   help="the random-label control model (trained with --shuffle-labels), scored beside the model")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip the morphometric baseline and the ground-truth oracle")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not attach the report to the training run")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_evaluate)

    p = top.add_parser("explain", help="Grad-CAM overlay of one image and the share of saliency inside the brain")
    p.add_argument("image", type=Path, help="PNG, JPEG, DICOM or NIfTI slice")
    p.add_argument("--out", type=Path, required=True, help="overlay PNG to write")
    p.add_argument("--model", default=DEFAULT_MODEL_URI, help="models:/ URI or artifact folder")
    p.add_argument("--target", default=None, help="stage to explain (name, slug or index; default: predicted)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_explain)


def _train(args: argparse.Namespace) -> int:
    from alzprog.models.stage_classifier import PretrainedWeightsMissing
    from alzprog.training.classifier import train_classifier
    from alzprog.training.config import load_config

    overrides = {
        "pretrained": args.pretrained, "model.arch": args.arch, "model.image_size": args.image_size,
        "batch_size": args.batch_size, "phase1.epochs": args.phase1_epochs, "phase2.epochs": args.phase2_epochs,
        "phase1.lr": args.lr1, "phase2.lr": args.lr2, "imbalance": args.imbalance, "seed": args.seed,
        "deterministic": args.deterministic, "device": args.device, "amp": args.amp, "num_workers": args.num_workers,
        "threads": args.threads,
    }
    cfg = load_config("classifier", args.preset, args.config, overrides)
    try:
        result = train_classifier(
            cfg, args.split, out_dir=args.out, register=args.register, promote=args.promote,
            shuffle_labels=args.shuffle_labels, run_name=args.run_name, progress=args.progress,
            use_mlflow=args.mlflow,
        )
    except PretrainedWeightsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.model_dir is not None:
        print(json.dumps({
            "run_id": result.run_id, "model_dir": str(result.model_dir), "version": result.version,
            "promoted": result.promoted, "best_val_macro_f1": round(result.best_val_macro_f1, 4),
            "best_epoch": result.best_epoch, "temperature": round(result.temperature, 4),
        }, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from alzprog.evaluation.classifier import evaluate_classifier

    r = evaluate_classifier(
        args.split, args.model, args.out, n_boot=args.bootstrap, seed=args.seed, device=args.device,
        batch_size=args.batch_size, shuffle_labels=args.shuffle_labels, log_to_mlflow=args.mlflow,
        progress=args.progress, control=args.control, baselines=args.baselines,
    )
    s, sl = r["subject"], r["slice"]
    print(f"subject level (n={s['n_subjects']}): macro-F1 {s['macro_f1']:.3f} "
          f"[{s['macro_f1_ci'][0]:.3f}, {s['macro_f1_ci'][1]:.3f}] vs majority {s['majority_macro_f1']:.3f}; "
          f"balanced accuracy {s['balanced_accuracy']:.3f}")
    print(f"slice level (n={sl['n_slices']}): macro-F1 {sl['macro_f1']:.3f}, accuracy {sl['accuracy']:.3f} "
          f"vs majority {sl['majority_accuracy']:.3f}")
    for name, b in r.get("baselines", {}).items():
        print(f"  {name}: subject macro-F1 {b['macro_f1']:.3f} [{b['macro_f1_ci'][0]:.3f}, {b['macro_f1_ci'][1]:.3f}]")
    print(f"ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}; report: {Path(args.out) / 'report.json'}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from alzprog.artifacts import load_artifact
    from alzprog.constants import stage_index
    from alzprog.evaluation.classifier import _resolve
    from alzprog.explain import explain_image

    if not args.image.is_file():
        print(f"error: {args.image} is not a file", file=sys.stderr)
        return 2
    local_dir, _ = _resolve(args.model)
    art = load_artifact(local_dir, device=args.device)
    target = stage_index(args.target) if args.target is not None else None
    try:
        r = explain_image(art.model, art.config, args.image.read_bytes(), target)
    except ValueError as exc:  # ImageDecodeError is a ValueError with a short code
        print(f"error: cannot read {args.image}: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(r["overlay_png"])
    print(json.dumps({
        "stage": r["stage"], "probabilities": {k: round(v, 4) for k, v in r["probabilities"].items()},
        "explained_stage": art.config["class_names"][r["target"]],
        "in_brain_fraction": round(r["in_brain_fraction"], 4), "shortcut_alarm": r["shortcut_alarm"],
        "overlay": str(args.out),
    }, indent=2))
    if r["shortcut_alarm"]:
        print("warning: most of the saliency lies outside the brain mask (possible shortcut)", file=sys.stderr)
    return 0
