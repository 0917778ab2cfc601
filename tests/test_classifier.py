"""Stage classifier end to end on the tiny phantom against the real MLflow server.

Train the quick preset (tiny image size, one epoch per phase), register it, load it back
through the registry by alias, check ONNX parity, the MLflow run contents, the evaluation
report contract and the leakage guards.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from alzprog.cli import main as cli_main
from alzprog.constants import CLASSIFIER_EXPERIMENT, CLASSIFIER_MODEL_NAME, STAGES

TINY = ["--preset", "quick", "--image-size", "32", "--phase1-epochs", "1", "--phase2-epochs", "1", "--no-progress",
        "--threads", "1"]
REPORT_KEYS = {
    "subject": {"macro_f1", "macro_f1_ci", "balanced_accuracy", "majority_macro_f1", "n_subjects"},
    "slice": {"macro_f1", "accuracy", "majority_accuracy"},
}


@pytest.fixture(scope="module")
def trained(mlflow_server, tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf_run")
    rc = cli_main(["train", "classifier", "--split", str(tiny_split), "--out", str(out), *TINY])
    assert rc == 0
    return out


def test_registered_champion_loads_by_alias_with_onnx_parity(trained, tiny_split):
    from alzprog import registry
    from alzprog.artifacts import load_artifact, onnx_parity
    from alzprog.preprocessing import classifier_input, load_canonical

    resolved = registry.resolve_model(f"models:/{CLASSIFIER_MODEL_NAME}@champion")
    cfg = resolved.config
    assert cfg["kind"] == "stage_classifier"
    assert cfg["class_names"] == list(STAGES)
    assert cfg["image_size"] == 32 and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert 0.05 <= cfg["temperature"] <= 20.0
    assert cfg["pretrained"] == "none"
    loaded = load_artifact(resolved.local_dir)
    digests = json.loads((resolved.local_dir / "digests.json").read_text())["files"]
    assert set(digests) == {"config.json", "model.safetensors", "model.onnx", "ood_reference.json"}

    # Parity on real preprocessed test slices, not only on the export example.
    test = pd.read_csv(tiny_split / "test.csv")
    x = torch.stack([
        classifier_input(load_canonical(p).image, 32, tuple(cfg["mean"]), tuple(cfg["std"])) for p in test["path"][:5]
    ])
    assert onnx_parity(resolved.local_dir / "model.onnx", loaded.model, x) <= 1e-4
    # The registered weights are the ones the run saved locally.
    local = load_artifact(trained / "model")
    with torch.no_grad():
        torch.testing.assert_close(local.model(x), loaded.model(x))


def test_mlflow_run_has_params_metrics_artifacts(trained):
    from alzprog import registry

    c = registry.client()
    exp = c.get_experiment_by_name(CLASSIFIER_EXPERIMENT)
    assert exp is not None
    run_id = json.loads((trained / "model" / "config.json").read_text())["training"]["run_id"]
    run = c.get_run(run_id)
    for key in ("batch_size", "phase1.lr", "phase2.lr", "phase1.epochs", "phase2.epochs", "model.image_size",
                "preset", "seed", "split_sha256", "manifest_sha256"):
        assert key in run.data.params, key
    assert run.data.tags["pretrained"] == "none" and run.data.tags["from_scratch"] == "true"
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_macro_f1", "val_macro_f1"):
        hist = c.get_metric_history(run_id, key)
        assert [m.step for m in hist] == [1, 2], key  # one point per epoch, both phases
    names = {a.path for a in c.list_artifacts(run_id)}
    assert {"report", "plots", "split", "model"} <= names
    assert {a.path for a in c.list_artifacts(run_id, "split")} >= {"split/train.csv", "split/val.csv", "split/test.csv"}
    report = {a.path for a in c.list_artifacts(run_id, "report")}
    assert {"report/train_report.md", "report/train_report.json", "report/environment.json"} <= report
    assert (trained / "training_curves.png").stat().st_size > 1000


def test_evaluate_report_contract(trained, tiny_split, tmp_path):
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", "classifier", "--split", str(tiny_split), "--model",
                   f"models:/{CLASSIFIER_MODEL_NAME}@champion", "--out", str(out), "--bootstrap", "200", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for level, keys in REPORT_KEYS.items():
        assert keys <= set(report[level]), (level, keys - set(report[level]))
    assert "ece_before" in report and "ece_after" in report
    n_test_subjects = pd.read_csv(tiny_split / "test.csv")["subject"].nunique()
    assert report["subject"]["n_subjects"] == n_test_subjects
    # The tiny split holds one test subject per stage: every stage is marked, none gets a number.
    per_stage = pd.read_csv(tiny_split / "test.csv").groupby("stage")["subject"].nunique()
    for stage, n in per_stage.items():
        assert (stage in report["not_evaluable_stages"]) == (n < 2)
        if n < 2:
            assert report["subject"]["per_class"][stage]["f1"] is None
    assert report["slice"]["accuracy"] is not None
    assert (out / "report.md").read_text().count("majority") >= 1
    for png in ("confusion_matrix_subject.png", "confusion_matrix_slice.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluate_refuses_subjects_the_model_saw(trained, tiny_split, tmp_path):
    from alzprog.data.split import LeakageError
    from alzprog.evaluation.classifier import evaluate_classifier

    # A split whose "test" side is the model's training side: the split itself is clean
    # (disjoint sides) but the model has seen those subjects.
    fake = tmp_path / "split"
    fake.mkdir()
    shutil.copy(tiny_split / "train.csv", fake / "test.csv")
    shutil.copy(tiny_split / "test.csv", fake / "train.csv")
    shutil.copy(tiny_split / "val.csv", fake / "val.csv")
    with pytest.raises(LeakageError, match="used to train or validate"):
        evaluate_classifier(fake, trained / "model", tmp_path / "eval", n_boot=10, log_to_mlflow=False, progress=False)


def test_train_refuses_leaking_split(tiny_split, tmp_path, mlflow_server):
    from alzprog.data.split import LeakageError

    bad = tmp_path / "leaky"
    bad.mkdir()
    for side in ("train", "val", "test"):
        shutil.copy(tiny_split / f"{side}.csv", bad / f"{side}.csv")
    test = pd.read_csv(bad / "test.csv")
    train = pd.read_csv(bad / "train.csv")
    pd.concat([train, test.head(1)]).to_csv(bad / "train.csv", index=False)  # one test slice leaks into train
    with pytest.raises(LeakageError):
        cli_main(["train", "classifier", "--split", str(bad), "--no-register", *TINY])


def test_missing_imagenet_weights_says_how_to_provide_them(monkeypatch, tmp_path):
    from alzprog.models.stage_classifier import (
        PretrainedWeightsMissing,
        build_stage_classifier,
        classifier_config,
        imagenet_weights_file,
        load_imagenet_weights,
    )

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_stage_classifier(classifier_config("efficientnet_b0", 32))
    with pytest.raises(PretrainedWeightsMissing) as err:
        load_imagenet_weights(model, "efficientnet_b0")
    msg = str(err.value)
    assert str(imagenet_weights_file("efficientnet_b0")) in msg and "--pretrained none" in msg
    assert str(tmp_path) in msg


def test_imagenet_weights_load_from_hub_cache(monkeypatch, tmp_path):
    """A checkpoint placed where the message says is picked up (head dropped, backbone loaded)."""
    from alzprog.models.stage_classifier import build_stage_classifier, classifier_config, imagenet_weights_file
    from alzprog.models.stage_classifier import load_imagenet_weights
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = torchvision.models.efficientnet_b0(weights=None)  # 1000-class head, like the real file
    path = imagenet_weights_file("efficientnet_b0")
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    model = build_stage_classifier(classifier_config("efficientnet_b0", 32))
    load_imagenet_weights(model, "efficientnet_b0")
    torch.testing.assert_close(model.features[0][0].weight, ref.features[0][0].weight)
    assert model.classifier[-1].out_features == len(STAGES)


def test_shuffle_subject_labels_keeps_subjects_consistent():
    from alzprog.training.classifier import shuffle_subject_labels

    frame = pd.DataFrame({
        "subject": np.repeat([f"s{i}" for i in range(40)], 3),
        "stage_index": np.repeat(np.arange(40) % 4, 3),
    })
    out = shuffle_subject_labels(frame, seed=0)
    assert (out.groupby("subject")["stage_index"].nunique() == 1).all()
    assert sorted(out["stage_index"]) == sorted(frame["stage_index"])  # a permutation
    assert (out["stage_index"] != frame["stage_index"]).mean() > 0.5


def test_config_resolution_order(tmp_path):
    from alzprog.training.config import load_config, save_config

    user = tmp_path / "user.yaml"
    user.write_text("batch_size: 7\nphase2:\n  lr: 0.5\n")
    cfg = load_config("classifier", "full", user, {"batch_size": 9, "phase1.epochs": None, "model.image_size": 64})
    assert cfg["batch_size"] == 9  # flag beats file
    assert cfg["phase2"]["lr"] == 0.5 and cfg["phase2"]["epochs"] == 20  # file beats preset, siblings kept
    assert cfg["phase1"]["epochs"] == 10  # None = flag not given
    assert cfg["model"]["image_size"] == 64 and cfg["model"]["arch"] == "efficientnet_b4"
    assert cfg["preset"] == "full"
    import yaml

    assert yaml.safe_load(save_config(cfg, tmp_path / "c.yaml").read_text()) == cfg
    with pytest.raises(FileNotFoundError, match="available"):
        load_config("classifier", "nope")
