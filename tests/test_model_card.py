"""The model card's held-out figures: ``alzprog evaluate classifier`` records them on the
registered version and ``alzprog.model_card`` reads them back (a real sqlite MLflow registry, a
real model evaluated on the tiny phantom's test subjects)."""

from __future__ import annotations

import pytest
from service_helpers import tiny_classifier_artifact

from alzprog.constants import CLASSIFIER_MODEL_NAME


@pytest.fixture
def registry_here(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'card.db'}")
    return tmp_path


@pytest.fixture(scope="module")
def wide_test_split(tiny_phantom, tmp_path_factory):
    """The tiny phantom split with two test subjects per stage (the least a macro-F1 needs)."""
    import pandas as pd

    from alzprog.data.manifest import build_manifest

    d = tmp_path_factory.mktemp("card_split")
    build_manifest(tiny_phantom, d / "manifest.csv")
    m = pd.read_csv(d / "manifest.csv")
    subjects = m.groupby("stage")["subject"].unique()
    test_ids = {s for ids in subjects for s in sorted(ids)[:2]}
    out = d / "split"
    out.mkdir()
    m[m["subject"].isin(test_ids)].to_csv(out / "test.csv", index=False)
    m[~m["subject"].isin(test_ids)].to_csv(out / "train.csv", index=False)
    m.iloc[:0].to_csv(out / "val.csv", index=False)
    return d / "split"


def test_evaluation_records_the_held_out_macro_f1_with_its_interval_on_the_version(registry_here, wide_test_split):
    import mlflow

    from alzprog import registry
    from alzprog.evaluation.classifier import evaluate_classifier
    from alzprog.model_card import card_figures, model_entry

    art = tiny_classifier_artifact(registry_here / "clf", seed=4)
    mlflow.set_tracking_uri(registry.tracking_uri())
    with mlflow.start_run() as run:
        version = registry.register_artifact(art, CLASSIFIER_MODEL_NAME, run.info.run_id, alias="champion")
    before = model_entry(CLASSIFIER_MODEL_NAME)
    assert before["available"] and before["figures"] is None
    import pandas as pd

    assert pd.read_csv(wide_test_split / "test.csv").groupby("stage")["subject"].nunique().min() >= 2
    report = evaluate_classifier(wide_test_split, f"models:/{CLASSIFIER_MODEL_NAME}/{version}", registry_here / "eval",
                                 n_boot=50, baselines=False, progress=False)
    entry = model_entry(CLASSIFIER_MODEL_NAME)
    fig = entry["figures"]
    assert fig["test_subject_macro_f1"] == pytest.approx(report["subject"]["macro_f1"], abs=1e-4)
    low, high = fig["test_subject_macro_f1_ci"]
    assert low == pytest.approx(report["subject"]["macro_f1_ci"][0], abs=1e-4) and low <= fig["test_subject_macro_f1"] <= high
    assert fig["test_subjects"] == report["subject"]["n_subjects"]
    assert fig["evaluated_at"].endswith("+00:00")
    # The card's figures are not repeated among the plain tags.
    assert not any(k.startswith("card.") for k in entry["tags"])
    assert card_figures({"card.x": "0.5", "card.ci": "[0.1, 0.9]", "card.when": "today", "other": "1"}) == {
        "x": 0.5, "ci": [0.1, 0.9], "when": "today"}


def test_a_shuffled_label_evaluation_or_a_local_folder_records_nothing():
    from alzprog.model_card import record_classifier_evaluation

    assert record_classifier_evaluation({"model": {"name": None, "version": None}, "subject": {}}) is False
    assert record_classifier_evaluation({"model": {"name": "m", "version": "1"}, "subject": {}, "test_labels_shuffled": True}) is False
