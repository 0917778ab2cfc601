"""Honest evaluation of a stage classifier on the held-out test subjects.

Slice level and subject level (soft voting: a subject's slice probabilities are averaged),
the majority-class baseline beside every figure, 95% bootstrap intervals over subjects,
stages with fewer than 2 test subjects marked not evaluable, and calibration (ECE before and
after the temperature fitted on the validation split at training time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from alzprog.constants import STAGES
from alzprog.metrics import classification as cm

log = logging.getLogger(__name__)

MIN_TEST_SUBJECTS = 2
N_CLASSES = len(STAGES)


def _fast_scores(y: np.ndarray, p: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, macro-F1, balanced accuracy) over the ``labels`` present in ``y``; NumPy only
    so the bootstrap can call it thousands of times."""
    if len(y) == 0:
        return float("nan"), float("nan"), float("nan")
    conf = np.bincount(y * N_CLASSES + p, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(1).astype(np.float64)
    predicted = conf.sum(0).astype(np.float64)
    acc = float(tp.sum() / len(y))
    present = [c for c in labels if support[c] > 0]
    if not present:
        return acc, float("nan"), float("nan")
    f1 = [2 * tp[c] / (support[c] + predicted[c]) if support[c] + predicted[c] > 0 else 0.0 for c in present]
    rec = [tp[c] / support[c] for c in present]
    return acc, float(np.mean(f1)), float(np.mean(rec))


def _level_report(
    y: np.ndarray,
    pred: np.ndarray,
    majority: int,
    evaluable: list[int],
    groups: list[np.ndarray],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Scores, majority baseline and bootstrap CIs at one level.

    ``groups[i]`` holds the row indices of subject i, so resampling subjects resamples rows
    (for the subject level each group is a single row).
    """
    labels = np.asarray(evaluable, dtype=np.int64)
    base = np.full_like(y, majority)
    acc, f1, bacc = _fast_scores(y, pred, labels)
    macc, mf1, mbacc = _fast_scores(y, base, labels)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        rows = np.concatenate([groups[i] for i in pick])
        samples.append(_fast_scores(y[rows], pred[rows], labels) + _fast_scores(y[rows], base[rows], labels))
    arr = np.asarray(samples, dtype=np.float64)

    def ci(col: int) -> list[float]:
        v = arr[:, col]
        v = v[~np.isnan(v)]
        return [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] if v.size else [float("nan")] * 2

    summary = cm.classification_summary(y, pred, evaluable)
    per_class = {}
    for c, stage in enumerate(STAGES):
        row = dict(summary["per_class"][stage])
        row["evaluable"] = c in evaluable
        if c not in evaluable:
            # Fewer than MIN_TEST_SUBJECTS test subjects: a number would be noise, not evidence.
            row.update(precision=None, recall=None, f1=None)
        per_class[stage] = row
    return {
        "accuracy": acc, "accuracy_ci": ci(0),
        "macro_f1": f1, "macro_f1_ci": ci(1),
        "balanced_accuracy": bacc, "balanced_accuracy_ci": ci(2),
        "majority_accuracy": macc, "majority_accuracy_ci": ci(3),
        "majority_macro_f1": mf1, "majority_macro_f1_ci": ci(4),
        "majority_balanced_accuracy": mbacc, "majority_balanced_accuracy_ci": ci(5),
        "per_class": per_class,
        "confusion_matrix": summary["confusion_matrix"],
    }


def _resolve(model: str | Path) -> tuple[Path, dict[str, Any]]:
    """A ``models:/`` URI (through the registry cache) or a local artifact folder."""
    s = str(model)
    if s.startswith("models:/"):
        from alzprog.registry import resolve_model

        r = resolve_model(s)
        return r.local_dir, {"uri": s, "name": r.name, "version": r.version}
    return Path(s), {"uri": s, "name": None, "version": None}


def check_unseen_subjects(config: dict[str, Any], subjects: list[str]) -> None:
    """Refuse test subjects the model was trained or validated on (fingerprints in its config)."""
    from alzprog.data.split import LeakageError
    from alzprog.training.classifier import subject_fingerprint

    seen = set(config.get("seen_subject_fingerprints") or [])
    if not seen:
        log.warning("model config has no subject fingerprints; cannot check test subjects against its training data")
        return
    leaked = sorted(s for s in subjects if subject_fingerprint(s) in seen)
    if leaked:
        shown = ", ".join(leaked[:10]) + (f" ... ({len(leaked)} in all)" if len(leaked) > 10 else "")
        raise LeakageError(f"{len(leaked)} test subject(s) were used to train or validate this model: {shown}")


def evaluate_classifier(
    split_dir: str | Path,
    model: str | Path,
    out_dir: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 128,
    shuffle_labels: bool = False,
    log_to_mlflow: bool = True,
    progress: bool = True,
    control: str | Path | None = None,
    baselines: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on ``split_dir/test.csv`` and write ``report.json``, ``report.md`` and plots.

    ``model`` is ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or an artifact folder.
    With ``shuffle_labels`` the test labels are permuted across subjects (a null check of the
    pipeline: every score must fall to chance). ``control``: the random-label control model
    (trained with ``--shuffle-labels`` on the same split), scored on the same subjects. With
    ``baselines`` the morphometric baseline and, on the phantom, the ground-truth-morphometry
    oracle are fitted on the training subjects and scored beside the model. Returns the report dict.
    """
    from alzprog.artifacts import load_artifact
    from alzprog.data.dataset import CanonicalCache, StageSliceDataset
    from alzprog.data.split import load_split, split_hash
    from alzprog.preprocessing import CANONICAL_SIZE
    from alzprog.metrics.plots import confusion_matrix_png
    from alzprog.training.classifier import predict_logits, shuffle_subject_labels
    from alzprog.training.common import select_device

    split_dir, out = Path(split_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = load_split(split_dir, ("train", "test"))  # leakage guard over the whole split
    test = frames["test"].reset_index(drop=True)
    if test.empty:
        raise ValueError(f"{split_dir}/test.csv has no rows")
    local_dir, model_info = _resolve(model)
    dev = select_device(device)
    art = load_artifact(local_dir, device=dev)
    config = art.config
    check_unseen_subjects(config, sorted(test["subject"].astype(str).unique()))
    if shuffle_labels:
        test = shuffle_subject_labels(test, seed + 101)

    size = int(config["image_size"])
    cache = CanonicalCache.build(list(test["path"].astype(str)), size=CANONICAL_SIZE, progress=progress)
    ds = StageSliceDataset(test, cache, size, False, config["mean"], config["std"])
    logits = predict_logits(art.model, ds, dev, batch_size, None, False, desc="test", progress=progress)
    temperature = float(config.get("temperature", 1.0))
    probs_raw = cm.softmax(logits, 1.0)
    probs = cm.softmax(logits, temperature)
    y = ds.labels
    subj_of_row = np.asarray(ds.subjects)[ds.subject_idx]

    subject_ids, sprobs, slabels = cm.subject_soft_vote(probs, y, subj_of_row)
    spred = sprobs.argmax(1)
    n_subjects_per_stage = np.bincount(slabels, minlength=N_CLASSES)
    evaluable = [c for c in range(N_CLASSES) if n_subjects_per_stage[c] >= MIN_TEST_SUBJECTS]
    not_evaluable = {
        STAGES[c]: f"{int(n_subjects_per_stage[c])} test subject(s) (< {MIN_TEST_SUBJECTS})"
        for c in range(N_CLASSES) if c not in evaluable
    }
    # The baseline predicts the most frequent stage among the *training* subjects.
    train_subject_stage = frames["train"].groupby("subject")["stage_index"].agg(lambda s: int(s.mode().iloc[0]))
    majority = cm.majority_class(train_subject_stage.to_numpy())

    row_groups = [np.flatnonzero(subj_of_row == s) for s in subject_ids]
    slice_rep = _level_report(y, probs.argmax(1), majority, evaluable, row_groups, n_boot, seed)
    subj_rep = _level_report(slabels, spred, majority, evaluable, [np.array([i]) for i in range(len(subject_ids))],
                             n_boot, seed)
    slice_rep["n_slices"] = int(len(y))
    subj_rep["n_subjects"] = int(len(subject_ids))

    def subject_level(p: np.ndarray) -> dict[str, Any]:
        _, sp, _ = cm.subject_soft_vote(p, y, subj_of_row)
        rep = _level_report(slabels, sp.argmax(1), majority, evaluable, [np.array([i]) for i in range(len(subject_ids))],
                            n_boot, seed)
        return {k: rep[k] for k in ("macro_f1", "macro_f1_ci", "balanced_accuracy", "balanced_accuracy_ci", "per_class")}

    compared: dict[str, Any] = {
        "majority": {"macro_f1": subj_rep["majority_macro_f1"], "macro_f1_ci": subj_rep["majority_macro_f1_ci"],
                     "balanced_accuracy": subj_rep["majority_balanced_accuracy"],
                     "balanced_accuracy_ci": subj_rep["majority_balanced_accuracy_ci"],
                     "what": f"always {STAGES[majority]} (the most frequent training stage)"},
    }
    if control is not None:
        c_dir, c_info = _resolve(control)
        c_art = load_artifact(c_dir, device=dev)
        check_unseen_subjects(c_art.config, sorted(test["subject"].astype(str).unique()))
        c_ds = StageSliceDataset(test, cache, int(c_art.config["image_size"]), False, c_art.config["mean"], c_art.config["std"])
        c_logits = predict_logits(c_art.model, c_ds, dev, batch_size, None, False, desc="control", progress=progress)
        compared["random_label_control"] = {
            **subject_level(cm.softmax(c_logits, float(c_art.config.get("temperature", 1.0)))),
            "what": "the same recipe trained on labels permuted across subjects", "model": c_info,
            "trained_with_shuffled_labels": bool((c_art.config.get("training") or {}).get("shuffle_labels", False)),
        }
    if baselines:
        from alzprog.evaluation.baselines import morphometric_baseline, oracle_baseline

        train_frame = frames["train"].reset_index(drop=True)
        compared["morphometric"] = {
            **subject_level(morphometric_baseline(train_frame, test, progress=progress, seed=seed)),
            "what": "logistic regression on our image morphometry (brain, CSF, ventricle, cortical-rim measures), subject soft voting",
        }
        oracle = oracle_baseline(train_frame, test, seed=seed)
        if oracle is not None:
            compared["ground_truth_oracle"] = {
                **subject_level(oracle),
                "what": "the same regression on the phantom's true areas (ventricle, hippocampus, cortex / brain; brain area)",
            }

    sub_png = confusion_matrix_png(subj_rep["confusion_matrix"], out / "confusion_matrix_subject.png",
                             f"test subjects (n={len(subject_ids)}), soft voting")
    sl_png = confusion_matrix_png(slice_rep["confusion_matrix"], out / "confusion_matrix_slice.png",
                            f"test slices (n={len(y)})")
    rel_png = _reliability_png(probs_raw, probs, y, out / "reliability.png", temperature)
    try:
        s_hash = split_hash(split_dir)
    except FileNotFoundError:
        s_hash = None
    report: dict[str, Any] = {
        "model": {**model_info, "dir": str(local_dir), "arch": config.get("arch"), "image_size": size,
                  "temperature": temperature, "training_run_id": (config.get("training") or {}).get("run_id"),
                  "trained_with_shuffled_labels": bool((config.get("training") or {}).get("shuffle_labels", False))},
        "split": {"dir": str(split_dir), "sha256": s_hash},
        "test_labels_shuffled": shuffle_labels,
        "majority_class": STAGES[majority],
        "evaluable_stages": [STAGES[c] for c in evaluable],
        "not_evaluable_stages": not_evaluable,
        "subject": subj_rep,
        "slice": slice_rep,
        "baselines": compared,
        "ece_before": cm.expected_calibration_error(probs_raw, y),
        "ece_after": cm.expected_calibration_error(probs, y),
        "n_bootstrap": n_boot,
        "bootstrap": "95% percentile intervals, subjects resampled with replacement",
        "plots": [p.name for p in (sub_png, sl_png, rel_png)],
    }
    (out / "report.json").write_text(json.dumps(_nan_to_none(report), indent=2, allow_nan=False))
    (out / "report.md").write_text(report_markdown(report))
    log.info("test subject macro-F1 %.3f [%.3f, %.3f] vs majority %.3f; report in %s",
             subj_rep["macro_f1"], *subj_rep["macro_f1_ci"], subj_rep["majority_macro_f1"], out)
    run_id = report["model"]["training_run_id"]
    if log_to_mlflow and run_id and not str(run_id).startswith("offline-"):
        _log_to_run(report, out)
    if log_to_mlflow:
        from alzprog.model_card import record_classifier_evaluation

        record_classifier_evaluation(report)  # the held-out figures on the version: the model card's
    return report


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON: a figure that cannot be computed is null, not NaN."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _log_to_run(report: dict[str, Any], out: Path) -> None:
    """Attach the evaluation to the model's training run (best effort: MLflow may be down)."""
    try:
        from alzprog.registry import client

        c = client()
        run_id = report["model"]["training_run_id"]
        c.get_run(run_id)
        prefix = "test_shuffled_" if report["test_labels_shuffled"] else "test_"
        for level in ("subject", "slice"):
            for k in ("macro_f1", "accuracy", "balanced_accuracy", "majority_macro_f1", "majority_accuracy"):
                v = report[level][k]
                if v == v:
                    c.log_metric(run_id, f"{prefix}{level}_{k}", float(v))
        c.log_metric(run_id, f"{prefix}ece_before", float(report["ece_before"]))
        c.log_metric(run_id, f"{prefix}ece_after", float(report["ece_after"]))
        c.log_artifacts(run_id, str(out), artifact_path="evaluation" + ("_shuffled" if report["test_labels_shuffled"] else ""))
    except Exception as exc:  # noqa: BLE001 - the report on disk is the primary output
        log.warning("could not log the evaluation to MLflow: %s", exc)


def _reliability_png(raw: np.ndarray, cal: np.ndarray, y: np.ndarray, path: Path, temperature: float, n_bins: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    edges = np.linspace(0, 1, n_bins + 1)
    for probs, label in ((raw, "T=1"), (cal, f"T={temperature:.2f}")):
        conf = probs.max(1)
        correct = probs.argmax(1) == y
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (conf > lo) & (conf <= hi)
            if m.any():
                xs.append(conf[m].mean())
                ys.append(correct[m].mean())
        ax.plot(xs, ys, "-o", ms=3, label=f"{label} (ECE {cm.expected_calibration_error(probs, y):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability, test slices", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def report_markdown(r: dict[str, Any]) -> str:
    """The human-readable report: every figure next to its majority baseline, with 95% CIs."""
    m = r["model"]
    lines = [
        f"# Stage classifier evaluation: {m.get('name') or m['dir']}" + (f" v{m['version']}" if m.get("version") else ""),
        "",
        f"Held-out test subjects of `{r['split']['dir']}` (split sha256 {str(r['split']['sha256'])[:12]}).",
        f"Majority baseline: always `{r['majority_class']}` (most frequent stage among training subjects).",
        "Intervals: " + r["bootstrap"] + f", {r['n_bootstrap']} resamples.",
    ]
    if r["test_labels_shuffled"]:
        lines.append("\n**Test labels permuted across subjects (null check): scores must be at chance.**")
    if m.get("trained_with_shuffled_labels"):
        lines.append("\n**Model trained on labels permuted across subjects (random-label control).**")
    if r["not_evaluable_stages"]:
        lines.append("")
        lines.append("Not evaluable (fewer than 2 test subjects): " + "; ".join(
            f"{k}: {v}" for k, v in r["not_evaluable_stages"].items()))
    lines += ["", "| level | n | metric | model | majority baseline |", "|---|---|---|---|---|"]
    for level, n_key in (("subject", "n_subjects"), ("slice", "n_slices")):
        d = r[level]
        for k in ("macro_f1", "balanced_accuracy", "accuracy"):
            lines.append(f"| {level} | {d[n_key]} | {k.replace('_', ' ')} | {_fmt(d[k], d[k + '_ci'])} "
                         f"| {_fmt(d['majority_' + k], d['majority_' + k + '_ci'])} |")
    if r.get("baselines"):
        lines += ["", "## The model beside its baselines (test subjects, soft voting)", "",
                  "| | subject macro-F1 [95% CI] | balanced accuracy [95% CI] | what |", "|---|---|---|---|",
                  f"| **model** | **{_fmt(r['subject']['macro_f1'], r['subject']['macro_f1_ci'])}** "
                  f"| {_fmt(r['subject']['balanced_accuracy'], r['subject']['balanced_accuracy_ci'])} | this model |"]
        for name, b in r["baselines"].items():
            lines.append(f"| {name.replace('_', ' ')} | {_fmt(b['macro_f1'], b.get('macro_f1_ci'))} "
                         f"| {_fmt(b['balanced_accuracy'], b.get('balanced_accuracy_ci'))} | {b['what']} |")
    lines += ["", f"Calibration (test slices): ECE {r['ece_before']:.4f} before, {r['ece_after']:.4f} after "
              f"temperature scaling (T={m['temperature']:.3f}, fitted on validation).", ""]
    for level in ("subject", "slice"):
        lines += [f"## Per stage, {level} level", "", "| stage | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for stage, row in r[level]["per_class"].items():
            if row["evaluable"]:
                lines.append(f"| {stage} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
            else:
                lines.append(f"| {stage} | not evaluable | | | {row['support']} |")
        lines.append("")
    lines += ["![subject confusion matrix](confusion_matrix_subject.png)", "",
              "![slice confusion matrix](confusion_matrix_slice.png)", "", "![reliability](reliability.png)", ""]
    return "\n".join(lines)
