"""Subject-level stratified split and the leakage guard."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alzprog.cli import main as cli_main
from alzprog.constants import STAGES
from alzprog.data.manifest import MANIFEST_COLUMNS, build_manifest
from alzprog.data.split import (
    SIDES,
    LeakageError,
    assert_no_leakage,
    load_split,
    manifest_hash,
    side_counts,
    split_hash,
    split_manifest,
)

# 30 subjects: 14 / 8 / 5 / 3 per stage; 2 sessions x 2 acquisitions x 3 slices each.
PER_STAGE = (14, 8, 5, 3)


def synthetic_manifest(path: Path) -> pd.DataFrame:
    rows = []
    n = 0
    for idx, count in enumerate(PER_STAGE):
        for _ in range(count):
            n += 1
            subject = f"OAS1_{n:04d}"
            for session in (1, 2):
                for acq in (1, 2):
                    for sl in (100, 101, 102):
                        rows.append({
                            "path": f"/data/Data/{STAGES[idx]}/{subject}_MR{session}_mpr-{acq}_{sl}.jpg",
                            "stage": STAGES[idx], "stage_index": idx, "subject": subject,
                            "session": session, "acquisition": acq, "slice": sl,
                        })
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.csv"
    synthetic_manifest(path)
    return path


def test_split_is_subject_level_and_stratified(manifest: Path, tmp_path: Path) -> None:
    report = split_manifest(manifest, tmp_path / "s", seed=3, test_fraction=0.2, val_fraction=0.15)
    sides = {s: pd.read_csv(tmp_path / "s" / f"{s}.csv", dtype={"subject": str}) for s in SIDES}
    # every image exactly once
    assert sum(len(f) for f in sides.values()) == len(pd.read_csv(manifest))
    subjects = {s: set(f["subject"]) for s, f in sides.items()}
    assert not (subjects["train"] & subjects["val"])
    assert not (subjects["train"] & subjects["test"])
    assert not (subjects["val"] & subjects["test"])
    # all sessions/acquisitions/slices of a subject on its side: 12 images per subject everywhere
    for f in sides.values():
        assert (f.groupby("subject").size() == 12).all()
    # every stage on every side
    for side in SIDES:
        assert set(sides[side]["stage_index"]) == {0, 1, 2, 3}, side
    assert report.underfilled_stages == []
    # per-stage fractions: 14 subjects -> test 3, val 2
    assert report.counts["test"]["Non Demented"]["subjects"] == 3
    assert report.counts["val"]["Non Demented"]["subjects"] == 2
    assert report.counts["train"]["Moderate Dementia"]["subjects"] == 1
    on_disk = json.loads((tmp_path / "s" / "split_report.json").read_text())
    assert on_disk["seed"] == 3 and on_disk["manifest_sha256"] == manifest_hash(manifest)
    assert on_disk["split_sha256"] == split_hash(tmp_path / "s")
    assert on_disk["counts"]["train"]["Non Demented"]["images"] == 12 * report.counts["train"]["Non Demented"]["subjects"]


def test_split_reproducible_for_a_seed(manifest: Path, tmp_path: Path) -> None:
    split_manifest(manifest, tmp_path / "a", seed=5)
    split_manifest(manifest, tmp_path / "b", seed=5)
    split_manifest(manifest, tmp_path / "c", seed=6)
    assert split_hash(tmp_path / "a") == split_hash(tmp_path / "b")
    for side in SIDES:
        assert (tmp_path / "a" / f"{side}.csv").read_bytes() == (tmp_path / "b" / f"{side}.csv").read_bytes()
    assert split_hash(tmp_path / "a") != split_hash(tmp_path / "c")


@pytest.mark.parametrize("fractions", [(0.2, 0.15), (0.25, 0.25), (0.45, 0.45), (0.01, 0.01)])
def test_side_counts_fill_every_side_from_three_subjects(fractions: tuple[float, float]) -> None:
    tf, vf = fractions
    for n in range(0, 300):
        train, val, test = side_counts(n, tf, vf)
        assert train + val + test == n
        if n >= 3:
            assert min(train, val, test) >= 1, (n, train, val, test)
        if n >= 20:  # rounding only, no clamping, once every side holds more than one subject
            assert abs(test - n * tf) <= 1 and abs(val - n * vf) <= 1


def test_real_samples_report_underfilled_stages_by_name(oasis_samples: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "m.csv"
    build_manifest(oasis_samples, manifest, progress=False)
    assert cli_main(["data", "split", str(manifest), "--out", str(tmp_path / "s"), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "s" / "split_report.json").read_text())
    assert report["underfilled_stages"] == list(STAGES)
    assert "4 stage(s) cannot fill every side" in printed
    for stage in STAGES:
        assert stage in printed
        assert report["underfilled_detail"][stage]["subjects"] == 1
        assert report["underfilled_detail"][stage]["missing"] == ["val", "test"]
    assert len(pd.read_csv(tmp_path / "s" / "train.csv")) == 20


def test_leakage_guard_names_the_subjects(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    split_manifest(manifest, out, seed=1)
    assert_no_leakage(out)  # clean split passes
    train = pd.read_csv(out / "train.csv", dtype={"subject": str})
    test = pd.read_csv(out / "test.csv", dtype={"subject": str})
    leaked = train[train["subject"] == train["subject"].iloc[0]].iloc[:1].copy()
    leaked["path"] = "/elsewhere/leaked.jpg"  # same person, different file
    pd.concat([test, leaked]).to_csv(out / "test.csv", index=False)
    with pytest.raises(LeakageError, match=train["subject"].iloc[0]) as info:
        load_split(out, sides=("train", "val"))  # checks ALL sides on disk, not only those loaded
    assert "train and test" in str(info.value)
    with pytest.raises(LeakageError, match="OAS1_0002"):
        assert_no_leakage({"train": train.assign(subject="OAS1_0002"), "val": train.iloc[:1].assign(subject="OAS1_0002")})


def test_load_split_returns_requested_sides(tiny_split: Path) -> None:
    frames = load_split(tiny_split, sides=("train", "val", "test"))
    assert set(frames) == {"train", "val", "test"}
    for frame in frames.values():
        assert list(frame.columns) == list(MANIFEST_COLUMNS) and len(frame) > 0
