"""The synthetic OASIS phantom: Kaggle layout, image format, determinism, longitudinal truth."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alzprog.constants import STAGES
from alzprog.data.phantom import (
    LONGITUDINAL_COLUMNS,
    SUBJECT_COLUMNS,
    find_phantom_root,
    measure_phantom,
    read_longitudinal,
    stage_counts,
    synthesize,
)

KAGGLE_NAME = re.compile(r"OAS1_(\d{4})_MR(\d+)_mpr-(\d+)_(\d+)\.jpg")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """8 subjects x 2 slices, balanced: 2 per stage."""
    out = tmp_path_factory.mktemp("phantom") / "ph"
    summary = synthesize(out, n_subjects=8, seed=3, mix="balanced", slices_per_subject=2, progress=False)
    assert summary.n_longitudinal_images == 8 * 2 * 4
    return out


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kaggle_layout_and_names(phantom: Path) -> None:
    data = phantom / "Data"
    assert sorted(p.name for p in data.iterdir()) == sorted(STAGES)
    stage_of: dict[str, str] = {}
    per_subject: dict[str, int] = {}
    for stage in STAGES:
        files = sorted((data / stage).iterdir())
        assert files, f"no images for {stage}"
        for f in files:
            m = KAGGLE_NAME.fullmatch(f.name)
            assert m, f.name
            subject, session, acq, sl = m.groups()
            assert session == "1" and acq == "1"
            assert 100 <= int(sl) <= 160
            # cross-sectional: one stage per subject, like OASIS-1
            assert stage_of.setdefault(subject, stage) == stage
            per_subject[subject] = per_subject.get(subject, 0) + 1
        assert len({KAGGLE_NAME.fullmatch(f.name).group(1) for f in files}) >= 2
    assert len(per_subject) == 8 and set(per_subject.values()) == {2}


def test_images_look_like_the_kaggle_slices(phantom: Path, oasis_sample_files: list[Path]) -> None:
    real = np.asarray(Image.open(oasis_sample_files[0]))
    for f in sorted((phantom / "Data").rglob("*.jpg")):
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (496, 248)
            a = np.asarray(im)
        assert a.shape == real.shape
        assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
        g = a[..., 0].astype(float)
        # dark background at the corners and right edge, a bright rim, a mid-grey brain
        assert g[:5, :5].max() < 20 and g[:, -40:].max() < 20
        assert np.percentile(g, 99.8) > 120
        head = g[:, 60:330]
        assert 30 < np.median(head[head > 15]) < 120


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", 8, seed=11, mix="oasis", slices_per_subject=1, progress=False)
    b = synthesize(tmp_path / "b", 8, seed=11, mix="oasis", slices_per_subject=1, progress=False, workers=2)
    c = synthesize(tmp_path / "c", 8, seed=12, mix="oasis", slices_per_subject=1, progress=False)
    da, db, dc = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b"), tree_digest(tmp_path / "c")
    assert da == db  # b used 2 worker processes: same bytes
    assert da != dc
    assert a.figures == b.figures


def test_stage_mix() -> None:
    assert stage_counts(8, "balanced") == [2, 2, 2, 2]
    assert stage_counts(41, "balanced") == [11, 10, 10, 10]
    oasis = stage_counts(40, "oasis")
    assert sum(oasis) == 40 and min(oasis) >= 2 and oasis[0] > oasis[1] > oasis[2] >= oasis[3]
    big = stage_counts(347, "oasis")
    assert big == [266, 58, 21, 2]
    with pytest.raises(ValueError):
        stage_counts(7, "balanced")
    with pytest.raises(ValueError):
        stage_counts(20, "uniform")


def test_longitudinal_ground_truth_is_complete(phantom: Path) -> None:
    lon = phantom / "longitudinal"
    with open(lon / "longitudinal.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames[:6]) == ("subject", "slice", "stage", "stage_index", "severity", "path")
        assert tuple(reader.fieldnames) == LONGITUDINAL_COLUMNS
    rows = read_longitudinal(phantom)
    with open(phantom / "subjects.csv", newline="") as fh:
        subj_reader = csv.DictReader(fh)
        assert tuple(subj_reader.fieldnames) == SUBJECT_COLUMNS
        subjects = {r["subject"]: r for r in subj_reader}
    assert len(subjects) == 8
    slices = sorted({r["slice"] for r in rows})
    assert len(slices) == 2
    assert len(rows) == 8 * 2 * 4
    for s, info in subjects.items():
        own = int(info["stage_index"])
        for sl in slices:
            mine = sorted((r for r in rows if r["subject"] == s and r["slice"] == sl), key=lambda r: r["stage_index"])
            assert [r["stage_index"] for r in mine] == [0, 1, 2, 3]
            assert [r["stage"] for r in mine] == list(STAGES)
            sev = [r["severity"] for r in mine]
            assert all(k / 4 <= v < (k + 1) / 4 for k, v in enumerate(sev)), sev  # stage = severity bin
            for r in mine:
                assert (lon / r["path"]).is_file() and (lon / r["icv_mask_path"]).is_file()
            # the cross-sectional image is the longitudinal image at the subject's own stage
            data_file = phantom / "Data" / STAGES[own] / f"{s}_MR1_mpr-1_{sl}.jpg"
            assert data_file.read_bytes() == (lon / mine[own]["path"]).read_bytes()
            assert float(info["severity"]) == pytest.approx(sev[own], abs=1e-4)


def test_atrophy_grows_with_stage_for_every_subject(phantom: Path) -> None:
    rows = read_longitudinal(phantom)
    subjects = sorted({r["subject"] for r in rows})
    for s in subjects:
        def total(key: str, k: int) -> float:
            return sum(r[key] for r in rows if r["subject"] == s and r["stage_index"] == k)

        vent = [total("ventricle_area_px", k) for k in range(4)]
        hipp = [total("hippocampus_area_px", k) for k in range(4)]
        brain = [total("brain_area_px", k) for k in range(4)]
        assert vent[0] > 0 and all(b > a for a, b in zip(vent, vent[1:])), (s, vent)
        assert all(b < a for a, b in zip(hipp, hipp[1:])), (s, hipp)
        assert all(b < a for a, b in zip(brain, brain[1:])), (s, brain)


def test_adjacent_stage_change_is_smaller_than_between_subject_difference(phantom: Path) -> None:
    f = measure_phantom(phantom)
    intra, inter = f["intra_adjacent_stage_mad"], f["inter_subject_same_stage_mad"]
    assert intra["n"] == 8 * 2 * 3
    assert intra["mean"] > 0.5  # the stages do differ
    assert intra["mean"] < inter["mean"]
    assert intra["p95"] < inter["p5"]
    # effect sizes near the design values at s = 1
    assert 0.6 < f["ventricle"]["effect_at_s1_mean"] < 1.4
    assert -0.4 < f["hippocampus"]["effect_at_s1_mean"] < -0.2


def test_find_phantom_root(phantom: Path, tmp_path: Path) -> None:
    image = next((phantom / "Data").rglob("*.jpg"))
    assert find_phantom_root([image]) == phantom.resolve()
    assert find_phantom_root([tmp_path / "x.jpg", str(image)]) == phantom.resolve()
    assert find_phantom_root([tmp_path / "x.jpg"]) is None
    assert find_phantom_root([]) is None


def test_cli_synth(tmp_path: Path, capsys) -> None:
    from alzprog.cli import main

    out = tmp_path / "cli"
    rc = main(["data", "synth", "--out", str(out), "--subjects", "8", "--seed", "5", "--slices", "1",
               "--mix", "balanced", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "adjacent stages" in text and "time:" in text
    assert (out / "longitudinal" / "longitudinal.csv").is_file() and (out / "subjects.csv").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--subjects", "5", "--no-progress"]) == 2
    # refuses to replace a folder that is not a phantom
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "other"), "--subjects", "8", "--no-progress"]) == 2
    assert (tmp_path / "other" / "keep.txt").exists()


def test_tiny_phantom_fixture(tiny_phantom: Path) -> None:
    assert find_phantom_root([tiny_phantom / "Data"]) == tiny_phantom.resolve()
    rows = read_longitudinal(tiny_phantom)
    assert len({r["subject"] for r in rows}) == 12
    assert len(rows) == 12 * 4 * 4
    counts = {stage: len({p.name.split("_MR")[0] for p in (tiny_phantom / "Data" / stage).glob("*.jpg")}) for stage in STAGES}
    assert counts == dict.fromkeys(STAGES, 3)


def test_noise_split_separates_atrophy_from_noise() -> None:
    from alzprog.data.phantom import measure_noise_split

    split = measure_noise_split(8, seed=3, mix="balanced", slices_per_subject=1, max_subjects=2)
    assert split["atrophy_only"]["n"] == 2 * 1 * 3
    assert 0 < split["atrophy_only"]["mean"] < split["noise_only"]["mean"]
    assert split["adjacent_fresh_noise"]["mean"] > split["noise_only"]["mean"] * 0.9


def test_look_matches_the_real_slices(phantom: Path, oasis_sample_files: list[Path], tmp_path: Path) -> None:
    from alzprog.data.phantom import look_statistics, save_figures

    real = look_statistics(oasis_sample_files)
    syn = look_statistics(sorted((phantom / "Data").rglob("*.jpg")))
    assert abs(syn["head_area_fraction"] - real["head_area_fraction"]) < 0.1
    assert abs(syn["head_rows"] - real["head_rows"]) < 0.12 * real["head_rows"]
    assert abs(syn["head_cols"] - real["head_cols"]) < 0.15 * real["head_cols"]
    for s, r in zip(syn["percentiles_10_25_50_75_90_99"], real["percentiles_10_25_50_75_90_99"]):
        assert abs(s - r) < 0.4 * r + 10, (syn, real)
    written = save_figures(phantom, tmp_path, real_image=oasis_sample_files[0])
    assert [p.name for p in written] == ["phantom_vs_real.png", "phantom_progression.png", "phantom_ventricles.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
