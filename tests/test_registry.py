"""Registry against the real MLflow server: register, aliases, champion rule, cached resolve."""

from __future__ import annotations

import uuid

import pytest
import torch

from alzprog import registry
from alzprog.artifacts import ArtifactIntegrityError, load_artifact, save_artifact
from alzprog.models.stage_classifier import build_stage_classifier, classifier_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = classifier_config("efficientnet_b0", 32, width_mult=0.25, depth_mult=0.25, pretrained="none")
    model = build_stage_classifier(cfg).eval()
    out = tmp_path_factory.mktemp("reg_model")
    save_artifact(out, model, cfg, torch.randn(1, 3, 32, 32), export_onnx=False)
    return out


def test_parse_model_uri():
    assert registry.parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert registry.parse_model_uri("models:/m/3") == ("m", None, "3")
    with pytest.raises(ValueError):
        registry.parse_model_uri("runs:/abc/model")


def test_register_resolve_and_champion_rule(mlflow_server, model_dir):
    import mlflow

    assert registry.tracking_uri() == mlflow_server
    name = f"test-model-{uuid.uuid4().hex[:6]}"
    exp = registry.ensure_experiment("test-registry")
    versions = []
    for _ in range(3):
        with mlflow.start_run(experiment_id=exp) as run:
            versions.append(registry.register_artifact(model_dir, name, run.info.run_id, tags={"t": "1"}))
    assert versions == ["1", "2", "3"]

    assert registry.get_alias_version(name, "champion") is None
    assert registry.promote_if_better(name, "1", "val_macro_f1", 0.50) is True  # first one wins
    assert registry.promote_if_better(name, "2", "val_macro_f1", 0.40) is False  # worse: stays
    assert registry.get_alias_version(name, "champion") == "1"
    assert registry.promote_if_better(name, "2", "val_macro_f1", 0.40, force=True) is True
    assert registry.get_alias_version(name, "champion") == "2"
    assert registry.promote_if_better(name, "3", "val_macro_f1", 0.45) is True  # beats 0.40
    assert registry.get_alias_version(name, "champion") == "3"
    # A tie keeps the champion, also for values that differ only after 6 decimals.
    with mlflow.start_run(experiment_id=exp) as run:
        v4 = registry.register_artifact(model_dir, name, run.info.run_id)
    assert registry.promote_if_better(name, "3", "val_macro_f1", 0.4500001234) is True  # re-tag v3
    assert registry.promote_if_better(name, v4, "val_macro_f1", 0.4500001234) is False
    assert registry.get_alias_version(name, "champion") == "3"

    resolved = registry.resolve_model(f"models:/{name}@champion")
    assert resolved.version == "3"
    assert resolved.local_dir.is_relative_to(registry.cache_root() / registry.CACHE_LAYOUT / registry.registry_key())
    assert resolved.run_id == registry.client().get_model_version(name, "3").run_id
    assert resolved.config["kind"] == "stage_classifier"
    load_artifact(resolved.local_dir)
    mtime = (resolved.local_dir / "model.safetensors").stat().st_mtime_ns
    again = registry.resolve_model(f"models:/{name}/3")
    assert (again.local_dir / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not re-downloaded
    assert [v.version for v in registry.cached_versions(name)] == ["3"]

    # A corrupted cache entry is not served: cached_versions skips it, resolve re-downloads it.
    (resolved.local_dir / "config.json").write_text("{}")
    assert registry.cached_versions(name) == []
    fixed = registry.resolve_model(f"models:/{name}/3")
    load_artifact(fixed.local_dir)

    with pytest.raises(LookupError):
        registry.resolve_model(f"models:/{name}@nope")


def test_register_refuses_broken_artifact(mlflow_server, model_dir, tmp_path):
    import mlflow

    bad = tmp_path / "bad"
    bad.mkdir()
    for p in model_dir.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x80\x04junk")
    with mlflow.start_run(experiment_id=registry.ensure_experiment("test-registry")) as run:
        with pytest.raises(ArtifactIntegrityError):
            registry.register_artifact(bad, "never-registered", run.info.run_id)
