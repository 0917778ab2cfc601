"""Progression generator models and pairing rules: shapes, identity preservation, ROI, pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alzprog.models import build_model
from alzprog.models.progression_generator import (
    ConditionalPatchDiscriminator,
    DCGANDiscriminator,
    LiteUNetGenerator,
    ResidualUNetGenerator,
    build_discriminator,
    build_generator,
    generator_config,
    patch_weights,
    stack_input,
)
from alzprog.training.progression import adversarial_loss, find_pairs, masked_l1, random_crops

from conftest import copy_cross_sectional


def _batch(n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    m = torch.zeros(n, 1, size, size)
    m[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return x, m


@pytest.mark.parametrize("variant,kw", [
    ("dcgan", {}),
    ("default", {"base_channels": 4, "depth": 3}),
    ("default", {"base_channels": 8, "depth": 2}),
    ("default", {"arch": "lite", "base_channels": 4, "depth": 4}),
    ("default", {"arch": "unet", "base_channels": 4, "depth": 3}),
    ("default", {"arch": "deform", "base_channels": 4, "depth": 2, "norm": "none"}),
])
def test_generator_shapes_and_range(variant: str, kw: dict) -> None:
    model = build_model(generator_config(variant, **kw)).eval()
    x, m = _batch()
    with torch.no_grad():
        y = model(x, m)
    assert y.shape == x.shape
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    # The single-tensor (ONNX) form gives the same output.
    assert torch.allclose(model(stack_input(x, m)), y)
    disc = build_discriminator(generator_config(variant, roi=True, disc_channels=8, **kw)).eval()
    logits = disc(x, y, m)
    assert logits.dim() == 4 and logits.shape[:2] == (2, 1) and logits.shape[-1] > 1


def test_dcgan_ignores_mask_and_is_unconditional() -> None:
    gen = build_model(generator_config("dcgan")).eval()
    x, m = _batch()
    assert torch.equal(gen(x, m), gen(x, torch.zeros_like(m)))
    disc = DCGANDiscriminator(roi=False).eval()
    other_source = torch.rand_like(x)
    assert torch.equal(disc(x, x, m), disc(other_source, x, m))


@pytest.mark.parametrize("arch", ["lite", "unet", "deform"])
def test_default_generator_starts_as_identity_and_changes_only_the_brain(arch: str) -> None:
    depth = {"deform": 2}.get(arch, 4)  # deform's depth counts levels below 1/8 of the frame
    gen = build_model(generator_config("default", arch=arch, base_channels=4, depth=depth)).eval()
    x, m = _batch()
    assert torch.equal(gen(x, m), x)  # zero-initialised change head
    with torch.no_grad():
        torch.nn.init.normal_(gen.head.weight, 0, 0.5)
        gen.head.bias.fill_(0.3)
    y = gen(x, m)
    outside = m == 0
    assert torch.equal(y[outside], x[outside])
    assert (y[~outside] - x[~outside]).abs().mean() > 0.01


def test_roi_discriminator_does_not_see_the_background() -> None:
    x, m = _batch()
    y = x.clone()
    y2 = y.clone()
    y2[m == 0] = torch.rand_like(y2[m == 0])  # change only outside the brain
    roi = ConditionalPatchDiscriminator(8, roi=True).eval()
    plain = ConditionalPatchDiscriminator(8, roi=False).eval()
    plain.load_state_dict(roi.state_dict())
    assert torch.allclose(roi(x, y, m), roi(x, y2, m))
    assert not torch.allclose(plain(x, y, m), plain(x, y2, m))


def test_patch_weights_follow_the_brain() -> None:
    _, m = _batch(1, 64)
    logits = torch.zeros(1, 1, 8, 8)
    w = patch_weights(m, logits)
    assert w.shape == logits.shape
    assert float(w.sum()) == pytest.approx(64.0)
    assert float(w[..., 0, 0]) == 0.0 and float(w[..., 4, 4]) > 1.0
    # No brain at all: uniform weights instead of a division by zero.
    assert torch.equal(patch_weights(torch.zeros_like(m), logits), torch.ones_like(logits))
    # Weighted loss ignores a background patch entirely.
    bad = logits.clone()
    bad[..., 0, 0] = -50.0
    assert adversarial_loss(bad, True, w) == pytest.approx(float(adversarial_loss(logits, True, w)))


def test_masked_l1_and_crops() -> None:
    a = torch.zeros(1, 1, 4, 4)
    b = torch.ones(1, 1, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    b[..., 2:, :] = 5.0
    assert float(masked_l1(a, b, m)) == pytest.approx(1.0)
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    cx, cy = random_crops([x, x.clone()], 8, np.random.default_rng(0))
    assert cx.shape == (2, 1, 8, 8) and torch.equal(cx, cy)  # same window for input and target


def test_pairs_are_same_subject_same_slice_and_one_side_only(tiny_split: Path) -> None:
    from alzprog.data.split import load_split

    frames = load_split(tiny_split, sides=("train", "val", "test"))
    for side, frame in frames.items():
        for slug in ("nd-vmd", "vmd-md", "md-mod"):
            pairs = find_pairs(frame, slug)
            assert len(pairs) == frame["subject"].nunique() * frame.groupby("subject").size().iloc[0]
            assert set(pairs["subject"]) == set(frame["subject"])
            # Same subject (folder) and same slice on both sides of every pair.
            src = pairs["source_path"].map(lambda p: (Path(p).parent.name, Path(p).stem.rsplit("_", 1)[1]))
            tgt = pairs["target_path"].map(lambda p: (Path(p).parent.name, Path(p).stem.rsplit("_", 1)[1]))
            assert (src == tgt).all()
            assert (pairs["subject"] == src.map(lambda t: t[0])).all()
    train_subjects = set(find_pairs(frames["train"], "nd-vmd")["subject"])
    assert not train_subjects & set(frames["test"]["subject"])


def test_no_longitudinal_data_means_no_pairs(tiny_split: Path, tmp_path: Path) -> None:
    """A cross-sectional set (no longitudinal/ table) yields no pairs: never different people."""
    from alzprog.data.split import load_split
    from alzprog.training.progression import unpaired_sets

    frame = load_split(tiny_split, sides=("train",))["train"]
    cross = frame.assign(path=copy_cross_sectional(frame["path"], tmp_path))
    assert len(find_pairs(cross, "nd-vmd")) == 0
    src, tgt = unpaired_sets(cross, "nd-vmd")
    assert set(src["stage_index"]) == {0} and set(tgt["stage_index"]) == {1}
    assert not set(src["subject"]) & set(tgt["subject"])


def test_pairs_csv_is_restricted_to_the_side(tiny_split: Path, tmp_path: Path) -> None:
    from alzprog.data.split import load_split

    frames = load_split(tiny_split, sides=("train", "test"))
    all_pairs = pd.concat([find_pairs(f, "vmd-md") for f in frames.values()])
    csv = tmp_path / "pairs.csv"
    all_pairs[["source_path", "target_path", "subject", "transition"]].to_csv(csv, index=False)
    got = find_pairs(frames["train"], "vmd-md", csv)
    assert set(got["subject"]) == set(frames["train"]["subject"])
    assert len(find_pairs(frames["train"], "nd-vmd", csv)) == 0


def test_generator_arch_is_chosen_by_config_and_old_artifacts_stay_unets() -> None:
    """New configs default to the lite U-Net; an artifact config from before ``arch`` existed
    (it has ``kind`` but no ``arch``) rebuilds the first U-Net it was trained as; typos fail."""
    assert isinstance(build_generator(generator_config("default", base_channels=4)), LiteUNetGenerator)
    old = generator_config("default", base_channels=4, depth=2)
    del old["arch"]
    assert isinstance(build_generator(old), ResidualUNetGenerator)
    with pytest.raises(ValueError, match="arch"):
        build_generator(generator_config("default", arch="resnet"))


def test_lite_generator_costs_half_the_dcgan_and_a_third_of_the_first_unet() -> None:
    """The production (preset) generator costs at most half the published dcgan's multiply-adds
    (0.95 vs 2.18 GMAC per 256 x 256 frame) and a fifth of the first U-Net's quick architecture."""
    from torch.utils.flop_counter import FlopCounterMode

    from alzprog.training.config import load_config

    def gmacs(cfg: dict) -> float:
        model = build_generator(cfg).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 2, 256, 256))
        return counter.get_total_flops() / 2e9

    preset = load_config("progression", "full")
    lite = gmacs(generator_config("default", arch=preset["arch"], base_channels=preset["base_channels"], depth=preset["depth"]))
    dcgan = gmacs(generator_config("dcgan"))
    unet = gmacs(generator_config("default", arch="unet", base_channels=16, depth=3))
    assert lite <= 0.5 * dcgan and lite <= 0.35 * unet, (lite, dcgan, unet)


@pytest.mark.parametrize("arch", ["lite", "unet", "deform"])
def test_norm_none_generator_has_no_running_statistics(arch: str) -> None:
    """Crop-trained ``norm: none`` U-Nets behave the same in train and eval mode (no BN state)."""
    gen = build_model(generator_config("default", arch=arch, base_channels=4, depth={"deform": 2}.get(arch, 4), norm="none"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.modules())
    with torch.no_grad():
        torch.nn.init.normal_(gen.head.weight, 0, 0.1)
    x, m = _batch()
    with torch.no_grad():
        assert torch.equal(gen.train()(x, m), gen.eval()(x, m))


def test_progress_cli_fails_cleanly(tmp_path: Path, monkeypatch, oasis_sample_files: list[Path], capsys) -> None:
    """Bad stage, unreadable image and missing generators give exit code 2 and a message, no output."""
    from alzprog.cli import main

    image = str(oasis_sample_files[0])
    out = tmp_path / "out"
    assert main(["progress", image, "--out", str(out), "--from-stage", "severe"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    assert main(["progress", str(junk), "--out", str(out), "--from-stage", "nd"]) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["progress", image, "--out", str(out), "--from-stage", "nd"]) == 2
    assert "no alias 'champion'" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- deform


def _deform(**kw) -> torch.nn.Module:
    return build_model(generator_config("default", arch="deform", base_channels=4, depth=2, norm="none", **kw)).eval()


def test_deform_displacement_is_in_pixels_and_moves_the_image() -> None:
    """A constant head bias of atanh(1/max_disp) along x is a displacement of one pixel: the
    output inside the brain is the input shifted by one column; the Jacobian of a shift is 1."""
    gen = _deform(max_disp=4.0, max_residual=0.1)
    x, m = _batch(size=64)
    with torch.no_grad():
        gen.head.bias.copy_(torch.tensor([float(np.arctanh(0.25)), 0.0, 0.0]))
        d = gen.displacement(x, m)
        y = gen(x, m)
        jac = gen.jacobian(x, m)
    assert d.shape == (2, 2, 64, 64)
    assert torch.allclose(d[:, 0], torch.ones_like(d[:, 0]), atol=1e-5) and float(d[:, 1].abs().max()) < 1e-6
    inside = m[0, 0].bool()
    inside[:, -1] = False  # the last column samples the frame's border
    assert torch.allclose(y[0, 0][inside], x[0, 0, :, 1:][inside[:, :-1]], atol=1e-5)
    assert torch.equal(y[m == 0], x[m == 0])
    assert torch.allclose(jac, torch.ones_like(jac), atol=1e-5)
    # The stacked (ONNX) form gives the same displacement.
    assert torch.allclose(gen.displacement(stack_input(x, m)), d)


def test_deform_jacobian_sees_expansion_and_contraction() -> None:
    from alzprog.models.progression_generator import jacobian_determinant

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    # d(p) = -0.1 (p - c): each output pixel draws from nearer the centre, the centre is shown expanded.
    d = torch.stack([-0.1 * (xx - 16), -0.1 * (yy - 16)])[None]
    jac = jacobian_determinant(d)
    assert torch.allclose(jac[..., 4:-4, 4:-4], torch.full_like(jac[..., 4:-4, 4:-4], 0.81), atol=1e-5)
    assert float(jacobian_determinant(-d)[..., 4:-4, 4:-4].mean()) == pytest.approx(1.21, abs=1e-5)


def test_deform_bounds_hold() -> None:
    gen = _deform(max_disp=2.0, max_residual=0.05)
    x, m = _batch(size=64)
    with torch.no_grad():
        torch.nn.init.normal_(gen.head.weight, 0, 5.0)
        gen.head.bias.fill_(10.0)
        d, r = gen.fields(x, m)
    assert float(d.abs().max()) <= 2.0 + 1e-6 and float(r.abs().max()) <= 0.05 + 1e-6


def test_deform_onnx_export_matches_torch(tmp_path: Path) -> None:
    """grid_sample exports at the artifacts' opset and ONNX Runtime agrees with PyTorch."""
    from alzprog.artifacts import load_artifact, save_artifact

    cfg = generator_config("default", arch="deform", base_channels=4, depth=2, norm="none")
    gen = build_model(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(gen.head.weight, 0, 0.2)
    x, m = _batch(n=1, size=256)
    save_artifact(tmp_path / "model", gen, cfg, stack_input(x, m), onnx_atol=1e-4)
    assert (tmp_path / "model" / "model.onnx").is_file()
    again = load_artifact(tmp_path / "model").model.eval()
    with torch.no_grad():
        assert torch.equal(again(x, m), gen(x, m))


def test_deform_training_moves_it_off_the_identity() -> None:
    """A few steps of the trainer's gan_step on a pair whose true future is the input shifted
    make the zero-initialised deform generator displace, smoothly, in the right direction."""
    from alzprog.training.progression import gan_step

    torch.manual_seed(0)
    cfg = generator_config("default", arch="deform", base_channels=4, depth=2, norm="none", max_disp=4.0, roi=True, disc_channels=8)
    gen, disc = build_model(cfg), build_discriminator(cfg)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = lambda cx: torch.exp(-(((xx - cx) / 6) ** 2 + ((yy - 32) / 6) ** 2))  # noqa: E731
    x = (blob(30.0) * 1.6 - 0.8)[None, None].repeat(4, 1, 1, 1)
    y = (blob(32.0) * 1.6 - 0.8)[None, None].repeat(4, 1, 1, 1)  # the blob moved 2 px to the right
    m = torch.ones_like(x)
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 2e-3), torch.optim.Adam(disc.parameters(), 2e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    before = masked_l1(gen(x, m), y, m).item()
    for _ in range(40):
        parts = gan_step(gen, disc, opt_g, opt_d, scaler, x, m, y, m, paired=True, roi=True, lambda_adv=0.1, lambda_l1=100.0,
                         lambda_id=0.0, device=torch.device("cpu"), use_amp=False, recon_sigma=1.0, lambda_smooth=1.0)
    assert "g_smooth" in parts
    gen.eval()
    with torch.no_grad():
        after = masked_l1(gen(x, m), y, m).item()
        d = gen.displacement(x, m)
    assert after < 0.7 * before, (before, after)
    # Output at p samples the input at p + d: the blob moved right, so d points left at the blob.
    assert float(d[:, 0, 26:38, 26:38].mean()) < -0.3
