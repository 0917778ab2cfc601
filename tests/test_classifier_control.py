"""Random-label control: with labels permuted across subjects, test scores stay at chance.

Data: the tiny phantom's longitudinal folder holds every subject at all four stages. Each
(subject, stage) pair becomes one pseudo-subject with one stage, and the split is by the REAL
subject (6 train / 2 validation / 4 test), so the test anatomy is unseen and every test
subject appears at each stage: 16 test pseudo-subjects, 4 per stage, chance accuracy 0.25.

Statistics: a model whose predictions are independent of the true labels gets
X ~ Binomial(16, 0.25) test subjects right; P(X >= 9) = 0.0075, so "accuracy <= 0.5" rarely
fails a model at chance. The positive control (the same recipe on true labels learning the
stage) needs far more steps than a unit test can afford on a shared CPU; it is the realistic
run in docs/classifier.md, where the true-label model is compared with this control.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alzprog.cli import main as cli_main

RUN = ["--preset", "quick", "--image-size", "48", "--phase1-epochs", "1", "--phase2-epochs", "3",
       "--no-mlflow", "--no-progress", "--seed", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def longitudinal_split(tiny_phantom, tmp_path_factory):
    root = tiny_phantom / "longitudinal"
    lon = pd.read_csv(root / "longitudinal.csv", dtype={"subject": str})
    frame = pd.DataFrame({
        "path": [str((root / p).resolve()) for p in lon["path"]],
        "stage": lon["stage"],
        "stage_index": lon["stage_index"].astype(int),
        "subject": lon["subject"] + "-s" + lon["stage_index"].astype(str),
        "session": 1, "acquisition": 1, "slice": lon["slice"],
    })
    real = np.array(sorted(lon["subject"].unique()), dtype=object)
    real = real[np.random.default_rng(0).permutation(len(real))]
    sides = {"train": real[:6], "val": real[6:8], "test": real[8:]}
    out = tmp_path_factory.mktemp("longitudinal_split")
    for side, subjects in sides.items():
        frame[lon["subject"].isin(subjects)].to_csv(out / f"{side}.csv", index=False)
    return out


@pytest.mark.slow
def test_shuffled_labels_stay_at_chance(longitudinal_split, tmp_path):
    run = tmp_path / "shuffled"
    assert cli_main(["train", "classifier", "--split", str(longitudinal_split), "--out", str(run), *RUN,
                     "--shuffle-labels"]) == 0
    train_report = json.loads((run / "train_report.json").read_text())
    # The labels really were permuted: about 1/4 of the 24 training pseudo-subjects keep theirs.
    assert train_report["shuffle_labels"] is True
    assert train_report["shuffled_label_agreement"] <= 0.5
    assert cli_main(["evaluate", "classifier", "--split", str(longitudinal_split), "--model", str(run / "model"),
                     "--out", str(run / "eval"), "--bootstrap", "200", "--no-mlflow", "--no-progress"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["model"]["trained_with_shuffled_labels"] is True
    assert report["subject"]["n_subjects"] == 16 and len(report["evaluable_stages"]) == 4
    assert report["subject"]["accuracy"] <= 0.5
    assert report["slice"]["accuracy"] <= 0.5
    # Its interval covers chance: nothing it learned from permuted labels transfers to new subjects.
    lo, hi = report["subject"]["balanced_accuracy_ci"]
    assert lo <= 0.25 <= hi
