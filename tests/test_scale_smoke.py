"""The scale benchmark's code on a small tree (the full 86,437-file run is `make bench-scale`)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from alzprog.data.eda import stage_stats
from alzprog.data.manifest import OASIS_NAME, read_manifest

REPO = Path(__file__).resolve().parents[1]


def _scale():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_size_plan_matches_the_kaggle_set():
    plan = _scale().tree_plan(347, 61)
    assert plan["files"] == 86437
    assert plan["slices"] == list(range(100, 161))
    by_stage = Counter(s["stage_index"] for s in plan["subjects"])
    assert [by_stage[k] for k in range(4)] == [266, 58, 21, 2]
    files = [sum(len(s["acquisitions"]) for s in plan["subjects"] if s["stage_index"] == k) * 61 for k in range(4)]
    assert files == [67222, 13725, 5002, 488]
    assert len({s["subject"] for s in plan["subjects"]}) == 347
    assert {len(s["acquisitions"]) for s in plan["subjects"]} <= {3, 4, 5}


def test_streamed_stage_stats_equal_the_one_shot_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 24, 24), dtype=np.uint8)
    masks = rng.random((37, 24, 24)) < 0.6
    st = stage_stats(images, masks, chunk=5)
    brain = images[masks]
    assert st.n_images == 37
    assert st.intensity_mean == pytest.approx(brain.mean())
    assert st.intensity_std == pytest.approx(brain.std())
    assert st.intensity_median == np.median(brain)
    m = masks.astype(float)
    cov = m.mean(0)
    expect = np.where(cov >= 0.5, (images * m).sum(0) / np.maximum(m.sum(0), 1), np.nan)
    np.testing.assert_allclose(st.mean_image, expect, equal_nan=True)
    np.testing.assert_allclose(st.histogram, np.bincount(brain, minlength=256) / brain.size)
    assert st.mask_area_mean == pytest.approx(masks.reshape(37, -1).sum(1).mean())


def test_small_tree_runs_every_step_and_writes_the_outputs(tmp_path):
    work, results, docs = tmp_path / "work", tmp_path / "results", tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept text\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--work", str(work), "--subjects", "8",
           "--slices", "3", "--acquisitions", "2", "--predict-files", "6", "--memory-images", "16",
           "--pipeline-samples", "32", "--results", str(results), "--docs", str(docs), "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    data = json.loads(Path(out["json"]).read_text())

    # the tree: Kaggle names, 8 subjects x 2 volumes x 3 slices, every file its own bytes
    files = sorted((work / "tree" / "Data").rglob("*.jpg"))
    assert len(files) == data["tree"]["files"] == 48
    assert all(OASIS_NAME.match(f.stem) for f in files)
    assert len({f.read_bytes() for f in files}) == 48
    manifest = read_manifest(work / "manifest.csv")
    assert len(manifest) == 48 and manifest["subject"].nunique() == 8

    for step in ("index", "split", "eda", "cache", "pipeline", "predict"):
        assert data[step]["rc"] == 0 and data[step]["seconds"] > 0
        assert data[step]["peak_rss_mb_tree_sampled"] > 0 and data[step]["peak_rss_mb_largest_process"] > 0
        assert 0 < data[step]["peak_anon_rss_mb_tree_sampled"] <= data[step]["peak_rss_mb_tree_sampled"]
    assert data["cache"]["report"]["images"] == 48 and data["cache"]["report"]["bytes_on_disk"] >= 48 * 2 * 256 * 256
    assert data["pipeline"]["report"]["epoch_samples"] == 32 and data["pipeline"]["report"]["ratio"] > 0
    assert data["predict"]["images"] == 6
    assert "PROJECTION" in data["projection"]["label"]
    assert set(data["targets"]) >= {"index_under_2_min", "cache_at_least_150_img_s", "eda_under_10_min"}

    text = docs.read_text()
    assert "kept text" in text and text.count("<!-- scale-benchmark:begin -->") == 1
    csv_rows = Path(out["csv"]).read_text().splitlines()
    assert csv_rows[0].startswith("step,seconds") and len(csv_rows) == 7

    # a rerun reuses the tree and replaces the docs section instead of adding a second one
    proc = subprocess.run([*cmd, "--steps", "index"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(Path(json.loads(proc.stdout.strip().splitlines()[-1])["json"]).read_text())
    assert again["tree"]["reused"] is True
    assert docs.read_text().count("<!-- scale-benchmark:begin -->") == 1
    assert re.search(r"\| index \| [0-9.]+ \|", docs.read_text())
