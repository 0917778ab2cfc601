"""The `transfer` preset (packaged ImageNet Lite0, multi-scale head, phase 1 on cached features)
and the baselines every classifier report carries, on the tiny phantom."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from alzprog.cli import main as cli_main

TRANSFER_TINY = ["--preset", "transfer", "--image-size", "64", "--phase1-epochs", "3", "--phase2-epochs", "1",
                 "--batch-size", "8", "--no-progress", "--threads", "1", "--no-mlflow"]


@pytest.fixture(scope="module")
def transfer_run(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer_run")
    rc = cli_main(["train", "classifier", "--split", str(tiny_split), "--out", str(out), *TRANSFER_TINY])
    assert rc == 0
    return out


def test_multiscale_lite_features_feed_the_head():
    from alzprog.models.stage_classifier import build_stage_classifier, forward_features, head, load_imagenet_weights

    cfg = {"arch": "efficientnet_lite0", "feature_stages": [3, 4], "num_classes": 4}
    model = load_imagenet_weights(build_stage_classifier(cfg), "efficientnet_lite0").eval()
    # The network ends at stage 4: no later stage and no head conv are built.
    assert len(model.features) == 5
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        f = forward_features(model, x)
        assert f.shape == (2, 40 + 80)
        assert torch.allclose(model.classifier(f), model(x))
        assert head(model) is model.classifier[-1]


def test_std_pooling_adds_each_stages_spatial_spread():
    from alzprog.models.stage_classifier import build_stage_classifier, forward_features

    cfg = {"arch": "efficientnet_lite0", "feature_stages": [3, 4], "pooling": ["mean", "std"], "num_classes": 4}
    model = build_stage_classifier(cfg).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        f = forward_features(model, x)
        s3 = model.features[:4](x)
        s4 = model.features[4](s3)
    assert f.shape == (2, 2 * (40 + 80))
    # Order: per stage, means then spreads.
    assert torch.allclose(f[:, :40], s3.mean((2, 3)), atol=1e-6)
    assert torch.allclose(f[:, 40:80], s3.std((2, 3), unbiased=False), atol=1e-3)
    assert torch.allclose(f[:, 160:], s4.std((2, 3), unbiased=False), atol=1e-3)
    # On a blank image (maps nearly constant) the gradient stays finite (fine-tuning, Grad-CAM).
    flat = torch.zeros(1, 3, 96, 96, requires_grad=True)
    model(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()
    with pytest.raises(ValueError, match="pooling"):
        build_stage_classifier({**cfg, "pooling": ["max"]})


def test_transfer_training_runs_both_phases(transfer_run):
    report = json.loads((transfer_run / "train_report.json").read_text())
    phases = [h["phase"] for h in report["history"]]
    assert phases == ["phase1"] * 3 + ["phase2"]
    config = json.loads((transfer_run / "model" / "config.json").read_text())
    assert config["arch"] == "efficientnet_lite0" and config["feature_stages"] == [3, 4]
    assert config["pooling"] == ["mean", "std"]
    assert config["pretrained"] == "imagenet"
    # The packaged Lite weights expect (x - 127) / 128.
    assert config["mean"][0] == pytest.approx(127 / 255) and config["std"][0] == pytest.approx(128 / 255)
    assert (transfer_run / "model" / "model.onnx").is_file()


def test_phase1_features_are_cached_and_reused(transfer_run, tiny_split, tmp_path, monkeypatch):
    import alzprog.training.classifier as tc
    from alzprog.paths import data_home

    assert list((data_home() / "cache").glob("features-*.npy")), "phase 1 left no feature cache"

    def refuse(*_a, **_k):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(tc, "pooled_features", refuse)
    # Without phase 2 the backbone is phase 1's: calibration takes the kept validation
    # features too, and the head on them gives the model's own logits.
    kept = tc._logits_from_kept_features
    checked = []

    def compare(model, ds):
        logits = kept(model, ds)
        assert logits is not None, "calibration did not find phase 1's validation features"
        direct = tc.predict_logits(model, ds, torch.device("cpu"), 16, progress=False)
        np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-4)
        checked.append(len(logits))
        return logits

    monkeypatch.setattr(tc, "_logits_from_kept_features", compare)
    rc = cli_main(["train", "classifier", "--split", str(tiny_split), "--out", str(tmp_path / "again"),
                   *TRANSFER_TINY, "--phase2-epochs", "0"])
    assert rc == 0
    assert checked and checked[0] > 0


def test_report_carries_every_baseline(transfer_run, tiny_split, tmp_path):
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", "classifier", "--split", str(tiny_split), "--model", str(transfer_run / "model"),
                   "--control", str(transfer_run / "model"), "--out", str(out), "--bootstrap", "50",
                   "--no-progress", "--no-mlflow"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["baselines"]) == {"majority", "random_label_control", "morphometric", "ground_truth_oracle"}
    # The tiny split holds one test subject per stage: no stage is evaluable, so the subject
    # figures are null for the model and every baseline alike (never a number from noise).
    evaluable = bool(report["evaluable_stages"])
    for b in report["baselines"].values():
        assert (b["macro_f1"] is not None) == evaluable
        assert set(b["per_class"]) == set(report["subject"]["per_class"]) if "per_class" in b else True
    # The model scored as its own "control" must score exactly like the model.
    assert report["baselines"]["random_label_control"]["balanced_accuracy"] == report["subject"]["balanced_accuracy"]
    assert "ground truth oracle" in (out / "report.md").read_text()


def test_oracle_features_are_the_phantoms_true_areas(tiny_split, tiny_phantom):
    from alzprog.data.phantom import read_longitudinal
    from alzprog.evaluation.baselines import oracle_features

    test = pd.read_csv(tiny_split / "test.csv")
    x = oracle_features(test)
    assert x is not None and x.shape == (len(test), 4) and np.isfinite(x).all()
    truth = pd.DataFrame(read_longitudinal(tiny_phantom))
    row = test.iloc[0]
    t = truth[(truth.subject == row.subject) & (truth.slice == row.slice) & (truth.stage_index == row.stage_index)].iloc[0]
    assert x[0, 0] == pytest.approx(t.ventricle_area_px / t.brain_area_px)
    assert x[0, 3] == pytest.approx(t.brain_area_px)
    # Off the phantom there is no oracle.
    assert oracle_features(test.assign(path="/nonexistent/Data/x/OAS1_0001_MR1_mpr-1_100.jpg")) is None


def test_morphometry_follows_the_phantoms_ventricles(tiny_phantom):
    from alzprog.data.phantom import read_longitudinal
    from alzprog.morphometry import measure
    from alzprog.preprocessing import load_canonical

    truth = pd.DataFrame(read_longitudinal(tiny_phantom))
    measured, true = [], []
    for _, r in truth.iterrows():
        c = load_canonical(tiny_phantom / "longitudinal" / r.path)
        measured.append(measure(c.image, c.mask).ventricle_to_brain)
        true.append(r.ventricle_area_px / r.brain_area_px)
    assert np.corrcoef(measured, true)[0, 1] > 0.6
