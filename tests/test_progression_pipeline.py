"""End to end on the real surface: train the three transitions (quick preset, a few steps) on the
tiny phantom against the real MLflow server, register, reload through the registry, check ONNX
parity, run the chain on a real OASIS slice, evaluate, and regenerate the ROI ablation table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from alzprog.cli import main
from alzprog.constants import STAGES, TRANSITIONS, progression_model_name

from conftest import copy_cross_sectional

pytestmark = pytest.mark.slow

TINY = {
    "base_channels": 4, "disc_channels": 8, "crop_size": 64, "batch_size": 2, "samples_per_epoch": 4,
    "epochs": 1, "val_max_pairs": 4, "progress": False, "device": "cpu", "num_threads": 1,
}
CLASSIFIER_NAME = "test-progression-stage-classifier"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progcfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def trained(mlflow_server: str, tiny_split: Path, tiny_config: Path) -> dict:
    """Champions of all three transitions and a dcgan baseline of the first, a few steps each."""
    assert main(["train", "progression", "--split", str(tiny_split), "--transition", "all", "--preset", "quick",
                 "--config", str(tiny_config), "--max-steps", "2", "--promote"]) == 0
    assert main(["train", "progression", "--split", str(tiny_split), "--transition", "nd-vmd", "--variant", "dcgan",
                 "--preset", "quick", "--config", str(tiny_config), "--max-steps", "1"]) == 0
    return {"uri": mlflow_server}


@pytest.fixture(scope="module")
def tiny_classifier(mlflow_server: str, tmp_path_factory) -> str:
    """An untrained, tiny stage classifier registered under a test-only name (the real champion is
    the classifier's business); enough to exercise the classify -> chain path and the consistency metric."""
    import mlflow

    from alzprog import registry
    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model

    cfg = {"kind": "stage_classifier", "arch": "efficientnet_b0", "width_mult": 0.1, "depth_mult": 0.1,
           "num_classes": 4, "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": list(STAGES),
           "temperature": 1.0}
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = tmp_path_factory.mktemp("clf") / "model"
    save_artifact(out, model, cfg, torch.zeros(1, 3, 64, 64), export_onnx=False)
    registry.tracking_uri()
    mlflow.set_experiment(experiment_id=registry.ensure_experiment("progression-tests"))
    with mlflow.start_run() as run:
        version = registry.register_artifact(out, CLASSIFIER_NAME, run.info.run_id)
    return f"models:/{CLASSIFIER_NAME}/{version}"


def test_champions_reload_from_registry_with_onnx_parity(trained: dict) -> None:
    import onnxruntime as ort

    from alzprog.artifacts import load_artifact
    from alzprog.registry import get_alias_version, get_version_tags, resolve_model

    for slug, src, tgt in TRANSITIONS:
        resolved = resolve_model(f"models:/{progression_model_name(slug)}@champion")
        art = load_artifact(resolved.local_dir)
        assert art.config["kind"] == "progression_generator" and art.config["variant"] == "default"
        assert art.config["transition"] == slug and art.config["target_stage"] == STAGES[tgt]
        x = torch.rand(2, 1, 256, 256) * 2 - 1
        m = (torch.rand(2, 1, 256, 256) > 0.5).float()
        with torch.no_grad():
            ref = art.model(x, m).numpy()
        sess = ort.InferenceSession(str(resolved.local_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: torch.cat([x, m], 1).numpy()})[0]
        assert got.shape == (2, 1, 256, 256)
        assert np.abs(got - ref).max() < 1e-4
    # The dcgan baseline has its own alias and never takes the champion's.
    name = progression_model_name("nd-vmd")
    dcgan_version = get_alias_version(name, "dcgan")
    assert dcgan_version is not None and dcgan_version != get_alias_version(name, "champion")
    assert get_version_tags(name, dcgan_version)["variant"] == "dcgan"
    assert resolve_model(f"models:/{name}@dcgan").config["variant"] == "dcgan"


def test_each_transition_is_its_own_run_with_samples_and_curves(trained: dict) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(trained["uri"])
    exp = c.get_experiment_by_name("Alzheimers_Progression")
    runs = c.search_runs([exp.experiment_id], "tags.variant = 'default'")
    by_transition = {r.data.tags["transition"]: r for r in runs}
    assert set(by_transition) >= {"nd-vmd", "vmd-md", "md-mod"}
    run = by_transition["md-mod"]
    files = {f.path for f in c.list_artifacts(run.info.run_id)} | {f.path for f in c.list_artifacts(run.info.run_id, "samples")}
    assert "loss_curves.png" in files and "samples/epoch_001.png" in files
    assert "val_ssim_brain" in run.data.metrics and "val_identity_ssim_brain" in run.data.metrics
    # The kept epoch is scored on the whole validation set and named.
    assert run.data.metrics["final_selected_epoch"] == 1 and "final_val_change_corr" in run.data.metrics
    assert run.data.params["paired"] == "True"


def test_chain_end_to_end_on_a_real_oasis_slice(trained: dict, oasis_sample_files: list[Path], tmp_path: Path, tiny_classifier: str) -> None:
    from PIL import Image

    from alzprog.decode import read_slice
    from alzprog.progression import load_chain_generators, run_chain

    nd = next(p for p in oasis_sample_files if p.parent.name == "Non Demented")
    gens = load_chain_generators()
    result = run_chain(read_slice(nd), "Non Demented", gens)
    assert [s.stage for s in result.steps] == list(STAGES[1:])
    assert all(s.image.shape == (256, 256) and s.image.dtype == np.uint8 for s in result.steps)
    assert [s.model["name"] for s in result.steps] == [progression_model_name(t[0]) for t in TRANSITIONS]
    # Outside the brain the generated slice is the input: identity preservation by construction.
    outside = ~result.mask
    assert np.abs(result.steps[-1].image[outside].astype(int) - result.image[outside].astype(int)).max() <= 1
    assert run_chain(read_slice(nd), "mod", gens).steps == []

    out = tmp_path / "prog"
    assert main(["progress", str(nd), "--out", str(out), "--from-stage", "vmd"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["step_1_md.png", "step_2_mod.png", "strip.png"]
    for name in names:
        img = Image.open(out / name)
        assert img.text.get("Synthetic") == "true"
    marked = np.asarray(Image.open(out / "step_1_md.png").convert("RGB"))
    yellow = (marked[..., 0] > 200) & (marked[..., 1] > 150) & (marked[..., 2] < 80)
    assert yellow.sum() > 50  # the visible SYNTHETIC banner
    strip = Image.open(out / "strip.png")
    assert strip.size[0] == 3 * 256

    # Without --from-stage the classifier picks the start stage.
    out2 = tmp_path / "prog2"
    assert main(["progress", str(nd), "--out", str(out2), "--classifier", tiny_classifier]) == 0
    assert (out2 / "strip.png").is_file()


def test_evaluate_progression_report(trained: dict, tiny_split: Path, tmp_path: Path, tiny_classifier: str) -> None:
    from alzprog.data.split import load_split
    from alzprog.evaluation.image_metrics import pixel_metrics, summarize
    from alzprog.evaluation.progression import subsample
    from alzprog.preprocessing import load_canonical
    from alzprog.training.progression import find_pairs

    out = tmp_path / "eval"
    assert main(["evaluate", "progression", "--split", str(tiny_split), "--out", str(out), "--device", "cpu",
                 "--classifier", tiny_classifier, "--max-pairs", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("nd-vmd", "vmd-md", "md-mod", "chain"):
        r = report[key]
        for label in ("model", "identity", "dcgan"):
            assert set(r[label]) >= {"ssim_brain", "mse_brain", "psnr_brain"}
        assert 0.0 <= r["stage_consistency"] <= 1.0
        assert 0.0 <= r["ventricle_monotonic_share"] <= 1.0
        assert 0.0 < r["model"]["ssim_brain"] <= 1.0 and 0.0 < r["identity"]["ssim_brain"] <= 1.0
    assert isinstance(report["nd-vmd"]["dcgan"]["ssim_brain"], float)
    assert report["vmd-md"]["dcgan"]["ssim_brain"] is None and "dcgan" in report["vmd-md"]["dcgan"]["unavailable"]
    assert report["chain"]["dcgan"]["ssim_brain"] is None
    assert report["nd-vmd"]["standard_networks"]["lpips"].get("value") is not None or report["nd-vmd"]["standard_networks"]["lpips"]["unavailable"]
    # Change fidelity: identity's zero change scores 0 and 0, the truth scores itself 1.
    for key in ("nd-vmd", "vmd-md", "md-mod", "chain"):
        fid = report[key]["change_fidelity"]
        assert fid["identity"]["change_corr"] == 0.0
        assert fid["identity"]["growth_ratio"] == 0.0 or np.isnan(fid["identity"]["growth_ratio"])  # NaN: no true growth
        assert fid["truth"]["change_corr"] == pytest.approx(1.0)
        assert report[key]["model"]["change_corr"] == fid["model"]["change_corr"]
        assert -1.0 <= fid["model"]["change_corr"] <= 1.0
    assert "Change fidelity" in (out / "report.md").read_text()
    # The phantom's truth: ventricles grow along every true chain.
    assert report["chain"]["ventricle_monotonic_share_all"]["truth"] >= 0.5
    # Identity baseline recomputed independently from the test pairs.
    test = load_split(tiny_split, sides=("test",))["test"]
    pairs = subsample(find_pairs(test, "md-mod"), 6)
    src = [load_canonical(p) for p in pairs["source_path"]]
    tgt = [load_canonical(p) for p in pairs["target_path"]]
    expected = summarize(pixel_metrics(np.stack([s.image for s in src]), np.stack([t.image for t in tgt]),
                                       np.stack([s.mask | t.mask for s, t in zip(src, tgt)])))
    assert report["md-mod"]["identity"]["ssim_brain"] == pytest.approx(expected["ssim_brain"], abs=1e-9)
    assert report["md-mod"]["n_pairs"] == len(pairs)
    assert (out / "report.md").read_text().count("|") > 20


def test_roi_ablation_table(trained: dict, tiny_split: Path, tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    assert main(["evaluate", "progression-roi-ablation", "--split", str(tiny_split), "--transition", "md-mod",
                 "--out", str(out), "--preset", "quick", "--config", str(tiny_config), "--max-steps", "1"]) == 0
    result = json.loads((out / "roi_ablation.json").read_text())
    assert set(result["rows"]) == {"with ROI", "without ROI"}
    for row in result["rows"].values():
        assert 0 < row["ssim_brain"] <= 1 and row["mse_brain"] > 0
        assert row["lpips"]["value"] is not None or row["lpips"]["unavailable"]
    assert "ROI" in result["statement"]


def test_training_refuses_a_leaky_split(tiny_split: Path, tmp_path: Path, tiny_config: Path) -> None:
    import pandas as pd

    from alzprog.data.split import LeakageError

    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_split, leaky)
    train = pd.read_csv(leaky / "train.csv")
    test = pd.read_csv(leaky / "test.csv")
    pd.concat([train, test.head(1)]).to_csv(leaky / "train.csv", index=False)
    with pytest.raises(LeakageError):
        main(["train", "progression", "--split", str(leaky), "--transition", "nd-vmd", "--config", str(tiny_config), "--max-steps", "1"])


def test_unpaired_objective_on_a_cross_sectional_split(mlflow_server: str, tiny_split: Path, tiny_config: Path, tmp_path: Path) -> None:
    """Without longitudinal data the trainer falls back to the unpaired objective (never pairs people)."""
    import pandas as pd
    import yaml as _yaml

    cross = tmp_path / "cross_split"
    cross.mkdir()
    for side in ("train", "val", "test"):
        frame = pd.read_csv(tiny_split / f"{side}.csv", dtype={"subject": str})
        frame.assign(path=copy_cross_sectional(frame["path"], tmp_path)).to_csv(cross / f"{side}.csv", index=False)
    shutil.copy(tiny_split / "split_report.json", cross / "split_report.json")
    out = tmp_path / "run"
    assert main(["train", "progression", "--split", str(cross), "--transition", "vmd-md", "--preset", "quick",
                 "--config", str(tiny_config), "--max-steps", "2", "--no-register", "--out", str(out)]) == 0
    resolved = _yaml.safe_load((out / "vmd-md" / "config.yaml").read_text())
    assert resolved["paired"] is False and resolved["n_train_pairs"] == 0
    history = json.loads((out / "vmd-md" / "history.json").read_text())
    assert "g_identity" in history["epochs"][-1] and "g_l1" not in history["epochs"][-1]
    assert (out / "vmd-md" / "model" / "model.onnx").is_file()
