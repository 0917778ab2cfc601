"""Metric code checked against references: scikit-image SSIM, the PSNR formula, closed-form FID."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from alzprog.evaluation import image_metrics as im


def _pair(seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = 128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    a = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    b = np.clip(base + 15 * np.sin(yy / 3.0) + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_skimage(seed: int) -> None:
    a, b = _pair(seed)
    ref = structural_similarity(a, b, data_range=255)
    ours = float(im.ssim(im.to_unit(a), im.to_unit(b))[0])
    assert ours == pytest.approx(ref, abs=1e-9)
    # A visibly different pair scores lower than an image with itself.
    assert float(im.ssim(im.to_unit(a), im.to_unit(a))[0]) == pytest.approx(1.0)
    assert ours < 0.9


def test_masked_ssim_is_mean_of_skimage_map_inside_mask() -> None:
    a, b = _pair(3)
    _, full = structural_similarity(a, b, data_range=255, full=True)
    mask = np.zeros_like(a, dtype=bool)
    mask[10:30, 5:40] = True
    ours = float(im.ssim(im.to_unit(a), im.to_unit(b), mask=torch.as_tensor(mask))[0])
    pad = 3
    inner = full[pad:-pad, pad:-pad][mask[pad:-pad, pad:-pad]]
    assert ours == pytest.approx(float(inner.mean()), abs=1e-9)


def test_psnr_and_mse_match_formula() -> None:
    a, b = _pair(4)
    af, bf = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    ref_mse = float(((af - bf) ** 2).mean())
    got = im.pixel_metrics(a, b, mask=np.ones_like(a, dtype=bool))
    assert got["mse"][0] == pytest.approx(ref_mse, rel=1e-12)
    assert got["psnr"][0] == pytest.approx(10 * np.log10(1.0 / ref_mse), rel=1e-12)
    # Masked metrics only look inside: a difference outside the mask does not count.
    c = a.copy()
    c[:10] = 255 - c[:10]
    mask = np.zeros_like(a, dtype=bool)
    mask[20:] = True
    got = im.pixel_metrics(c, a, mask=mask)
    assert got["mse_brain"][0] == 0.0 and got["mse"][0] > 0.01
    assert np.isinf(got["psnr_brain"][0])
    assert im.summarize({"psnr_brain": got["psnr_brain"]})["psnr_brain"] == 100.0


def test_frechet_distance_closed_form_two_gaussians() -> None:
    # Diagonal covariances: FID = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert im.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    # Full (rotated) covariances: invariant under a common rotation.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    got = im.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)
    # From samples: the estimate converges to the closed form.
    rng = np.random.default_rng(1)
    x = rng.normal(mu1, np.sqrt(v1), size=(20000, 3))
    y = rng.normal(mu2, np.sqrt(v2), size=(20000, 3))
    assert im.fid_from_features(x, y) == pytest.approx(expected, rel=0.03)
    assert im.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_penultimate_features_hook_last_linear() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 1, 2, 2)
    feats = im.penultimate_features(model, x, batch_size=2)
    expected = torch.relu(model[1](x.flatten(1))).detach().double().numpy()
    assert feats.shape == (5, 3)
    np.testing.assert_allclose(feats, expected, rtol=1e-6)


def test_standard_networks_report_unavailable_with_reason_or_run() -> None:
    for status in (im.inception_fid_status, im.lpips_status):
        ok, why = status()
        result = im.optional_metric(lambda: 0.0, status)
        if ok:
            assert result == {"value": 0.0}
        else:
            assert result["value"] is None and result["unavailable"] == why and len(why) > 10


def test_batched_metrics_are_per_image() -> None:
    a, b = _pair(5)
    c, d = _pair(6)
    batch = im.pixel_metrics(np.stack([a, c]), np.stack([b, d]), mask=np.ones((2, *a.shape), dtype=bool))
    one = im.pixel_metrics(c, d, mask=np.ones_like(c, dtype=bool))
    assert batch["ssim"].shape == (2,)
    assert batch["ssim_brain"][1] == pytest.approx(one["ssim_brain"][0], abs=1e-12)
    assert batch["ssim"][0] == pytest.approx(structural_similarity(a, b, data_range=255), abs=1e-9)


def test_fid_few_samples_many_dimensions_matches_matrix_square_root() -> None:
    """The sample-space trace (N < D) equals the D x D matrix-square-root formula."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, size=(40, 60))
    y = rng.normal(0.5, 1.5, size=(30, 60)) + x[:30] * 0.3
    fast = im.fid_from_features(x, y)
    slow = im.frechet_distance(*im.feature_stats(x), *im.feature_stats(y))
    assert fast == pytest.approx(slow, rel=1e-5)
    assert im.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
