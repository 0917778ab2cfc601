"""Commands ``alzprog train progression``, ``alzprog evaluate progression``,
``alzprog evaluate progression-roi-ablation`` and ``alzprog progress``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRANSITION_CHOICES = ("nd-vmd", "vmd-md", "md-mod", "all")


def _add_training_args(p: argparse.ArgumentParser, *, variant: bool = True) -> None:
    p.add_argument("--split", type=Path, required=True, help="split folder (train.csv, val.csv, test.csv)")
    p.add_argument("--preset", default="quick", help="packaged preset: quick (CPU minutes) or full (GPU)")
    p.add_argument("--config", type=Path, default=None, help="YAML file overriding the preset")
    p.add_argument("--pairs", type=Path, default=None,
                   help="pairs CSV (source_path, target_path, subject, transition) for longitudinal sets such as OASIS-2; "
                   "default: the phantom's longitudinal/ table next to the split's images")
    if variant:
        p.add_argument("--variant", choices=("default", "dcgan"), default=None,
                       help="default: identity-preserving U-Net + conditional ROI discriminator; dcgan: the published baseline")
    p.add_argument("--arch", choices=("deform", "lite", "unet"), default=None,
                   help="generator of the default variant: deform (smooth displacement + small residual, the presets'), "
                   "lite (fast residual U-Net) or unet (the first, heavier design)")
    p.add_argument("--roi", dest="roi", action="store_true", default=None, help="brain-ROI discriminator (preset default: on)")
    p.add_argument("--no-roi", dest="roi", action="store_false", help="discriminator judges the whole frame")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--samples-per-epoch", type=int, default=None)
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    p.add_argument("--amp", dest="amp", action="store_true", default=None, help="mixed precision on CUDA")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop each transition after this many steps (smoke tests)")
    p.add_argument("--time-limit", dest="time_limit_s", type=float, default=None, help="wall-clock cap per transition, seconds")
    p.add_argument("--threads", dest="num_threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _overrides(args: argparse.Namespace) -> dict:
    keys = ("variant", "arch", "roi", "epochs", "batch_size", "lr", "samples_per_epoch", "crop_size", "device", "amp",
            "seed", "max_steps", "time_limit_s", "num_threads", "progress")
    return {k: getattr(args, k, None) for k in keys}


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add ``progression`` to the ``train`` and ``evaluate`` groups and ``progress`` at the top."""
    p = groups["train"].add_parser(
        "progression",
        help="train the stage-transition generators (one MLflow run and registered model per transition)",
        description="Trains alzheimer-progression-<transition> on same-subject pairs of the split's train side, "
        "validates on its val side, exports a code-free artifact (safetensors + ONNX, parity-checked) and registers it: "
        "alias champion for the default variant when validation in-brain SSIM improves (or --promote), alias dcgan for --variant dcgan.",
    )
    p.add_argument("--transition", choices=TRANSITION_CHOICES, required=True)
    _add_training_args(p)
    p.add_argument("--promote", action="store_true", help="move the champion alias even if validation SSIM is not better")
    p.add_argument("--no-register", dest="register", action="store_false", help="train and export only")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <data_home>/runs/progression/...)")
    p.set_defaults(func=_train)

    p = groups["evaluate"].add_parser(
        "progression",
        help="score the champion generators and the identity / dcgan baselines against the true future",
        description="Writes OUT/report.json (per transition and for the chain: model / identity / dcgan in-brain SSIM, "
        "MSE, PSNR, stage consistency, ventricle growth share) on the split's test subjects.",
    )
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pairs", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--alias", default="champion", help="alias of the generators under test")
    p.add_argument("--classifier", default=None, help="classifier model URI (default models:/alzheimer-stage-classifier@champion)")
    p.add_argument("--max-pairs", type=int, default=None, help="evaluate at most this many pairs per transition")
    p.set_defaults(func=_evaluate)

    p = groups["evaluate"].add_parser(
        "progression-roi-ablation",
        help="train without and with the ROI discriminator at the same budget and tabulate both (logged to MLflow)",
    )
    p.add_argument("--transition", choices=TRANSITION_CHOICES[:-1], default="nd-vmd")
    p.add_argument("--out", type=Path, required=True)
    _add_training_args(p, variant=False)
    p.add_argument("--classifier", default=None)
    p.add_argument("--max-pairs", type=int, default=None)
    p.set_defaults(func=_ablation)

    p = top.add_parser(
        "progress",
        help="synthesise how one slice may look at each later stage (every output marked SYNTHETIC)",
        description="Classifies IMAGE with the champion stage classifier (unless --from-stage), then runs the champion "
        "transition generators up to Moderate Dementia. Writes DIR/step_<k>_<stage>.png and DIR/strip.png.",
    )
    p.add_argument("image", type=Path, help="a slice: PNG, JPEG, DICOM or NIfTI")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--from-stage", default=None, help="start stage (name, slug nd/vmd/md/mod or 0-3) instead of classifying")
    p.add_argument("--alias", default="champion")
    p.add_argument("--classifier", default=None, help="classifier model URI (default the champion)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_progress)


def _quiet_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (unless the user chose otherwise).

    On a CPU shared with other jobs, spinning torch threads slow every step down.
    Only effective before torch is first imported, which the CLI defers to the handlers.
    """
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train(args: argparse.Namespace) -> int:
    _quiet_openmp()
    from alzprog.training.config import load_config
    from alzprog.training.progression import train

    cfg = load_config("progression", args.preset, args.config, _overrides(args))
    results = train(args.split, args.transition, cfg, pairs_csv=args.pairs, out_dir=args.out, register=args.register, promote=args.promote)
    for r in results:
        alias = "dcgan" if r.variant == "dcgan" else "champion"
        print(json.dumps({
            "transition": r.transition, "variant": r.variant, "model": r.model_name, "version": r.version,
            f"{alias}_alias_moved": r.alias_moved, "run_id": r.run_id, "artifact": str(r.artifact_dir),
            "seconds": round(r.seconds, 1), "images_per_second": round(r.images_per_second, 2),
            "val": {k: round(v, 5) for k, v in r.metrics.items() if k.startswith("val_")},
        }))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _quiet_openmp()
    from alzprog.evaluation.progression import evaluate_progression

    evaluate_progression(args.split, args.out, pairs_csv=args.pairs, device=args.device, alias=args.alias,
                         classifier_uri=args.classifier, max_pairs=args.max_pairs)
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.json'}")
    return 0


def _ablation(args: argparse.Namespace) -> int:
    _quiet_openmp()
    from alzprog.ablation import roi_ablation
    from alzprog.training.config import load_config

    over = _overrides(args)
    over.pop("roi", None)  # the ablation sets it
    cfg = load_config("progression", args.preset, args.config, over)
    roi_ablation(args.split, args.out, cfg, transition=args.transition, pairs_csv=args.pairs,
                 classifier_uri=args.classifier, max_pairs=args.max_pairs)
    print((args.out / "roi_ablation.md").read_text())
    return 0


def _progress(args: argparse.Namespace) -> int:
    from alzprog.constants import STAGES
    from alzprog.decode import ImageDecodeError, read_slice
    from alzprog.preprocessing import canonicalize
    from alzprog.inference.chain import load_chain_generators, run_chain
    from alzprog.inference.classifier import classify_stage, load_classifier
    from alzprog.progression import step_filename, strip, synthetic_png

    try:
        gray = read_slice(args.image)
    except (ImageDecodeError, OSError) as exc:
        print(f"error: cannot read {args.image}: {exc}", file=sys.stderr)
        return 2
    canonical = canonicalize(gray)
    if args.from_stage is not None:
        from alzprog.constants import stage_index

        try:
            start = stage_index(args.from_stage)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        how = "given"
    else:
        try:
            model, config, version = load_classifier(args.classifier, device=args.device)
        except LookupError as exc:
            print(f"error: {exc}; train and register a stage classifier, or pass --from-stage", file=sys.stderr)
            return 2
        start, probs = classify_stage(canonical.image, model, config)
        how = f"classified by stage classifier v{version} (p={probs[start]:.2f})"
    try:
        generators = load_chain_generators(args.alias, device=args.device)
    except LookupError as exc:
        print(f"error: {exc}; run `alzprog train progression --transition all` first", file=sys.stderr)
        return 2
    result = run_chain(canonical.image, start, generators, canonical=True)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, step in enumerate(result.steps, start=1):
        meta = {"Stage": step.stage, "Model": f"{step.model['name']}/{step.model['version']}", "Source": args.image.name}
        path = args.out / step_filename(k, step)
        path.write_bytes(synthetic_png(step.image, meta))
        written.append(str(path))
    strip_path = args.out / "strip.png"
    strip_path.write_bytes(synthetic_png(strip(result.image, result.steps), {"Contents": "input, then synthetic steps"}, mark=False))
    print(json.dumps({"from_stage": STAGES[start], "how": how, "steps": written, "strip": str(strip_path)}, indent=2))
    return 0
