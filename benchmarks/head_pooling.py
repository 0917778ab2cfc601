"""How should the transfer head pool the tapped Lite0 stages? Held-out comparison on the standard benchmark's split.

    .venv/bin/python benchmarks/head_pooling.py --work /tmp/clf_bench

Run after `benchmarks/classifier_phantom.py --work DIR` (it reuses DIR/split and DIR/home's
canonical cache). The frozen packaged ImageNet Lite0 is run once over the train, validation and
test slices at 384 px; each of stages 2-5 is pooled three ways (channel means, channel spatial
standard deviations, a 3 x 3 grid of means). For each pooling a standardised, class-balanced
logistic regression is fitted on the training slices, its C chosen on the validation subjects'
macro-F1, and scored on the test subjects (soft voting) with a 95 % bootstrap interval; the
same recipe on labels permuted across subjects is the random-label control. Prints a markdown
table (docs/classifier.md, "Pooling the tapped stages").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

TAPS = (2, 3, 4, 5)
HEADS = {
    "mean, stages 3 + 4 (the earlier preset)": ["mean3", "mean4"],
    "mean + sd, stages 3 + 4 (the transfer preset)": ["mean3", "mean4", "std3", "std4"],
    "mean, stages 2-5": ["mean2", "mean3", "mean4", "mean5"],
    "mean + sd, stages 2-5": ["mean2", "mean3", "mean4", "mean5", "std2", "std3", "std4", "std5"],
    "3 x 3 grid of means, stages 3 + 4": ["grid3", "grid4"],
}


def extract(work: Path, size: int) -> dict[str, dict[str, np.ndarray]]:
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from alzprog.data.dataset import CanonicalCache, StageSliceDataset, classifier_batch
    from alzprog.data.split import load_split
    from alzprog.models.stage_classifier import build_stage_classifier, load_imagenet_weights
    from alzprog.preprocessing import CANONICAL_SIZE
    from alzprog.training.classifier import model_config_from
    from alzprog.training.config import load_config

    cfg = load_config("classifier", "transfer", overrides={"model.feature_stages": list(TAPS), "model.image_size": size})
    mc = model_config_from(cfg)
    model = load_imagenet_weights(build_stage_classifier(mc), mc["arch"]).eval()
    frames = load_split(work / "split", ("train", "val", "test"))
    cache = CanonicalCache.build(list(pd.concat([f["path"] for f in frames.values()]).astype(str)),
                                 size=CANONICAL_SIZE, progress=True)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, df in frames.items():
        ds = StageSliceDataset(df, cache, size, False, tuple(mc["mean"]), tuple(mc["std"]), pixels=True)
        acc: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for xb, _, _ in tqdm(DataLoader(ds, batch_size=32), desc=name):
                x = classifier_batch(xb, ds.mean, ds.std, augment=False)
                for i, layer in enumerate(model.features):
                    x = layer(x)
                    if i in TAPS:
                        acc.setdefault(f"mean{i}", []).append(x.mean((2, 3)).numpy())
                        acc.setdefault(f"std{i}", []).append(x.std((2, 3), unbiased=False).numpy())
                        acc.setdefault(f"grid{i}", []).append(torch.flatten(F.adaptive_avg_pool2d(x, 3), 1).numpy())
        out[name] = {k: np.concatenate(v) for k, v in acc.items()}
        out[name]["y"] = np.asarray(ds.labels)
        out[name]["s"] = np.asarray(ds.subjects)[ds.subject_idx]
    return out


def subject_scores(p: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    subjects = np.unique(s)
    return (np.array([y[s == u][0] for u in subjects]), np.array([p[s == u].mean(0) for u in subjects]))


def permuted(y: np.ndarray, s: np.ndarray, seed: int) -> np.ndarray:
    subjects = np.unique(s)
    label = np.array([y[s == u][0] for u in subjects])[np.random.default_rng(seed).permutation(len(subjects))]
    mapping = dict(zip(subjects, label))
    return np.array([mapping[u] for u in s])


def fit_and_score(d, keys: list[str], control: bool, cs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    x = {n: np.concatenate([d[n][k] for k in keys], 1) for n in d}
    ytr, yva = d["train"]["y"], d["val"]["y"]
    if control:
        ytr, yva = permuted(ytr, d["train"]["s"], 1), permuted(yva, d["val"]["s"], 2)
    scaler = StandardScaler().fit(x["train"])
    best = None
    for c in cs:
        m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(x["train"]), ytr)
        ys, ps = subject_scores(m.predict_proba(scaler.transform(x["val"])), yva, d["val"]["s"])
        f = f1_score(ys, ps.argmax(1), average="macro")
        if best is None or f > best[0]:
            best = (f, c, m)
    ys, ps = subject_scores(best[2].predict_proba(scaler.transform(x["test"])), d["test"]["y"], d["test"]["s"])
    pred = ps.argmax(1)
    rng = np.random.default_rng(0)
    boot = [f1_score(ys[i], pred[i], average="macro") for i in (rng.integers(0, len(ys), len(ys)) for _ in range(1000))]
    return {"C": best[1], "val": best[0], "test": f1_score(ys, pred, average="macro"),
            "lo": float(np.percentile(boot, 2.5)), "hi": float(np.percentile(boot, 97.5))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the --work folder of benchmarks/classifier_phantom.py")
    p.add_argument("--size", type=int, default=384)
    args = p.parse_args(argv)
    os.environ.setdefault("ALZPROG_HOME", str(args.work / "home"))
    d = extract(args.work, args.size)
    print("| head pooling | C | val subject F1 | test subject macro-F1 [95% CI] | control (permuted labels) |")
    print("|---|---|---|---|---|")
    for name, keys in HEADS.items():
        r, c = fit_and_score(d, keys, False), fit_and_score(d, keys, True)
        print(f"| {name} | {r['C']:g} | {r['val']:.3f} | {r['test']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | "
              f"{c['test']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
