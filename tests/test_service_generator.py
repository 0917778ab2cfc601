"""Generator service over HTTP (FastAPI TestClient) with three tiny real transition artifacts."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import dead_port, seed_cache, tiny_generator_artifact, wait_client_ready as wait_ready

from alzprog.constants import STAGES, TRANSITIONS, progression_model_name
from services.common.wire import encode_canonical
from services.generator.app import create_app
from services.generator.settings import Settings


@pytest.fixture(scope="module")
def gen_artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_art")
    return {slug: tiny_generator_artifact(root / slug, seed=i) for i, (slug, _, _) in enumerate(TRANSITIONS)}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ALZPROG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return tmp_path


def seed_all(home: Path, gen_artifacts: dict[str, Path], skip: str | None = None) -> None:
    for slug, _, _ in TRANSITIONS:
        if slug != skip:
            seed_cache(home, progression_model_name(slug), 1, gen_artifacts[slug])


def canonical(seed: int = 0):
    from alzprog.preprocessing import canonicalize

    rng = np.random.default_rng(seed)
    img = np.zeros((220, 200), np.uint8)
    yy, xx = np.mgrid[:220, :200]
    head = ((yy - 110) / 95.0) ** 2 + ((xx - 100) / 85.0) ** 2 < 1
    img[head] = rng.integers(70, 180, size=int(head.sum()), dtype=np.uint8)
    return canonicalize(img)


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    im = Image.open(io.BytesIO(png), formats=["PNG"])
    assert not im.info, f"PNG carries metadata: {im.info}"  # re-encoded from pixels only
    return np.asarray(im)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "torch"])
def test_chain_from_non_demented_gives_three_synthetic_steps(home, gen_artifacts, backend):
    seed_all(home, gen_artifacts)
    c = canonical()
    body, headers = encode_canonical(c.image, c.mask)
    with TestClient(create_app(Settings(retry_seconds=0.2, backend=backend, max_concurrency=1))) as client:
        ready = wait_ready(client)
        served = {m["backend"] for m in ready["models"]}
        assert served <= {"onnxruntime", "torch", "torch-bf16"}
        if backend == "onnxruntime":
            assert served == {"onnxruntime"}
        elif backend == "torch":  # fp32 or, where native and faithful, bf16 (precision "auto")
            assert served <= {"torch", "torch-bf16"}
        r = client.post("/v1/progress", params={"from_stage": "Non Demented"}, content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["from_stage"] == STAGES[0]
    assert [s["stage"] for s in out["steps"]] == list(STAGES[1:])
    assert [m["name"] for m in out["models"]] == [progression_model_name(t[0]) for t in TRANSITIONS]
    previous = c.image
    for step in out["steps"]:
        assert step["synthetic"] is True
        assert step["model"]["version"] == "1"
        pixels = decode_data_url(step["image"])
        assert pixels.shape[:2] == (256, 256)
        # Marked SYNTHETIC: the banner makes it differ from a plain grayscale rendering.
        gray = pixels if pixels.ndim == 2 else pixels[..., 0]
        assert not np.array_equal(gray, previous)
        previous = gray
        # What a person reads beside it: the change map (banner + legend under the 256 frame),
        # its figures and the step's morphometrics against the input's.
        assert decode_data_url(step["change_map"]).shape[1] == 256
        assert decode_data_url(step["change_map"]).shape[0] > 256
        assert 0.0 <= step["change"]["changed_fraction"] <= 1.0
        assert step["change"]["brain_pixels"] == int(c.mask.sum())
        assert set(step["morphometry"]["pct_change"]) >= {"brain_area_px", "ventricle_area_px", "ventricle_to_brain"}
        assert step["deformation"] is None and step["deformation_map"] is None  # not a deformation model
    assert out["input_morphometry"]["brain_area_px"] == int(c.mask.sum())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_setting_decides_whether_bf16_serves(home, gen_artifacts, precision):
    """``fp32`` never offers bf16; ``bf16`` serves it where the CPU runs bf16 natively and the
    model passed the fidelity check (figures in /v1/info); the chain answers either way."""
    from alzprog.precision import cpu_bf16_native

    seed_all(home, gen_artifacts)
    c = canonical(2)
    body, headers = encode_canonical(c.image, c.mask)
    with TestClient(create_app(Settings(retry_seconds=0.2, backend="torch", precision=precision, max_concurrency=1))) as client:
        wait_ready(client)
        models = client.get("/v1/info").json()["models"]
        r = client.post("/v1/progress", params={"from_stage": "nd"}, content=body, headers=headers)
    assert r.status_code == 200 and len(r.json()["steps"]) == 3
    if precision == "fp32":
        assert {m["backend"] for m in models} == {"torch"}
        assert all(m["bf16_fidelity"] is None for m in models)
    elif cpu_bf16_native():
        assert {m["backend"] for m in models} == {"torch-bf16"}
        for m in models:
            assert m["bf16_fidelity"]["within"] is True and m["bf16_fidelity"]["mean_abs"] <= 0.5
            assert set(m["backend_timings_ms"]) == {"torch-bf16"}
    else:  # emulated bf16 is never offered
        assert {m["backend"] for m in models} == {"torch"}


def test_bf16_is_refused_for_a_model_whose_output_it_changes(home, gen_artifacts, tmp_path):
    from alzprog.precision import cpu_bf16_native

    seed_all(home, gen_artifacts)
    sensitive = tiny_generator_artifact(tmp_path / "sensitive", seed=7, precision_sensitive=True)
    seed_cache(home, progression_model_name("vmd-md"), 1, sensitive)
    with TestClient(create_app(Settings(retry_seconds=0.2, backend="torch", precision="bf16", max_concurrency=1))) as client:
        wait_ready(client)
        models = {m["name"]: m for m in client.get("/v1/info").json()["models"]}
    served = models[progression_model_name("vmd-md")]
    assert served["backend"] == "torch"  # fp32: bf16 would have moved the output by grey levels
    if cpu_bf16_native():
        assert served["bf16_fidelity"]["within"] is False and served["bf16_fidelity"]["mean_abs"] > 0.5
        assert models[progression_model_name("nd-vmd")]["backend"] == "torch-bf16"


def test_chain_starts_at_the_given_stage(home, gen_artifacts):
    seed_all(home, gen_artifacts)
    c = canonical(1)
    body, headers = encode_canonical(c.image)  # mask omitted: the service computes it
    with TestClient(create_app(Settings(retry_seconds=0.2, max_concurrency=1))) as client:
        wait_ready(client)
        two = client.post("/v1/progress", params={"from_stage": "md"}, content=body, headers=headers).json()
        none = client.post("/v1/progress", params={"from_stage": "3"}, content=body, headers=headers).json()
        bad = client.post("/v1/progress", params={"from_stage": "Severe"}, content=body, headers=headers)
    assert [s["stage"] for s in two["steps"]] == [STAGES[3]]
    assert none["steps"] == []
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_stage"


def test_missing_transition_model_means_not_ready(home, gen_artifacts):
    seed_all(home, gen_artifacts, skip="vmd-md")
    c = canonical()
    body, headers = encode_canonical(c.image, c.mask)
    with TestClient(create_app(Settings(retry_seconds=0.2, max_concurrency=1))) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            loaded = {m["name"] for m in client.get("/v1/info").json()["models"] if m["ready"]}
            if len(loaded) == 2:
                break
            time.sleep(0.1)
        assert loaded == {progression_model_name("nd-vmd"), progression_model_name("md-mod")}
        r = client.get("/readyz")
        assert r.status_code == 503
        assert "alzheimer-progression-vmd-md" in r.json()["error"]["message"]
        assert client.get("/livez").status_code == 200
        # A chain that needs the missing model is refused; one that does not still works.
        assert client.post("/v1/progress", params={"from_stage": "nd"}, content=body, headers=headers).status_code == 503
        assert client.post("/v1/progress", params={"from_stage": "md"}, content=body, headers=headers).status_code == 200
