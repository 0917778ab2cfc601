"""Classification metrics: per-class and macro scores, subject-level soft voting, majority
baseline, bootstrap confidence intervals over subjects, temperature scaling and ECE.

Plain NumPy / scikit-learn functions so training (model selection), evaluation and tests
compute every number the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from alzprog.constants import STAGES
from alzprog.inference.classifier import calibrated_probabilities as softmax  # noqa: F401 - the one softmax(z / T)

N_CLASSES = len(STAGES)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Unweighted mean F1 over ``labels`` (default: the classes present in ``y_true``)."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    labels = sorted(set(y_true.tolist())) if labels is None else list(labels)
    if not labels:
        return float("nan")
    _, _, f1, _ = precision_recall_fscore_support(y_true, np.asarray(y_pred), labels=labels, zero_division=0)
    return float(np.mean(f1))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else float("nan")


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Mean recall over ``labels`` (default: the classes present in ``y_true``)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = sorted(set(y_true.tolist())) if labels is None else list(labels)
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in labels if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def classification_summary(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and balanced accuracy over ``labels`` plus per-class P/R/F1/support."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = sorted(set(y_true.tolist())) if labels is None else list(labels)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(N_CLASSES)), zero_division=0
    )
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, labels),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, labels),
        "per_class": {
            STAGES[c]: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
            for c in range(N_CLASSES)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(N_CLASSES))).tolist(),
    }


def subject_soft_vote(
    probs: np.ndarray, labels: Sequence[int], subjects: Sequence[Any]
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Average slice probabilities per subject: returns (subject ids, mean probs, subject label).

    A subject's label is the label of its slices (one stage per subject in a split).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    subjects = np.asarray(subjects)
    ids = sorted(set(subjects.tolist()))
    mean = np.stack([probs[subjects == s].mean(axis=0) for s in ids]) if ids else np.zeros((0, probs.shape[1]))
    lab = np.array([np.bincount(labels[subjects == s]).argmax() for s in ids], dtype=np.int64)
    return ids, mean, lab


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 15) -> float:
    """ECE of the top-class confidence, equal-width bins (Guo et al. 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: Sequence[int], max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (temperature scaling).

    Optimised over log T with L-BFGS, so T stays positive; returns 1.0 for empty input.
    """
    logits_t = torch.as_tensor(np.array(logits, dtype=np.float64))
    labels_t = torch.as_tensor(np.array(labels, dtype=np.int64))
    if logits_t.numel() == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    # Clamp to a sane range: a perfectly separable validation set drives T towards 0.
    return float(min(max(t, 0.05), 20.0))


def majority_class(train_labels: Sequence[int]) -> int:
    """Most frequent class of the training labels (lowest index on ties)."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=N_CLASSES)
    return int(counts.argmax())


def bootstrap_over_subjects(
    subject_ids: Sequence[Any],
    statistic,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, np.ndarray]:
    """Percentile CI of ``statistic(sampled_subject_ids)`` over subjects resampled with replacement.

    ``statistic`` receives an array of subject ids (with repeats) and returns a float (NaN
    samples, e.g. a resample with a single class, are dropped). Returns (low, high, samples).
    """
    ids = np.asarray(list(subject_ids), dtype=object)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        pick = ids[rng.integers(0, len(ids), len(ids))]
        v = statistic(pick)
        if v == v:
            samples.append(v)
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan"), arr
    return float(np.quantile(arr, alpha / 2)), float(np.quantile(arr, 1 - alpha / 2)), arr
