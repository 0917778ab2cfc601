"""Grad-CAM: localisation on a model with a known answer, in-brain fraction, overlay, CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from alzprog.explain import grad_cam, overlay_png, saliency_in_brain_fraction


class _Spot(nn.Module):
    """Conv + ReLU + global average pool + linear: class 1 reads the total brightness."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[:, :, 1, 1] = 1.0
            self.features[0].bias.fill_(-0.05)
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("rows,cols", [(slice(20, 28), slice(4, 12)), (slice(2, 8), slice(22, 30))])
def test_grad_cam_points_at_the_evidence(rows, cols):
    x = torch.zeros(3, 32, 32)
    x[:, rows, cols] = 1.0  # the only bright (class-1) evidence
    heat = grad_cam(_Spot(), x, target=1)
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0)
    inside = np.zeros((32, 32), bool)
    inside[rows, cols] = True
    assert saliency_in_brain_fraction(heat, inside) > 0.9  # the saliency sits on the evidence
    assert np.allclose(grad_cam(_Spot(), x, target=0), 0)  # class 0 has only negative evidence: ReLU'd away


def test_in_brain_fraction():
    heat = np.zeros((8, 8), np.float32)
    heat[:4, :4] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[:4, :] = True
    assert saliency_in_brain_fraction(heat, mask) == pytest.approx(1.0)
    assert saliency_in_brain_fraction(heat, ~mask) == pytest.approx(0.0)
    mask2 = np.zeros((16, 16), bool)
    mask2[:, :8] = True  # a different size: the heatmap is resized to the mask
    assert saliency_in_brain_fraction(heat, mask2) == pytest.approx(1.0, abs=0.05)
    assert np.isnan(saliency_in_brain_fraction(np.zeros((8, 8)), mask))


def test_overlay_png_is_a_png_of_the_image_size():
    img = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48)
    png = overlay_png(img, np.random.default_rng(0).random((8, 8)))
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.size == (48, 64) and out.mode == "RGB"


def test_explain_cli_on_a_phantom_slice(tiny_phantom, tmp_path):
    from alzprog.artifacts import save_artifact
    from alzprog.cli import main as cli_main
    from alzprog.models.stage_classifier import build_stage_classifier, classifier_config

    cfg = classifier_config("efficientnet_b0", 64, width_mult=0.25, depth_mult=0.25, pretrained="none")
    model = build_stage_classifier(cfg)
    model.train()
    with torch.no_grad():  # real BN statistics so the gradients are not ~0
        model(torch.randn(8, 3, 64, 64))
    save_artifact(tmp_path / "m", model.eval(), cfg, torch.randn(1, 3, 64, 64), export_onnx=False)
    image = sorted((tiny_phantom / "Data").rglob("*.jpg"))[0]
    out = tmp_path / "overlay.png"
    rc = cli_main(["explain", str(image), "--out", str(out), "--model", str(tmp_path / "m")])
    assert rc == 0
    assert Image.open(out).size == (256, 256)


def test_explain_cli_refuses_bad_input(tmp_path, capsys):
    from alzprog.artifacts import save_artifact
    from alzprog.cli import main as cli_main
    from alzprog.models.stage_classifier import build_stage_classifier, classifier_config

    cfg = classifier_config("efficientnet_b0", 32, width_mult=0.25, depth_mult=0.25, pretrained="none")
    save_artifact(tmp_path / "m", build_stage_classifier(cfg).eval(), cfg, torch.randn(1, 3, 32, 32), export_onnx=False)
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"hello, not an image")
    assert cli_main(["explain", str(bad), "--out", str(tmp_path / "o.png"), "--model", str(tmp_path / "m")]) == 2
    assert cli_main(["explain", str(tmp_path), "--out", str(tmp_path / "o.png"), "--model", str(tmp_path / "m")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
