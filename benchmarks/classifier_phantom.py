"""The standard phantom benchmark of the stage classifier: one command, one table.

    .venv/bin/python benchmarks/classifier_phantom.py --work /tmp/clf_bench [--preset transfer]

Synthesises (or reuses) a balanced phantom of 200 subjects x 12 slices (seed 1), indexes and
splits it by subject (seed 1), trains the preset and its random-label control (the same
recipe on labels permuted across subjects), evaluates both on the held-out test subjects
beside the majority baseline, the morphometric baseline and the ground-truth-morphometry
oracle, and writes benchmarks/results/<stamp>-classifier-phantom.json plus the markdown
table docs/classifier_benchmark.md. Everything goes through the library (alzprog.*), the
same code as `alzprog train classifier` and `alzprog evaluate classifier`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/alzprog-classifier-bench"))
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--preset", default="transfer")
    p.add_argument("--phase2-epochs", type=int, default=None, help="override the preset's phase-2 epochs")
    p.add_argument("--phase2-samples", type=int, default=None, help="override the preset's phase-2 samples per epoch")
    p.add_argument("--no-control", action="store_true", help="skip the random-label control run")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "classifier_benchmark.md")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    os.environ.setdefault("ALZPROG_HOME", str(args.work / "home"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.work / 'mlflow.db'}")
    from alzprog.data.manifest import build_manifest
    from alzprog.data.phantom import synthesize
    from alzprog.data.split import split_manifest
    from alzprog.evaluation.classifier import evaluate_classifier
    from alzprog.training.classifier import train_classifier
    from alzprog.training.config import load_config

    args.work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()
    phantom = args.work / "phantom"
    if not (phantom / "phantom_summary.json").is_file():
        synthesize(phantom, n_subjects=args.subjects, seed=args.seed, mix="balanced", slices_per_subject=args.slices)
        times["synthesise"] = time.time() - t0
    manifest, split = args.work / "manifest.csv", args.work / "split"
    build_manifest(phantom, manifest)
    split_manifest(manifest, split, seed=args.seed)
    overrides = {"phase2.epochs": args.phase2_epochs, "phase2.samples_per_epoch": args.phase2_samples}
    cfg = load_config("classifier", args.preset, overrides=overrides)

    t = time.time()
    model = train_classifier(cfg, split, out_dir=args.work / "model", register=False, use_mlflow=False, progress=True)
    times["train_model"] = time.time() - t
    control_dir = None
    if not args.no_control:
        t = time.time()
        control = train_classifier(cfg, split, out_dir=args.work / "control", register=False, use_mlflow=False,
                                   shuffle_labels=True, progress=True)
        times["train_control"] = time.time() - t
        control_dir = control.model_dir
    t = time.time()
    report = evaluate_classifier(split, model.model_dir, args.work / "eval", control=control_dir, log_to_mlflow=False)
    times["evaluate"] = time.time() - t
    times["total"] = time.time() - t0

    s = report["subject"]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "phantom": {"subjects": args.subjects, "slices": args.slices, "seed": args.seed, "mix": "balanced"},
        "preset": args.preset, "config": cfg,
        "seconds": times,
        "model": {"macro_f1": s["macro_f1"], "macro_f1_ci": s["macro_f1_ci"],
                  "balanced_accuracy": s["balanced_accuracy"], "balanced_accuracy_ci": s["balanced_accuracy_ci"],
                  "per_stage_f1": {k: v["f1"] for k, v in s["per_class"].items()}, "n_subjects": s["n_subjects"],
                  "best_epoch": model.best_epoch, "best_val_macro_f1": model.best_val_macro_f1},
        "baselines": report["baselines"],
        "history": model.history,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out_json = args.results / f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}-classifier-phantom.json"
    out_json.write_text(json.dumps(result, indent=2, default=float))
    args.docs.write_text(markdown(result, out_json))
    print(args.docs.read_text())
    return 0


def _ci(v: float | None, ci: list[float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def markdown(r: dict, json_path: Path) -> str:
    """The table for docs/ (regenerated by this script)."""
    m, ph = r["model"], r["phantom"]
    lines = [
        "# Stage classifier: the standard phantom benchmark",
        "",
        f"Generated by `.venv/bin/python benchmarks/{r['command']}` on {r['date_utc']} UTC "
        f"({r['machine']['cores']} CPU cores; total {r['seconds']['total'] / 60:.1f} min). Data: "
        f"`{json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}`.",
        "",
        f"Balanced phantom, {ph['subjects']} subjects x {ph['slices']} slices (seed {ph['seed']}), split by subject; "
        f"{m['n_subjects']} held-out test subjects, soft voting over each subject's slices, 95% bootstrap "
        "intervals over subjects. Preset `" + r["preset"] + "`: "
        f"{r['config']['model']['arch']} at {r['config']['model']['image_size']} px, "
        f"feature stages {r['config']['model'].get('feature_stages', 'head')}, phase 1 {r['config']['phase1']['epochs']} "
        f"epochs, phase 2 {r['config']['phase2']['epochs']} epochs (best validation epoch {m['best_epoch']}).",
        "",
        "| | subject macro-F1 [95% CI] | balanced accuracy [95% CI] | what |",
        "|---|---|---|---|",
        f"| **model** | **{_ci(m['macro_f1'], m['macro_f1_ci'])}** | {_ci(m['balanced_accuracy'], m['balanced_accuracy_ci'])} "
        f"| `{r['preset']}` preset |",
    ]
    for name, b in r["baselines"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_ci(b['macro_f1'], b.get('macro_f1_ci'))} "
                     f"| {_ci(b['balanced_accuracy'], b.get('balanced_accuracy_ci'))} | {b['what']} |")
    lines += ["", "Per-stage F1 of the model (test subjects): " + ", ".join(
        f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in m["per_stage_f1"].items()) + ".", "",
        "Time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in r["seconds"].items()) + ".", "",
        "| epoch | phase | val slice macro-F1 | val subject macro-F1 |", "|---|---|---|---|"]
    hist = r["history"]
    last1 = max((h["epoch"] for h in hist if h["phase"] == "phase1"), default=None)
    for h in hist:
        if h["phase"] == "phase1" and h["epoch"] % 10 and h["epoch"] != last1:
            continue  # every tenth head epoch and the last one
        lines.append(f"| {h['epoch']} | {h['phase']} | {h['val_macro_f1']:.3f} | {h['val_subject_macro_f1']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
