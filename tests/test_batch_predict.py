"""`alzprog predict`: batch scoring on real files (phantom slices, the real OASIS samples, a
NIfTI volume), with a corrupt file, an interruption and resume, and two torchrun ranks."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alzprog import batch_predict as bp
from alzprog.artifacts import save_artifact
from alzprog.cli import main as cli_main
from alzprog.constants import STAGES
from alzprog.inference.classifier import calibrated_probabilities, model_input
from alzprog.models.stage_classifier import build_stage_classifier, classifier_config
from alzprog.preprocessing import load_canonical


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small stage classifier artifact (ImageNet Lite0 backbone, random head) whose
    probabilities differ from slice to slice, with a temperature != 1."""
    from alzprog.models.stage_classifier import load_imagenet_weights

    torch.manual_seed(0)
    cfg = classifier_config("efficientnet_lite0", 64, pretrained="imagenet", temperature=1.7)
    model = build_stage_classifier(cfg)
    load_imagenet_weights(model, "efficientnet_lite0")
    torch.nn.init.normal_(model.classifier[-1].weight, std=0.05)
    model.eval()
    out = tmp_path_factory.mktemp("tiny_model")
    save_artifact(out, model, cfg, torch.randn(2, 3, 64, 64))
    return out


@pytest.fixture(scope="module")
def mni_volume_file(tmp_path_factory) -> Path:
    nilearn = pytest.importorskip("nilearn")
    src = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not src.is_file():
        pytest.skip("nilearn has no MNI152 template file")
    out = tmp_path_factory.mktemp("vol") / "OAS1_0999_MR1_mpr-1_anon.nii.gz"
    shutil.copyfile(src, out)
    return out


@pytest.fixture()
def archive(tmp_path, tiny_phantom, oasis_samples) -> Path:
    """Phantom slices + the 20 real OASIS slices + one truncated JPEG, in a folder tree."""
    root = tmp_path / "archive"
    shutil.copytree(tiny_phantom / "Data", root / "phantom")
    shutil.copytree(oasis_samples, root / "oasis")
    good = sorted((root / "oasis").rglob("*.jpg"))[0]
    data = good.read_bytes()
    (root / "oasis" / "OAS1_0777_MR1_mpr-1_120.jpg").write_bytes(data[: len(data) // 3])
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _by_key(rows):
    return {(r["source"], r["slice"]): r for r in rows}


def test_scores_every_slice_votes_subjects_and_lists_the_corrupt_file(archive, tiny_model, tmp_path):
    out = tmp_path / "res.csv"
    s = bp.predict_archive([archive], out, model=tiny_model, batch_size=8, workers=2, progress=False)
    n_files = len([p for p in archive.rglob("*.jpg")])
    rows = _rows(out)
    assert s.files_total == n_files and s.files_failed == 1 and len(rows) == n_files - 1
    errors = _rows(bp.errors_path(out))
    assert [Path(e["source"]).name for e in errors] == ["OAS1_0777_MR1_mpr-1_120.jpg"]
    assert errors[0]["reason"]

    # the same numbers as the one inference path on one file at a time
    sample = next(r for r in rows if "OAS1_0308" in r["source"])
    import json as _json

    from alzprog.artifacts import load_artifact

    art = load_artifact(tiny_model)
    x = model_input(load_canonical(sample["source"]).image, art.config).unsqueeze(0)
    with torch.no_grad():
        expect = calibrated_probabilities(art.model(x).numpy()[0], _json.loads((tiny_model / "config.json").read_text())["temperature"])
    got = np.array([float(sample[c]) for c in bp.PROB_COLUMNS])
    np.testing.assert_allclose(got, expect, atol=2e-5)
    assert sample["subject"] == "OAS1_0308" and sample["stage"] == STAGES[int(np.argmax(got))]

    # soft voting: the subject's probabilities are the mean of its slices'
    subjects = {r["subject"]: r for r in _rows(bp.subjects_path(out))}
    assert {"OAS1_0001", "OAS1_0003", "OAS1_0028", "OAS1_0308"} <= set(subjects)
    mine = np.array([[float(r[c]) for c in bp.PROB_COLUMNS] for r in rows if r["subject"] == "OAS1_0308"])
    assert np.ptp(mine, axis=0).max() > 1e-3, "the slices of one subject should not all score alike"
    voted = np.array([float(subjects["OAS1_0308"][c]) for c in bp.PROB_COLUMNS])
    np.testing.assert_allclose(voted, mine.mean(0) / mine.mean(0).sum(), atol=1e-5)
    assert int(subjects["OAS1_0308"]["n_slices"]) == len(mine) == 5
    assert len(subjects) == len({r["subject"] for r in rows})


def test_resumes_without_redoing_finished_files(archive, tiny_model, tmp_path):
    out = tmp_path / "res.csv"
    first = bp.predict_archive([archive], out, model=tiny_model, batch_size=4, workers=1, progress=False, limit=9)
    assert first.slices_scored == 9 or first.files_failed == 1
    done = {r["source"] for r in _rows(out)}
    # a run killed mid-write leaves half a line: it is dropped, not parsed as a result
    with out.open("a") as f:
        f.write("/half/a/line.jpg,-1,OAS1_")
    second = bp.predict_archive([archive], out, model=tiny_model, batch_size=4, workers=1, progress=False)
    assert second.files_skipped_done == len(done) + first.files_failed
    rows = _rows(out)
    keys = [(r["source"], r["slice"]) for r in rows]
    assert len(keys) == len(set(keys)), "a finished file was scored twice"
    assert not any("half" in r["source"] for r in rows)
    assert len(rows) == len(list(archive.rglob("*.jpg"))) - 1
    # nothing left: a third run scores nothing and reports the same files
    third = bp.predict_archive([archive], out, model=tiny_model, batch_size=4, workers=1, progress=False)
    assert third.slices_scored == 0 and third.files_failed == 0
    # the interrupted-and-resumed results equal an uninterrupted run
    ref = tmp_path / "ref.csv"
    bp.predict_archive([archive], ref, model=tiny_model, batch_size=16, workers=0, progress=False)
    a, b = _by_key(rows), _by_key(_rows(ref))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose([float(a[k][c]) for c in bp.PROB_COLUMNS],
                                   [float(b[k][c]) for c in bp.PROB_COLUMNS], atol=2e-5)


def test_manifest_and_nifti_volume_inputs_through_the_cli(tiny_phantom, tiny_split, tiny_model, mni_volume_file,
                                                           tmp_path, capsys):
    out = tmp_path / "cli.csv"
    code = cli_main(["predict", str(tiny_split / "test.csv"), str(mni_volume_file), "--out", str(out),
                     "--model", str(tiny_model), "--batch-size", "5", "--workers", "1", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = _rows(out)
    test_rows = _rows(tiny_split / "test.csv")
    vol_rows = [r for r in rows if r["source"] == str(mni_volume_file.resolve())]
    assert 1 <= len(vol_rows) <= 12 and all(int(r["slice"]) >= 0 for r in vol_rows)
    assert {r["subject"] for r in vol_rows} == {"OAS1_0999"}
    assert len(rows) == len(test_rows) + len(vol_rows) and summary["files_failed"] == 0
    # subject ids come from the manifest for its rows
    assert {r["subject"] for r in rows if r not in vol_rows} == {r["subject"] for r in test_rows}
    subjects = {r["subject"]: r for r in _rows(bp.subjects_path(out))}
    assert int(subjects["OAS1_0999"]["n_slices"]) == len(vol_rows)


def test_bad_model_spec_and_missing_input_are_clear(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bp.collect_items([tmp_path / "nope"])
    with pytest.raises(ValueError, match="expected a model folder"):
        bp._model_uri("not-a-model")
    assert bp._model_uri("clf:3") == "models:/clf/3" and bp._model_uri("clf@champion") == "models:/clf@champion"


def test_shards_split_by_subject_and_torchrun_two_ranks_merge(archive, tiny_model, tmp_path):
    items = bp.collect_items([archive])
    shards = [bp.shard_by_subject(items, r, 2) for r in range(2)]
    s0, s1 = ({it.subject for it in sh} for sh in shards)
    assert not s0 & s1 and len(shards[0]) + len(shards[1]) == len(items)

    out = tmp_path / "dist.csv"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "alzprog", "predict",
         str(archive), "--out", str(out), "--model", str(tiny_model), "--workers", "1", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = [bp.part_path(out, r, 2) for r in range(2)]
    assert all(p.is_file() for p in parts)
    part_subjects = [{r["subject"] for r in _rows(p)} for p in parts]
    assert part_subjects[0] and part_subjects[1] and not part_subjects[0] & part_subjects[1]
    merged = _rows(out)
    assert len(merged) == len(items) - 1
    assert len(_rows(bp.errors_path(out))) == 1
    ref = tmp_path / "single.csv"
    bp.predict_archive([archive], ref, model=tiny_model, batch_size=32, workers=1, progress=False)
    a, b = _by_key(merged), _by_key(_rows(ref))
    assert a.keys() == b.keys()
    k = next(iter(a))
    np.testing.assert_allclose([float(a[k][c]) for c in bp.PROB_COLUMNS], [float(b[k][c]) for c in bp.PROB_COLUMNS],
                               atol=2e-5)
    assert {r["subject"] for r in _rows(bp.subjects_path(out))} == {r["subject"] for r in _rows(bp.subjects_path(ref))}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
