"""Commands ``alzprog bootstrap`` (train, register and promote demo champions when none exist) and
``alzprog serving quantize`` (the int8 graph of a registered classifier and its admission check)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction], top: argparse._SubParsersAction) -> None:
    """Add the top-level ``bootstrap`` command."""
    p = top.add_parser(
        "bootstrap",
        help="give an empty registry working champions (phantom + quick models), under 10 minutes on a CPU",
        description="When the registry (MLFLOW_TRACKING_URI, else the local sqlite store) has no champion for "
        "the stage classifier or a transition generator: synthesise a phantom, split it by subject, train the "
        "missing quick models, register them and set the champion alias. Existing champions are kept. "
        "Prints the time of every step.",
    )
    p.add_argument("--plan", choices=("quick", "tiny"), default="quick", help="quick (make run) or tiny (tests, seconds)")
    p.add_argument("--split", type=Path, default=None, help="reuse this split folder instead of synthesising a phantom")
    p.add_argument("--work-dir", type=Path, default=None, help="where the phantom and training outputs go (default DATA/bootstrap)")
    p.add_argument("--force", action="store_true", help="train and promote all four even when champions exist")
    p.add_argument("--check", action="store_true", help="only report whether champions exist (exit 0 if all, 1 if not)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip the held-out evaluation (the model card's figures); leave it for --card-figures")
    p.add_argument("--card-figures", action="store_true",
                   help="only run the evaluation a --no-evaluate bootstrap left pending")
    p.set_defaults(func=_bootstrap)

    serving = top.add_parser("serving", help="prepare registered models for serving")
    sub = serving.add_subparsers(dest="serving_command", metavar="COMMAND")
    serving.set_defaults(func=lambda args, p=serving: (p.print_help(), 2)[1])
    q = sub.add_parser(
        "quantize",
        help="build the int8 ONNX of a registered stage classifier, check it against fp32, record both",
        description="Static int8 quantization (ONNX Runtime, per-channel weights) of a registered stage classifier, "
        "calibrated on training slices of its own split; then fp32 and int8 are compared on the split's held-out test "
        "subjects (subject macro-F1, calibrated probabilities, OOD flags) against alzprog.quantization.INT8_TOLERANCE. "
        "The int8 graph and the check are recorded on the version (a new run's artifacts, version tags), passed or "
        "not; the classifier service serves int8 only where it passed (CLASSIFIER_PRECISION). Exit 0 when the check "
        "passed, 1 when it did not.",
    )
    q.add_argument("--model", default=None, help="registered model name (default: the stage classifier)")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--version", default=None, help="model version number")
    which.add_argument("--alias", default=None, help="model alias (default: champion)")
    q.add_argument("--split", type=Path, default=None,
                   help="the model's split folder (default: the split logged with its training run)")
    q.add_argument("--calibration-slices", type=int, default=None, help="training slices to calibrate on (default 128)")
    q.add_argument("--format", choices=("qdq", "qoperator"), default=None, help="ONNX quantization format (default qoperator, the faster one measured)")
    q.add_argument("--out", type=Path, default=None, help="also keep the int8 graph and the check JSON in this folder")
    q.set_defaults(func=_quantize)


def _bootstrap(args: argparse.Namespace) -> int:
    from alzprog.bootstrap import bootstrap, champion_versions, evaluate_pending

    if args.check:
        versions = champion_versions()
        for name, version in versions.items():
            print(f"{name}: {'v' + version if version else 'no champion'}")
        return 0 if all(versions.values()) else 1
    if args.card_figures:
        if not evaluate_pending(args.work_dir):
            print("no evaluation pending")
        return 0
    report = bootstrap(args.plan, work_dir=args.work_dir, split_dir=args.split, force=args.force,
                       evaluate=not args.no_evaluate)
    for line in report.trained:
        print(f"trained: {line}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import json

    from alzprog import quantization
    from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME

    name = args.model or CLASSIFIER_MODEL_NAME
    uri = f"models:/{name}/{args.version}" if args.version else f"models:/{name}@{args.alias or CHAMPION_ALIAS}"
    kwargs = {}
    if args.calibration_slices is not None:
        kwargs["calibration_slices"] = args.calibration_slices
    if args.format is not None:
        kwargs["fmt"] = args.format
    result = quantization.quantize_and_record(uri, split_dir=args.split, out_dir=args.out, **kwargs)
    check = result.check
    print(json.dumps({"model": result.record["model"], "run_id": result.record["run_id"], "passed": check.passed,
                      "reasons": check.reasons, "macro_f1_fp32": check.macro_f1_fp32, "macro_f1_int8": check.macro_f1_int8,
                      "max_abs_prob": check.max_abs_prob, "mean_abs_prob": check.mean_abs_prob, "ood": check.ood,
                      "calibration_slices": result.record["calibration"]["slices"],
                      "format": result.record["quantization"]["format"]}, indent=2))
    return 0 if check.passed else 1
