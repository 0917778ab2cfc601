"""`alzprog eda`: figures and summary on the tiny phantom (paired SSIM) and the real samples (unpaired)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from alzprog.cli import main as cli_main
from alzprog.constants import STAGES
from alzprog.data.eda import FIGURES, PAIRED_FIGURE, run_eda, stage_stats


def _check_figures(out: Path) -> None:
    for name in FIGURES:
        path = out / name
        assert path.is_file(), name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100


def test_eda_on_tiny_phantom_pairs_by_subject(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "eda"
    assert cli_main(["eda", str(tiny_phantom), "--out", str(out), "--max-per-stage", "8"]) == 0
    _check_figures(out)
    assert (out / PAIRED_FIGURE).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["longitudinal"] is not None
    assert sum(v["subjects"] for v in summary["class_balance"].values()) == summary["subjects"] == 12
    for stage in STAGES:
        assert 0 < summary["per_stage"][stage]["sampled_images"] <= 8
        assert summary["per_stage"][stage]["brain_area_px_mean"] > 0
    for entry in summary["ssim"].values():
        paired = entry["paired_by_subject"]
        assert paired["n"] > 0 and 0 < paired["mean"] <= 1
        # the same subject one stage apart is more alike than two different people
        assert paired["mean"] > entry["unpaired_adjacent"]["mean"]
        assert entry["paired_mean_abs_difference"]["n"] == paired["n"]
    md = (out / "summary.md").read_text()
    assert "paired (same subject)" in md and "eda_ssim.png" in md


def test_eda_on_real_samples_is_labelled_unpaired(oasis_samples: Path, tmp_path: Path) -> None:
    summary = run_eda(oasis_samples, tmp_path, max_per_stage=3, max_pairs=3, progress=False)
    _check_figures(tmp_path)
    assert not (tmp_path / PAIRED_FIGURE).exists()
    assert summary["longitudinal"] is None
    assert summary["class_balance"]["Moderate Dementia"] == {"images": 5, "subjects": 1}
    for entry in summary["ssim"].values():
        assert "paired_by_subject" not in entry
        assert entry["unpaired_adjacent"]["n"] == 3
        assert entry["unpaired_within_stage"]["n"] == 0  # one subject per stage: no baseline pair
    assert "**UNPAIRED**" in (tmp_path / "summary.md").read_text()


def test_stage_stats_masks_everything_outside_the_brain() -> None:
    images = np.full((2, 8, 8), 200, dtype=np.uint8)
    images[:, 2:6, 2:6] = 50
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[:, 2:6, 2:6] = True
    st = stage_stats(images, masks)
    assert st.intensity_mean == 50 and st.mask_area_mean == 16
    assert np.isnan(st.mean_image[0, 0]) and st.mean_image[3, 3] == 50
    assert st.histogram[50] == 1.0
