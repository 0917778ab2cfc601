"""Benchmark smoke tests: the harness computes what it claims and ``python -m benchmarks.run --quick`` runs.

No thresholds on speed (the machine is shared and noisy): these tests check that timings are
taken, ratios against baselines are computed, and the CSV, the markdown report and
``latest.json`` (the benchmark contract) are written. The full run is ``make bench``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.harness import Measurement, fill_ratios, summarize, time_callable
from benchmarks.report import evaluate_targets, write_results

CONTRACT_TARGETS = {
    "service_vs_inprocess_p50",
    "service_vs_mlflow_throughput_c16",
    "progression_vs_eager_p50",
    "cache_hit_vs_miss_p50",
    "batching_throughput_gain_c16",
    "training_pipeline_vs_inmemory",
}


REPO = Path(__file__).resolve().parents[1]


def test_alzprog_bench_points_at_make_bench() -> None:
    """The benchmarks left the installed library: the old command says where they are."""
    proc = subprocess.run([sys.executable, "-m", "alzprog", "bench", "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "make bench" in proc.stderr and "python -m benchmarks.run" in proc.stderr


def test_bench_runner_refuses_an_unknown_comparison() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "forward,nosuch"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr and "forward" in proc.stderr


def test_summarize_percentiles() -> None:
    stats = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["mean_ms"] == pytest.approx(50.5)


def test_time_callable_measures_a_known_delay() -> None:
    stats = time_callable(lambda: time.sleep(0.01), warmup=1, repeats=5, items_per_call=4)
    assert stats["n"] == 5
    assert stats["p50_ms"] >= 9.0  # sleep never returns early
    assert stats["throughput"] == pytest.approx(5 * 4 / (stats["mean_ms"] * 5 / 1000), rel=1e-6)


def test_ratios_and_targets(tmp_path: Path) -> None:
    rows = [
        Measurement("forward", "classifier b1", "eager", p50_ms=100.0, throughput=10.0, baseline="eager"),
        Measurement("forward", "classifier b1", "onnxruntime", p50_ms=25.0, throughput=40.0, baseline="eager"),
        Measurement("forward", "generator b1", "onnxruntime", p50_ms=5.0, throughput=200.0, baseline="eager"),
    ]
    fill_ratios(rows)
    assert rows[0].ratio_p50 == pytest.approx(1.0)
    assert rows[1].ratio_p50 == pytest.approx(0.25)
    assert rows[1].ratio_throughput == pytest.approx(4.0)
    assert math.isnan(rows[2].ratio_p50)  # no eager row for that case: no invented baseline

    values = {"service_vs_inprocess_p50": 1.5, "service_vs_mlflow_throughput_c16": 3.2,
              "cache_hit_vs_miss_p50": 0.05, "training_pipeline_vs_inmemory": float("nan")}
    targets = evaluate_targets(values)
    assert targets["service_vs_inprocess_p50"] == {"value": 1.5, "target": 1.3, "met": False}
    assert targets["service_vs_mlflow_throughput_c16"]["met"] is True
    assert targets["cache_hit_vs_miss_p50"]["met"] is True
    # Not measured -> null and not met, never a silent pass.
    assert targets["training_pipeline_vs_inmemory"] == {"value": None, "target": 0.9, "met": False}
    assert targets["progression_vs_eager_p50"]["value"] is None

    paths = write_results(tmp_path, rows, values, notes=["unit test"])
    latest = json.loads(paths["latest"].read_text())
    assert set(latest) == {"machine", "date", "targets"}
    assert set(latest["targets"]) == CONTRACT_TARGETS
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert [r["variant"] for r in got] == ["eager", "onnxruntime", "onnxruntime"]
    assert float(got[1]["ratio_p50"]) == pytest.approx(0.25)
    md = paths["markdown"].read_text()
    assert "| `service_vs_inprocess_p50` | 1.500 | <= 1.3 | NO | missed by 15% |" in md
    assert "0.25x (eager)" in md


@pytest.mark.slow
def test_bench_quick_smoke(tmp_path: Path) -> None:
    """``python -m benchmarks.run --quick``: forward, training and the classifier service vs ``mlflow models serve``.

    Starts its own MLflow server, a classifier service and ``mlflow models serve`` on tiny
    models (the gateway and batching comparisons are covered by ``make bench``; the gateway
    itself by the service tests).
    """
    out = tmp_path / "results"
    env = dict(os.environ)
    env["ALZPROG_HOME"] = str(tmp_path / "home")
    env.pop("MLFLOW_TRACKING_URI", None)  # the bench starts its own server; never the suite's registry
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "forward,training,service",
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    latest = json.loads((out / "latest.json").read_text())
    assert set(latest["targets"]) == CONTRACT_TARGETS
    for name in ("service_vs_inprocess_p50", "service_vs_mlflow_throughput_c16", "training_pipeline_vs_inmemory"):
        t = latest["targets"][name]
        assert isinstance(t["value"], float) and t["value"] > 0, (name, t)
        assert isinstance(t["met"], bool)
    for name in ("progression_vs_eager_p50", "cache_hit_vs_miss_p50", "batching_throughput_gain_c16"):
        assert latest["targets"][name]["value"] is None  # not run here, reported as such

    csv_files = list(out.glob("*.csv"))
    md_files = list(out.glob("*.md"))
    assert len(csv_files) == 1 and len(md_files) == 1
    with open(csv_files[0]) as f:
        rows = list(csv.DictReader(f))
    comparisons = {r["comparison"] for r in rows}
    assert comparisons == {"forward", "training", "service"}
    for r in rows:
        assert int(r["n"]) > 0 and float(r["p50_ms"]) > 0 and int(r["errors"]) == 0, r
        # Every row has a baseline in the same case, so every ratio is computed.
        assert float(r["ratio_p50"]) > 0 and float(r["ratio_throughput"]) > 0, r
    variants = {(r["comparison"], r["variant"]) for r in rows}
    assert ("service", "mlflow models serve") in variants
    assert ("service", "alzprog service") in variants
    assert ("forward", "onnxruntime") in variants
    assert "## Targets" in md_files[0].read_text()
    assert "| `service_vs_mlflow_throughput_c16` |" in proc.stdout  # the table is printed
