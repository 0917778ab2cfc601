"""Which ImageNet Lite0 features carry the stage? A linear probe per stage output and input size.

    .venv/bin/python benchmarks/lite_linear_probe.py PHANTOM_MANIFEST.csv --sizes 224,320,384

For every slice of the manifest (canonicalised by the one preprocessing path), the packaged
ImageNet Lite0 is run frozen; each stage's output is average-pooled (and, beside it, mean and
standard deviation pooled); a standardised logistic regression (C = 0.1) is scored with
5-fold GroupKFold by subject, per slice and per subject (soft voting). The morphometric
features of alzprog.morphometry are probed the same way. The figures in docs/classifier.md
("Why a multi-scale head at 384 px") come from this script.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from alzprog.models import efficientnet_lite as lite
    from alzprog.morphometry import measure
    from alzprog.preprocessing import classifier_input, load_canonical

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest")
    p.add_argument("--sizes", default="224,320,384")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    man = pd.read_csv(args.manifest)
    canon = [load_canonical(path) for path in man["path"]]
    y, groups = man["stage_index"].to_numpy(), man["subject"].to_numpy()
    model = lite.build_efficientnet_lite("efficientnet_lite0")
    model.load_state_dict(lite.pretrained_state_dict("efficientnet_lite0"))
    model.eval()

    def probe(x: np.ndarray, name: str) -> None:
        probs = np.zeros((len(y), 4))
        for tr, te in GroupKFold(5).split(x, y, groups):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
            clf.fit(x[tr], y[tr])
            probs[te] = clf.predict_proba(x[te])
        frame = pd.DataFrame(probs).assign(g=groups, y=y).groupby("g").mean()
        subject_f1 = f1_score(frame["y"].astype(int), frame[[0, 1, 2, 3]].to_numpy().argmax(1), average="macro")
        print(f"| {name} | {f1_score(y, probs.argmax(1), average='macro'):.3f} | {subject_f1:.3f} |", flush=True)

    print("| features | slice macro-F1 | subject macro-F1 |\n|---|---|---|")
    probe(np.stack([measure(c.image, c.mask).features() for c in canon]), "morphometry (alzprog.morphometry)")
    for size in (int(s) for s in args.sizes.split(",")):
        pooled: dict[int, list[np.ndarray]] = {}
        with torch.no_grad():
            for i in range(0, len(canon), 32):
                x = torch.stack([classifier_input(c.image, size, lite.INPUT_MEAN, lite.INPUT_STD) for c in canon[i:i + 32]])
                for j, layer in enumerate(model.features):
                    x = layer(x)
                    if j >= 2:
                        pooled.setdefault(j, []).append(torch.cat([x.mean((2, 3)), x.flatten(2).std(2)], 1).numpy())
        feats = {j: np.concatenate(v) for j, v in pooled.items()}
        for j, f in feats.items():
            c = f.shape[1] // 2
            label = "head conv" if j == len(model.features) - 1 else f"stage {j}"
            probe(f[:, :c], f"{size} px, {label}, mean")
            probe(f, f"{size} px, {label}, mean + sd")
        probe(np.concatenate([feats[3][:, : feats[3].shape[1] // 2], feats[4][:, : feats[4].shape[1] // 2]], 1),
              f"{size} px, stages 3 + 4, mean")
        probe(np.concatenate([feats[3], feats[4]], 1), f"{size} px, stages 3 + 4, mean + sd (the transfer preset's head)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
