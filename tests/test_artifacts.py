"""Code-free model artifacts: round trip, ONNX parity, digest tampering and pickles refused."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from alzprog.artifacts import (
    ArtifactIntegrityError,
    load_artifact,
    onnx_parity,
    save_artifact,
    verify_digests,
)
from alzprog.models.stage_classifier import build_stage_classifier, classifier_config


def _tiny_config() -> dict:
    return classifier_config("efficientnet_b0", 32, width_mult=0.25, depth_mult=0.25, pretrained="none")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = _tiny_config()
    model = build_stage_classifier(cfg)
    # A freshly initialised EfficientNet outputs ~1e-10 in eval mode (identity BN statistics);
    # a few train-mode passes give BN real statistics so parity compares real numbers.
    torch.nn.init.normal_(model.classifier[-1].weight, std=1.0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    out = tmp_path_factory.mktemp("artifact")
    digests = save_artifact(out, model, cfg, x)
    return out, model, cfg, digests


def test_round_trip_and_digests(saved):
    out, model, cfg, digests = saved
    assert set(digests) == {"config.json", "model.safetensors", "model.onnx"}
    assert json.loads((out / "digests.json").read_text())["files"] == digests
    loaded = load_artifact(out)
    assert not loaded.model.training
    assert loaded.config["arch"] == cfg["arch"] and loaded.config["class_names"] == cfg["class_names"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_onnx_parity_other_batch_size(saved):
    out, model, _, _ = saved
    x = torch.randn(5, 3, 32, 32)  # dynamic batch axis: a size not seen at export
    diff = onnx_parity(out / "model.onnx", model, x)
    assert diff <= 1e-4
    with torch.no_grad():
        assert float(model(x).abs().max()) > 1e-3  # the comparison is not between zeros


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_tampered_weights_refused(saved, tmp_path):
    d = _copy(saved[0], tmp_path / "m")
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactIntegrityError, match="digest mismatch"):
        load_artifact(d)


def test_tampered_config_refused(saved, tmp_path):
    d = _copy(saved[0], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["temperature"] = 9.0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactIntegrityError):
        verify_digests(d)


def test_pickle_refused_even_with_matching_digest(saved, tmp_path):
    d = _copy(saved[0], tmp_path / "m")
    import hashlib

    # A pickle disguised as safetensors, with its digest updated: the content check catches it.
    payload = pickle.dumps({"w": np.zeros(3)}, protocol=4)
    (d / "model.safetensors").write_bytes(payload)
    dig = json.loads((d / "digests.json").read_text())
    dig["files"]["model.safetensors"] = hashlib.sha256(payload).hexdigest()
    (d / "digests.json").write_text(json.dumps(dig))
    with pytest.raises(ArtifactIntegrityError, match="pickle"):
        load_artifact(d)


def test_extra_pickle_file_refused(saved, tmp_path):
    d = _copy(saved[0], tmp_path / "m")
    torch.save({"a": torch.zeros(1)}, d / "extra.pt")
    with pytest.raises(ArtifactIntegrityError):
        load_artifact(d)


def test_missing_digests_refused(saved, tmp_path):
    d = _copy(saved[0], tmp_path / "m")
    (d / "digests.json").unlink()
    with pytest.raises(ArtifactIntegrityError):
        load_artifact(d)
