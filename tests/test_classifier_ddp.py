"""torchrun with 2 processes on the CPU (gloo): DDP training, rank-0-only logging, one artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_gloo(mlflow_server, tiny_split, tmp_path):
    from alzprog import registry
    from alzprog.artifacts import load_artifact

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mlflow_server)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "alzprog", "train", "classifier", "--split", str(tiny_split), "--preset", "quick",
        "--image-size", "32", "--phase1-epochs", "1", "--phase2-epochs", "1", "--device", "cpu",
        "--no-register", "--no-progress", "--out", str(out), "--run-name", "ddp-test",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Only rank 0 writes the artifact and the report.
    art = load_artifact(out / "model")
    report = json.loads((out / "train_report.json").read_text())
    assert report["world_size"] == 2
    assert [r["epoch"] for r in report["history"]] == [1, 2]
    # The gathered validation covers every validation slice exactly once.
    c = registry.client()
    run = c.get_run(art.config["training"]["run_id"])
    assert run.data.params["world_size"] == "2"
    assert run.data.params["n_val_images"] == str(report["n_val_images"])
    # Rank 0 alone logs: one point per epoch, not one per process.
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_macro_f1")] == [1, 2]
    runs = c.search_runs([run.info.experiment_id], "tags.mlflow.runName = 'ddp-test'")
    assert len(runs) == 1
