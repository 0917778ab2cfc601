"""Out-of-distribution reference (alzprog.ood), its training hook, the classifier runtime's score,
test-time augmentation (alzprog.tta) and the quality warnings (alzprog.quality.warnings_for).

Real parts throughout: a classifier trained by the library on the tiny phantom, its ONNX graph in
ONNX Runtime, the MNI152 template's slices. The rates on the demo model are measured by
benchmarks/ood_tta.py (docs/api.md), not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from service_helpers import tiny_classifier_artifact

from alzprog import ood, tta
from alzprog.artifacts import load_artifact
from alzprog.constants import STAGES
from alzprog.quality import OUT_OF_DISTRIBUTION, SALIENCY_OUTSIDE_BRAIN, report, warnings_for


def _runtime(model_dir: Path):  # noqa: ANN202
    from services.classifier.model_holder import ClassifierRuntime
    from services.common.model_slot import ModelRef

    cfg = json.loads((model_dir / "config.json").read_text())
    return ClassifierRuntime(ModelRef("clf", "1", model_dir, cfg), ["CPUExecutionProvider"], 1)


def _low_rank(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    return rng.normal(size=(n, basis.shape[0])) @ basis + 0.1 * rng.normal(size=(n, basis.shape[1])) + 5.0


def test_reference_threshold_holds_on_fresh_in_distribution_features_and_flags_shifted_ones():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 64))
    ref = ood.fit_reference(_low_rank(rng, 400, basis), _low_rank(rng, 200, basis))
    fresh = ref.distance(_low_rank(rng, 1000, basis))
    assert (fresh > ref.threshold).mean() < 0.05
    # Another structure (a direction the training set never varied in) and a plain shift.
    other = _low_rank(rng, 50, rng.normal(size=(6, 64)))
    shifted = _low_rank(rng, 50, basis) + 2.0
    assert (ref.distance(other) > ref.threshold).all()
    assert (ref.distance(shifted) > ref.threshold).all()
    # The file round-trips to the same distances (six significant digits).
    back = ood.OodReference.from_json(json.loads(json.dumps(ref.to_json())))
    np.testing.assert_allclose(back.distance(other), ref.distance(other), rtol=1e-3)
    assert back.threshold == pytest.approx(ref.threshold, rel=1e-5)


def test_malformed_reference_is_ignored_and_the_model_still_serves(tmp_path):
    art = tiny_classifier_artifact(tmp_path / "clf", seed=3)
    assert ood.load_reference(art) is None
    (art / ood.REFERENCE_FILE).write_text(json.dumps({"format": "something-else"}))
    assert ood.load_reference(art) is None


@pytest.mark.parametrize("arch", ["b0-scaled", "lite-multiscale"])
def test_feature_graph_outputs_exactly_the_head_input(tmp_path, arch):
    import onnxruntime as ort

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.stage_classifier import classifier_config, forward_features

    if arch == "b0-scaled":
        art_dir, size = tiny_classifier_artifact(tmp_path / "clf", seed=1), 64
        model = load_artifact(art_dir).model.eval()
    else:
        size = 96
        cfg = classifier_config("efficientnet_lite0", size, pretrained="none", feature_stages=[3, 4])
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        art_dir = tmp_path / "lite"
        save_artifact(art_dir, model, cfg, torch.randn(1, 3, size, size))
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        feats, logits = forward_features(model, x).numpy(), model(x).numpy()
    graph = ood.feature_graph(art_dir / "model.onnx", feats.shape[1])
    assert graph is not None
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out[0], logits, atol=1e-4)
    np.testing.assert_allclose(out[1], feats, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_model(tiny_split, tmp_path_factory) -> Path:
    """A classifier trained by the library on the tiny phantom (the bootstrap's tiny plan)."""
    from alzprog.bootstrap import PLANS
    from alzprog.training.classifier import train_classifier
    from alzprog.training.config import load_config

    plan = PLANS["tiny"]
    cfg = load_config("classifier", plan.classifier_preset, overrides=plan.classifier_overrides)
    result = train_classifier(cfg, tiny_split, out_dir=tmp_path_factory.mktemp("ood_train"), register=False, progress=False)
    return result.model_dir


def test_training_writes_a_digest_checked_reference_thresholded_on_validation(trained_model, tiny_split):
    assert (trained_model / ood.REFERENCE_FILE).is_file()
    art = load_artifact(trained_model)  # every file, the reference included, matches digests.json
    assert ood.REFERENCE_FILE in art.digests
    ref = ood.load_reference(trained_model)
    n_train = len(pd.read_csv(tiny_split / "train.csv"))
    n_val = len(pd.read_csv(tiny_split / "val.csv"))
    assert (ref.n_train, ref.n_val) == (n_train, n_val)
    assert ref.threshold == pytest.approx(float(np.quantile(ref.val_distances, ood.THRESHOLD_QUANTILE)), rel=1e-5)
    assert ref.dim == art.model.classifier[-1].in_features


def test_runtime_scores_every_slice_with_onnx_features_equal_to_pytorch(trained_model, tiny_split):
    from alzprog.decode import read_slice
    from alzprog.preprocessing import canonicalize

    rt = _runtime(trained_model)
    assert rt._feature_output  # one ONNX pass gives logits and features
    paths = list(pd.read_csv(tiny_split / "test.csv")["path"])[:6]
    images = [canonicalize(read_slice(p)).image for p in paths]
    batch = rt.predict_batch(images)
    single = [rt.predict(im) for im in images]
    ref = ood.load_reference(trained_model)
    feats = torch.stack([torch.from_numpy(rt._input(im)[0]) for im in images])
    from alzprog.models.stage_classifier import forward_features

    with torch.inference_mode():
        expected = ref.distance(forward_features(rt._torch(), feats).double().numpy())
    for b, s, e in zip(batch, single, expected):
        assert b["ood"]["threshold"] == s["ood"]["threshold"] == pytest.approx(ref.threshold)
        # The distance magnifies the float32 differences between ORT's and PyTorch's features
        # (larger on CPUs without AVX-512, where both use other kernels).
        assert s["ood"]["score"] == pytest.approx(float(e), rel=2e-2)
        assert b["ood"]["score"] == pytest.approx(float(e), rel=2e-2)
        assert s["ood"]["out_of_distribution"] == (s["ood"]["score"] > ref.threshold)


def test_template_probes_are_brain_slices_in_other_planes_and_levels():
    from alzprog.preprocessing import canonicalize
    from alzprog.quality import assess

    probes = ood.template_probes(per_set=4)
    assert set(probes) == {"coronal", "sagittal", "below"}
    passed = 0
    for images in probes.values():
        assert len(images) == 4
        for im in images:
            assert im.dtype == np.uint8 and im.ndim == 2 and im.max() > 100
            c = canonicalize(im)
            try:
                assess(c.image, c.mask)
                passed += 1
            except ValueError:
                pass
    # Most are brain slices to the gate: the OOD score, not the gate, has to flag them.
    assert passed >= 8


def test_inverted_contrast_keeps_the_background_black_and_inverts_the_head():
    img = np.zeros((64, 64), np.uint8)
    img[16:48, 16:48] = 200
    img[28:36, 28:36] = 30
    inv = ood.inverted_contrast(img)
    assert inv[0, 0] == 0 and inv[20, 20] == 55 and inv[30, 30] == 225


def test_model_without_reference_serves_a_null_score(tmp_path):
    rt = _runtime(tiny_classifier_artifact(tmp_path / "clf", seed=2))
    out = rt.predict(np.full((256, 256), 90, np.uint8))
    assert out["ood"] is None and out["tta"] is None
    assert report(out["ood"], None) == {"warnings": [], "ood_score": None, "ood_threshold": None, "out_of_distribution": None}


# ---------------------------------------------------------------------- test-time augmentation
def test_tta_views_are_fixed_and_the_mirror_is_the_patients_left_right():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, size=(32, 40), dtype=np.uint8)
    a, b = tta.views(img), tta.views(img)
    assert len(a) == len(tta.VIEWS) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(a[0], img)
    # Canonical layout: the patient's right at the top, so the mirror flips rows.
    assert np.array_equal(a[1], img[::-1, :])
    assert all(v.shape == img.shape and v.dtype == np.uint8 for v in a)


def test_tta_summary_spread():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1]])
    s = tta.summarise(p)
    assert s["views"] == 4
    assert s["mean"][STAGES[0]] == pytest.approx(0.5)
    assert s["std"][STAGES[0]] == pytest.approx(float(np.std(p[:, 0])))
    assert s["p10"][STAGES[0]] <= s["mean"][STAGES[0]] <= s["p90"][STAGES[0]]
    assert s["agreement"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        tta.summarise(np.zeros((3, 2)))


def test_runtime_tta_keeps_the_point_answer_and_adds_the_spread(trained_model, tiny_split):
    from alzprog.decode import read_slice
    from alzprog.preprocessing import canonicalize

    rt = _runtime(trained_model)
    image = canonicalize(read_slice(pd.read_csv(tiny_split / "test.csv")["path"].iloc[0])).image
    plain, aug = rt.predict(image), rt.predict(image, tta=True)
    for name in STAGES:
        assert aug["probabilities"][name] == pytest.approx(plain["probabilities"][name], abs=1e-6)
        assert aug["tta"]["p10"][name] <= aug["tta"]["p90"][name]
        assert aug["tta"]["std"][name] >= 0
    assert aug["tta"]["views"] == len(tta.VIEWS)
    assert aug["ood"]["score"] == pytest.approx(plain["ood"]["score"], rel=1e-6)
    # The spread is over real, different views: not all the same probabilities.
    assert max(aug["tta"]["std"].values()) > 0


# ---------------------------------------------------------------------- warnings
def test_warnings_name_an_ood_slice_and_a_saliency_outside_the_brain():
    flagged = {"score": 3.2, "threshold": 1.4, "out_of_distribution": True}
    fine = {"score": 1.0, "threshold": 1.4, "out_of_distribution": False}
    assert [w["code"] for w in warnings_for(flagged, 0.8)] == [OUT_OF_DISTRIBUTION]
    assert [w["code"] for w in warnings_for(fine, 0.3)] == [SALIENCY_OUTSIDE_BRAIN]
    assert warnings_for(fine, 0.5) == [] and warnings_for(None, None) == []
    msg = warnings_for(flagged, 0.08)
    assert "3.20" in msg[0]["message"] and "8 %" in msg[1]["message"]
    r = report(flagged, {"saliency_in_brain_fraction": 0.2})
    assert r["ood_score"] == 3.2 and r["ood_threshold"] == 1.4 and r["out_of_distribution"] is True
    assert len(r["warnings"]) == 2
