"""The local model cache serves the version the registry names, never another registry's copy.

Two real sqlite-backed MLflow registries (each with its own artifact folder) share ONE data
home, and both hold version 1 of the same model name with different weights. A cache keyed by
name and version alone answers the second registry from the first one's folder; these tests
pin that it does not, that a re-created registry is not answered from the stale folder, that a
tampered cached file is detected (also when its ``digests.json`` is rewritten to match), that
old-layout folders are never trusted, and that an unreachable registry is only ever answered
with the folder last resolved for that same registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from alzprog import registry
from alzprog.artifacts import DIGESTS_FILE, WEIGHTS_FILE, save_artifact, sha256_file
from alzprog.models.stage_classifier import build_stage_classifier, classifier_config

NAME = "cache-test-classifier"


def tiny_artifact(out: Path, seed: int) -> Path:
    """A small real classifier artifact (safetensors + JSON); ``seed`` sets its weights."""
    cfg = classifier_config("efficientnet_b0", 32, width_mult=0.25, depth_mult=0.25, pretrained="none")
    torch.manual_seed(seed)
    model = build_stage_classifier(cfg).eval()
    save_artifact(out, model, cfg, torch.randn(1, 3, 32, 32), export_onnx=False)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache_art")
    return {k: tiny_artifact(root / k, seed) for k, seed in (("a", 1), ("b", 2), ("a2", 3))}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """One data home for every registry of a test; the URI is set per registry below."""
    h = tmp_path / "home"
    monkeypatch.setenv("ALZPROG_HOME", str(h))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return h


def use_registry(monkeypatch, folder: Path) -> str:
    """Point the process at a sqlite registry in ``folder`` (created on first use)."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def register_champion(folder: Path, model_dir: Path) -> tuple[str, str]:
    """Register ``model_dir`` as a new version of NAME in the current registry and make it
    champion; its artifacts go to ``folder/artifacts``. Returns (version, run id)."""
    c = registry.client()
    exp = c.get_experiment_by_name("cache-test")
    exp_id = exp.experiment_id if exp else c.create_experiment("cache-test", artifact_location=(folder / "artifacts").as_uri())
    run = c.create_run(exp_id)
    version = registry.register_artifact(model_dir, NAME, run.info.run_id, alias="champion")
    c.set_terminated(run.info.run_id)
    return version, run.info.run_id


def weights_sha(d: Path) -> str:
    return sha256_file(Path(d) / WEIGHTS_FILE)


def test_switching_and_recreating_registries_under_one_data_home(home, tmp_path, monkeypatch, artifacts):
    reg_a, reg_b = tmp_path / "registry-a", tmp_path / "registry-b"

    use_registry(monkeypatch, reg_a)
    va, run_a = register_champion(reg_a, artifacts["a"])
    got_a = registry.resolve_model(f"models:/{NAME}@champion")
    assert (got_a.version, got_a.run_id) == (va, run_a) == ("1", run_a)
    assert weights_sha(got_a.local_dir) == weights_sha(artifacts["a"])
    assert got_a.local_dir.is_relative_to(registry.cache_root())

    # Registry B, same data home, also has version 1 of the same name: B's weights, not A's folder.
    use_registry(monkeypatch, reg_b)
    vb, run_b = register_champion(reg_b, artifacts["b"])
    assert vb == "1" and run_b != run_a
    got_b = registry.resolve_model(f"models:/{NAME}@champion")
    assert got_b.run_id == run_b
    assert weights_sha(got_b.local_dir) == weights_sha(artifacts["b"]) != weights_sha(artifacts["a"])
    assert got_b.local_dir != got_a.local_dir
    assert registry.resolve_model(f"models:/{NAME}/1").local_dir == got_b.local_dir

    # Offline, each registry is answered only with its own last-resolved folder.
    assert [r.local_dir for r in registry.cached_versions(NAME)] == [got_b.local_dir]
    use_registry(monkeypatch, reg_a)
    assert [r.local_dir for r in registry.cached_versions(NAME)] == [got_a.local_dir]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a registry never resolved here
    assert registry.cached_versions(NAME) == []
    with pytest.raises(Exception):
        registry.resolve_model(f"models:/{NAME}@champion")

    # Registry A is deleted and re-created at the same URI with other weights, again as version 1.
    # MLflow keeps one database engine per URI inside a process, which would still read the
    # deleted file, so the re-created registry is used from a fresh process, as after a restart.
    shutil.rmtree(reg_a)
    got = in_fresh_process(reg_a, artifacts["a2"])
    assert got["version"] == "1" and got["run_id"] != run_a
    assert got["weights"] == weights_sha(artifacts["a2"]) != weights_sha(artifacts["a"])
    assert got["local_dir"] != str(got_a.local_dir)
    assert got["cached_run_ids"] == [got["run_id"]]


def in_fresh_process(folder: Path, model_dir: Path) -> dict:
    """Create a registry in ``folder``, register ``model_dir`` as champion and resolve it, all in
    a new Python process on this process's data home; return what it resolved."""
    script = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import test_model_cache as t; print('RESULT', json.dumps(t.register_and_resolve(Path(sys.argv[2]), Path(sys.argv[3]))))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(folder), str(model_dir)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def register_and_resolve(folder: Path, model_dir: Path) -> dict:
    """Register ``model_dir`` as champion in the current registry, then resolve it (child side)."""
    version, run_id = register_champion(folder, model_dir)
    got = registry.resolve_model(f"models:/{NAME}@champion")
    assert (got.version, got.run_id) == (version, run_id)
    return {"version": got.version, "run_id": got.run_id, "local_dir": str(got.local_dir),
            "weights": weights_sha(got.local_dir), "cached_run_ids": [r.run_id for r in registry.cached_versions(NAME)]}


def test_tampered_cached_files_are_detected_and_replaced(home, tmp_path, monkeypatch, artifacts):
    from safetensors.torch import load_file, save_file

    reg = tmp_path / "registry"
    use_registry(monkeypatch, reg)
    register_champion(reg, artifacts["a"])
    good = registry.resolve_model(f"models:/{NAME}@champion")
    expected = weights_sha(artifacts["a"])

    # Other weights in a valid safetensors file: the folder's own digests catch it.
    state = load_file(str(good.local_dir / WEIGHTS_FILE))
    first = sorted(state)[0]
    state[first] = state[first] + 1.0
    save_file(state, str(good.local_dir / WEIGHTS_FILE))
    assert registry.cached_versions(NAME) == []
    fixed = registry.resolve_model(f"models:/{NAME}@champion")
    assert weights_sha(fixed.local_dir) == expected

    # The same, with digests.json rewritten to agree: only the digests recorded at registration catch it.
    save_file(state, str(fixed.local_dir / WEIGHTS_FILE))
    dig = json.loads((fixed.local_dir / DIGESTS_FILE).read_text())
    dig["files"][WEIGHTS_FILE] = sha256_file(fixed.local_dir / WEIGHTS_FILE)
    (fixed.local_dir / DIGESTS_FILE).write_text(json.dumps(dig))
    assert registry.cached_versions(NAME) == []
    again = registry.resolve_model(f"models:/{NAME}@champion")
    assert weights_sha(again.local_dir) == expected
    assert [weights_sha(r.local_dir) for r in registry.cached_versions(NAME)] == [expected]


def test_old_layout_folders_are_ignored(home, tmp_path, monkeypatch, artifacts):
    reg = tmp_path / "registry"
    use_registry(monkeypatch, reg)
    register_champion(reg, artifacts["b"])
    # What an earlier bootstrap left under the old ``<name>/<version>`` layout: another model.
    old = registry.cache_root() / NAME / "1"
    old.parent.mkdir(parents=True)
    shutil.copytree(artifacts["a"], old)
    assert registry.cached_versions(NAME) == []
    got = registry.resolve_model(f"models:/{NAME}@champion")
    assert got.local_dir != old
    assert weights_sha(got.local_dir) == weights_sha(artifacts["b"])


def test_registration_records_the_artifact_digests_as_version_tags(home, tmp_path, monkeypatch, artifacts):
    reg = tmp_path / "registry"
    use_registry(monkeypatch, reg)
    version, _ = register_champion(reg, artifacts["a"])
    recorded = registry.registered_digests(registry.get_version_tags(NAME, version))
    assert recorded == json.loads((artifacts["a"] / DIGESTS_FILE).read_text())["files"]


def test_registry_key_normalises_the_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = registry.registry_key("sqlite:///reg.db")
    assert rel == registry.registry_key(f"sqlite:///{tmp_path / 'reg.db'}")
    assert registry.registry_key("http://Host:5000/") == registry.registry_key("http://host:5000")
    assert registry.registry_key("http://host:5000") != registry.registry_key("http://host:5001")
    assert registry.registry_key("https://u:secret@host/") == registry.registry_key("https://u:other@host")
    assert rel != registry.registry_key(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db")
