"""Change fidelity of ``alzprog evaluate progression``: the smoothed change correlation and the
CSF/ventricle growth ratio, on synthetic slices whose true change is known."""

from __future__ import annotations

import numpy as np
import pytest

from alzprog.evaluation.progression import (
    GROWTH_MIN_PX,
    change_correlation,
    change_fidelity,
    change_sigma,
    report_markdown,
)


def slice_with_ventricle(radius: float, rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc of brain with a dark central ventricle of ``radius`` px and fresh noise."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    brain = r < size * 0.42
    img = np.where(brain, 160.0, 10.0)
    img = np.where(r < radius, 30.0, img)
    img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), brain


@pytest.fixture()
def pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src, tgt, masks = [], [], []
    for r0 in (10.0, 12.0, 14.0):
        x, m = slice_with_ventricle(r0, rng)
        y, _ = slice_with_ventricle(r0 * 1.25, rng)  # independent noise, as in the phantom
        src.append(x)
        tgt.append(y)
        masks.append(m)
    return np.stack(src), np.stack(tgt), np.stack(masks)


def test_identity_scores_zero_correlation_and_zero_growth(pairs) -> None:
    x, y, m = pairs
    fid = change_fidelity(x, x, y, m, m)
    assert fid["change_corr"] == 0.0
    assert fid["growth_ratio"] == 0.0
    assert fid["true_growth_px"] > GROWTH_MIN_PX


def test_the_truth_itself_scores_one(pairs) -> None:
    x, y, m = pairs
    fid = change_fidelity(x, y, y, m, m)
    assert fid["growth_ratio"] == pytest.approx(1.0)
    assert fid["growth_ratio_median"] == pytest.approx(1.0)
    assert fid["change_corr"] == pytest.approx(1.0, abs=1e-9)


def test_a_negated_change_correlates_negatively(pairs) -> None:
    x, y, m = pairs
    negated = np.clip(2.0 * x.astype(float) - y.astype(float), 0, 255).astype(np.uint8)
    fid = change_fidelity(x, negated, y, m, m)
    assert fid["change_corr"] < -0.8
    assert fid["growth_ratio"] <= 0  # a brightened rim cannot count as growth


def test_half_the_growth_scores_about_half() -> None:
    rng = np.random.default_rng(1)
    x, m = slice_with_ventricle(12.0, rng)
    y, _ = slice_with_ventricle(12.0 * np.sqrt(2.0), rng)  # twice the area
    half, _ = slice_with_ventricle(12.0 * np.sqrt(1.5), rng)  # half the area gain
    fid = change_fidelity(x[None], half[None], y[None], m[None], m[None])
    assert fid["growth_ratio"] == pytest.approx(0.5, abs=0.1)
    assert fid["change_corr"] > 0.5


def test_noise_alone_does_not_correlate_with_the_change(pairs) -> None:
    """A generator that only redraws the noise scores far below one that grows the ventricle."""
    x, y, m = pairs
    rng = np.random.default_rng(5)
    renoised = np.clip(x.astype(float) + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    assert abs(change_fidelity(x, renoised, y, m, m)["change_corr"]) < 0.2


def test_constant_true_change_is_undefined() -> None:
    rng = np.random.default_rng(2)
    x, m = slice_with_ventricle(12.0, rng)
    assert np.isnan(change_correlation(x, x, x, m))


def test_sigma_scales_with_the_frame() -> None:
    assert change_sigma(256) == 2.0
    assert change_sigma(128) == 1.0


def test_report_markdown_has_the_change_table(pairs) -> None:
    x, y, m = pairs
    fid = {"model": change_fidelity(x, y, y, m, m), "identity": change_fidelity(x, x, y, m, m), "dcgan": None,
           "truth": change_fidelity(x, y, y, m, m)}
    row = {k: {"ssim_brain": 0.5, "mse_brain": 0.01, "psnr_brain": 20.0} for k in ("model", "identity", "dcgan")}
    md = report_markdown({"nd-vmd": {**row, "n_pairs": 3, "change_fidelity": fid}})
    line = [ln for ln in md.splitlines() if ln.startswith("| nd-vmd |")][-1]
    assert "| 1.000 | n/a | 0.000 | 1.000 | 1.000 | n/a | 0.000 |" in line


def _disk_brain(radius: float, size: int = 96) -> np.ndarray:
    """A bright brain disk with a dark ventricle of ``radius`` pixels (uint8)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.where(r < 40, 180, 0).astype(np.uint8)
    img[r < radius] = 20
    return img


def test_gain_calibration_restores_the_amount_of_change():
    """A generator that reproduces half the ventricle growth gets a gain of about 2."""
    import torch

    from alzprog.training.progression import PairData, calibrate_gain

    class HalfGrowth(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = 1.0

        def forward(self, x, mask=None):
            # Grows the ventricle by gain * 3 px where the truth grows it by 6 px.
            img = torch.from_numpy(_disk_brain(10 + 3 * self.gain)).float() / 127.5 - 1
            return img.expand(x.shape[0], 1, *img.shape)

    src = np.stack([_disk_brain(10)] * 4)
    tgt = np.stack([_disk_brain(16)] * 4)
    masks = np.stack([_disk_brain(0) > 0] * 4)
    val = PairData(source=src, target=tgt, source_mask=masks, target_mask=masks, paired=True, weights=np.ones(4))
    model = HalfGrowth()
    c = calibrate_gain(model, val, torch.device("cpu"))
    assert c["growth_ratio_at_1"] == pytest.approx(0.5, abs=0.15)
    assert c["gain"] == 2.0 and c["growth_ratio"] == pytest.approx(1.0, abs=0.15)
    assert model.gain == 1.0  # the caller decides whether to apply it


def test_the_kept_epoch_is_the_best_validation_change_no_worse_than_identity():
    """Training keeps the weights of the epoch whose validation change correlates best with the
    truth, among epochs whose in-brain MSE is no worse than the input's; a later, worse epoch
    (the discriminator winning late) does not replace it."""
    import torch

    from alzprog.training.progression import BestEpoch

    model = torch.nn.Linear(2, 1, bias=False)
    best = BestEpoch()
    rows = [
        {"val_change_corr": 0.40, "val_mse_brain": 0.9, "val_identity_mse_brain": 1.0},
        {"val_change_corr": 0.62, "val_mse_brain": 0.8, "val_identity_mse_brain": 1.0},  # the one to keep
        {"val_change_corr": 0.70, "val_mse_brain": 1.2, "val_identity_mse_brain": 1.0},  # worse than identity
        {"val_change_corr": 0.41, "val_mse_brain": 0.9, "val_identity_mse_brain": 1.0},  # late collapse
        {"val_change_corr": float("nan"), "val_mse_brain": 0.9, "val_identity_mse_brain": 1.0},
    ]
    for epoch, row in enumerate(rows, start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        best.offer(epoch, row, model)
    assert best.epoch == 2 and best.score == pytest.approx(0.62)
    assert best.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))
    assert not BestEpoch().restore(model), "nothing offered: the model is left as trained"


def test_the_per_epoch_validation_subset_is_spread_over_the_set():
    from alzprog.training.progression import PairData, _spread

    n = 30
    imgs = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    data = PairData(source=imgs, target=imgs, source_mask=imgs > 0, target_mask=imgs > 0, paired=True, weights=np.ones(n))
    sub = _spread(data, 6)
    firsts = sub.source[:, 0, 0].tolist()
    assert firsts[0] == 0 and firsts[-1] == n - 1 and len(firsts) == 6, firsts
    assert _spread(data, 100) is data
