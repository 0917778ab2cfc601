"""`alzprog data index`: Kaggle OASIS layout, Data root vs parent, generic layout, corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alzprog.cli import main as cli_main
from alzprog.constants import STAGES
from alzprog.data.manifest import MANIFEST_COLUMNS, build_manifest, generic_subject_id, skipped_csv_path

EXPECTED_SUBJECTS = {
    "Non Demented": "OAS1_0001",
    "Very mild Dementia": "OAS1_0003",
    "Mild Dementia": "OAS1_0028",
    "Moderate Dementia": "OAS1_0308",
}


def test_index_real_samples_parses_every_field(oasis_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    frame = build_manifest(oasis_samples, out, progress=False)
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert len(frame) == 20 and frame["subject"].nunique() == 4
    on_disk = pd.read_csv(out, dtype={"subject": str})
    assert len(on_disk) == 20 and list(on_disk.columns) == list(MANIFEST_COLUMNS)
    for stage, subject in EXPECTED_SUBJECTS.items():
        rows = frame[frame["stage"] == stage]
        assert set(rows["subject"]) == {subject}
        assert set(rows["stage_index"]) == {STAGES.index(stage)}
        assert set(rows["session"]) == {1} and set(rows["acquisition"]) == {1}
        assert len(rows) == 5
    nd = frame[frame["subject"] == "OAS1_0001"]
    assert sorted(nd["slice"]) == [109, 110, 111, 112, 113]
    for p in frame["path"]:
        assert Path(p).is_absolute() and Path(p).is_file()
    row = frame[(frame["subject"] == "OAS1_0308") & (frame["slice"] == 102)].iloc[0]
    assert Path(row["path"]).name == "OAS1_0308_MR1_mpr-1_102.jpg"
    assert pd.read_csv(skipped_csv_path(out)).empty


def test_index_accepts_data_folder_and_its_parent(oasis_samples: Path, tmp_path: Path) -> None:
    a = build_manifest(oasis_samples, progress=False)  # .../Data
    b = build_manifest(oasis_samples.parent, progress=False)  # the folder holding Data/
    pd.testing.assert_frame_equal(a, b)


def _gray_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((32, 32), value, dtype=np.uint8)
    arr[8:24, 8:24] = 255 - value
    Image.fromarray(arr).save(path)


def test_generic_layout_warns_loudly(tmp_path: Path, capsys, caplog) -> None:
    root = tmp_path / "generic"
    for i, cls in enumerate(["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]):
        for k in range(3):
            _gray_png(root / cls / f"img_{k}.png", 10 * i + k)
    frame = build_manifest(root, tmp_path / "m.csv", progress=False)
    assert len(frame) == 12
    assert sorted(frame["stage_index"].unique()) == [0, 1, 2, 3]
    # each file is its own group, with a stable id derived from its path
    assert frame["subject"].nunique() == 12
    assert generic_subject_id("NonDemented/img_0.png") in set(frame["subject"])
    assert set(frame["slice"]) == {-1}
    printed = capsys.readouterr().out
    assert "SUBJECT-LEVEL SPLITTING IS IMPOSSIBLE" in printed
    assert any("SUBJECT-LEVEL SPLITTING IS IMPOSSIBLE" in r.getMessage() for r in caplog.records)
    # stable across runs
    again = build_manifest(root, progress=False)
    assert list(again["subject"]) == list(frame["subject"])


def test_undecodable_files_are_listed_and_skipped(oasis_samples: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    shutil.copytree(oasis_samples, root / "Data")
    bad_dir = root / "Data" / "Mild Dementia"
    (bad_dir / "OAS1_0028_MR1_mpr-1_150.jpg").write_bytes(b"this is not a jpeg at all")
    good = (bad_dir / "OAS1_0028_MR1_mpr-1_100.jpg").read_bytes()
    (bad_dir / "OAS1_0028_MR1_mpr-1_151.jpg").write_bytes(good[: len(good) // 3])  # truncated
    out = tmp_path / "manifest.csv"
    assert cli_main(["data", "index", str(root), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 20
    skipped = pd.read_csv(skipped_csv_path(out))
    assert sorted(Path(p).name for p in skipped["path"]) == [
        "OAS1_0028_MR1_mpr-1_150.jpg",
        "OAS1_0028_MR1_mpr-1_151.jpg",
    ]
    assert skipped["reason"].str.len().min() > 0
    printed = capsys.readouterr().out
    assert "skipped 2 undecodable file(s)" in printed and "OAS1_0028_MR1_mpr-1_151.jpg" in printed


def test_no_stage_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="no stage folder"):
        build_manifest(tmp_path, progress=False)


def test_nothing_decodable_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "Data" / "Non Demented"
    folder.mkdir(parents=True)
    (folder / "OAS1_0001_MR1_mpr-1_100.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="could be decoded"):
        build_manifest(tmp_path, tmp_path / "m.csv", progress=False)
    assert len(pd.read_csv(tmp_path / "m.skipped.csv")) == 1


def test_data_source_names_phantom_real_and_unknown(tiny_split: Path, oasis_sample_files: list[Path], tmp_path: Path) -> None:
    from alzprog.data.manifest import data_source

    assert data_source(pd.read_csv(tiny_split / "train.csv")["path"]) == "synthetic phantom"
    assert data_source(map(str, oasis_sample_files)) == "real (OASIS)"
    other = tmp_path / "scan_001.png"
    Image.new("L", (8, 8)).save(other)
    assert data_source([other]) == "unknown"
    assert data_source([]) == "unknown"
