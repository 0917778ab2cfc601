"""Do the demo models' answers mean something? Measured through the REST API of a running stack.

    make run            # in another shell: bootstraps the demo models, starts the stack
    .venv/bin/python benchmarks/demo_through_api.py [--gateway http://127.0.0.1:8000]

On the bootstrap phantom's own held-out test subjects (``<data_home>/bootstrap/split/test.csv``,
never seen in training or validation):

- every test slice goes to ``POST /predict``; the subject's stage is the soft vote of its
  slices; subject macro-F1 and how much the probabilities differ between slices;
- each test subject's Non Demented slice (from the phantom's longitudinal truth) goes to
  ``POST /progression`` with ``from_stage=0``; every returned step is compared with the same
  subject's true image at that stage: smoothed change correlation and CSF growth ratio
  (:func:`alzprog.evaluation.progression.change_fidelity`, the metric ``alzprog evaluate
  progression`` reports), per step and over the chain.

Writes benchmarks/results/<stamp>-demo-api.json and prints a summary.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from PIL import Image
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]


def _png(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L"))


def main(argv: list[str] | None = None) -> int:
    from alzprog.constants import STAGES
    from alzprog.data.phantom import find_phantom_root, read_longitudinal
    from alzprog.metrics import classification as cm
    from alzprog.evaluation.progression import change_fidelity
    from alzprog.paths import data_home
    from alzprog.preprocessing import _banner, load_canonical

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", default="http://127.0.0.1:8000")
    p.add_argument("--split", type=Path, default=None, help="default: <data_home>/bootstrap/split")
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-chains", type=int, default=60, help="progression requests (one per test subject and slice)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    split = args.split or data_home() / "bootstrap" / "split"
    test = pd.read_csv(split / "test.csv")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    session = requests.Session()

    # --- the classifier, slice by slice, then soft voting per subject
    probs, t0 = [], time.time()
    for path in tqdm(test["path"], desc="/predict"):
        with open(path, "rb") as fh:
            r = session.post(f"{args.gateway}/predict", files={"file": (Path(path).name, fh, "image/jpeg")},
                             headers=headers, timeout=60)
        r.raise_for_status()
        probs.append([r.json()["probabilities"][s] for s in STAGES])
    predict_s = time.time() - t0
    P = np.asarray(probs)
    y = test["stage_index"].to_numpy(int)
    subj = test["subject"].astype(str).to_numpy()
    _, sp, sy = cm.subject_soft_vote(P, y, subj)
    classifier = {
        "n_slices": int(len(y)), "n_subjects": int(len(sy)),
        "subject_macro_f1": cm.macro_f1(sy, sp.argmax(1)),
        "slice_macro_f1": cm.macro_f1(y, P.argmax(1)),
        "subject_balanced_accuracy": cm.balanced_accuracy(sy, sp.argmax(1)),
        "probability_sd_between_slices": [float(v) for v in P.std(0)],
        "max_probability_range": float((P.max(0) - P.min(0)).max()),
        "distinct_predicted_stages": int(len(np.unique(P.argmax(1)))),
        "seconds": predict_s,
    }

    # --- the generators: from each test subject's Non Demented slice, against its true future
    root = find_phantom_root(test["path"].head(5))
    truth = pd.DataFrame(read_longitudinal(root))
    truth = truth[truth["subject"].isin(set(subj))]
    chains = truth[truth["stage_index"] == 0].drop_duplicates(["subject", "slice"]).head(args.max_chains)
    src, gen, tgt, msk = {k: [] for k in (1, 2, 3)}, {k: [] for k in (1, 2, 3)}, {k: [] for k in (1, 2, 3)}, {k: [] for k in (1, 2, 3)}
    t0 = time.time()
    for _, row in tqdm(list(chains.iterrows()), desc="/progression"):
        base = root / "longitudinal"
        x = load_canonical(base / row["path"])
        with open(base / row["path"], "rb") as fh:
            r = session.post(f"{args.gateway}/progression", files={"file": ("x.jpg", fh, "image/jpeg")},
                             data={"from_stage": "0"}, headers=headers, timeout=120)
        r.raise_for_status()
        steps = {s["stage_index"]: _png(s["image"]) for s in r.json()["steps"]}
        top, bottom, left, right = _banner(x.image.shape[1], x.image.shape[0])[0]
        mask = np.array(x.mask)
        mask[top:bottom, left:right] = False  # the SYNTHETIC banner hides these pixels
        for k in (1, 2, 3):
            later = truth[(truth["subject"] == row["subject"]) & (truth["slice"] == row["slice"]) & (truth["stage_index"] == k)]
            if k not in steps or later.empty:
                continue
            y_img = load_canonical(base / later["path"].iloc[0]).image
            src[k].append(x.image); gen[k].append(steps[k]); tgt[k].append(y_img); msk[k].append(mask)
    progression_s = time.time() - t0
    generators = {}
    for k in (1, 2, 3):
        if not src[k]:
            continue
        name = "chain (3 steps)" if k == 3 else f"after {k} step(s)"
        f = change_fidelity(np.stack(src[k]), np.stack(gen[k]), np.stack(tgt[k]), np.stack(msk[k]), np.stack(msk[k]))
        generators[f"{STAGES[0]} -> {STAGES[k]} ({name})"] = {**f, "n": len(src[k])}
    out = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "gateway": args.gateway, "split": str(split),
           "classifier": classifier, "generators": generators, "progression_seconds": progression_s}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}-demo-api.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    c = classifier
    print(f"classifier via /predict: subject macro-F1 {c['subject_macro_f1']:.3f} ({c['n_subjects']} test subjects, "
          f"{c['n_slices']} slices), slice macro-F1 {c['slice_macro_f1']:.3f}; probability SD between slices "
          f"{', '.join(f'{v:.3f}' for v in c['probability_sd_between_slices'])}; {c['distinct_predicted_stages']} stages predicted")
    for name, g in generators.items():
        print(f"generators via /progression, {name}: change corr {g['change_corr']:.3f}, growth ratio "
              f"{g['growth_ratio']:.3f} (n={g['n']})")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
