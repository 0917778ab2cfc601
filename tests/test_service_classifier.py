"""Classifier service over HTTP (FastAPI TestClient), with real tiny artifacts in the model cache.

MLflow is pointed at a dead port throughout, so these tests also prove the "MLflow down at
start" policy: a digest-verified cached model is served; without one the service is alive
but not ready.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import dead_port, seed_cache, tiny_classifier_artifact, wait_client_ready as wait_ready

from alzprog.constants import CLASSIFIER_MODEL_NAME, STAGES
from services.classifier.app import create_app
from services.classifier.settings import Settings
from services.common.wire import encode_canonical


@pytest.fixture(scope="module")
def clf_artifacts(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("clf_art")
    return {1: tiny_classifier_artifact(root / "v1", seed=1), 2: tiny_classifier_artifact(root / "v2", seed=2, temperature=2.0)}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Own data home, MLflow unreachable (connection refused), no client retries."""
    monkeypatch.setenv("ALZPROG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return tmp_path


def settings(**kw) -> Settings:
    base = dict(retry_seconds=0.2, poll_seconds=0.5, max_concurrency=1, max_queue=2)
    base.update(kw)
    return Settings(**base)


def canonical_body(seed: int = 0) -> tuple[bytes, dict[str, str]]:
    from alzprog.preprocessing import canonicalize

    rng = np.random.default_rng(seed)
    img = np.zeros((200, 180), np.uint8)
    img[30:170, 30:150] = rng.integers(60, 200, size=(140, 120), dtype=np.uint8)
    c = canonicalize(img)
    return encode_canonical(c.image, c.mask)


def test_cached_model_is_served_while_mlflow_is_down(home, clf_artifacts):
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    seed_cache(home, CLASSIFIER_MODEL_NAME, 2, clf_artifacts[2])
    with TestClient(create_app(settings())) as client:
        ready = wait_ready(client)
        assert ready["model"]["version"] == "2", "the version last resolved for the alias is served"
        assert ready["model"]["source"] == "cache"
        body, headers = canonical_body()
        r = client.post("/v1/classify", content=body, headers=headers)
        assert r.status_code == 200, r.text
        out = r.json()
        assert list(out["probabilities"]) == list(STAGES)
        assert abs(sum(out["probabilities"].values()) - 1.0) < 1e-6
        assert out["stage"] == STAGES[out["stage_index"]]
        assert out["confidence"] == pytest.approx(max(out["probabilities"].values()))
        assert out["temperature"] == 2.0
        assert out["model"] == {"name": CLASSIFIER_MODEL_NAME, "version": "2"}
        assert r.headers["x-request-id"]


def test_probabilities_are_temperature_calibrated(home, clf_artifacts):
    """The served probabilities equal softmax(logits / T) of the PyTorch model on the same input."""
    import torch

    from alzprog.artifacts import load_artifact
    from alzprog.preprocessing import classifier_input

    seed_cache(home, CLASSIFIER_MODEL_NAME, 2, clf_artifacts[2])
    body, headers = canonical_body(3)
    image = np.frombuffer(body[: 256 * 256], np.uint8).reshape(256, 256)
    art = load_artifact(clf_artifacts[2])
    with torch.no_grad():
        logits = art.model(classifier_input(image, 64, art.config["mean"], art.config["std"])[None])[0]
    expected = torch.softmax(logits / 2.0, dim=0).numpy()
    with TestClient(create_app(settings())) as client:
        wait_ready(client)
        got = client.post("/v1/classify", content=body, headers=headers).json()["probabilities"]
    np.testing.assert_allclose([got[s] for s in STAGES], expected, atol=1e-4)


def test_without_any_model_livez_ok_readyz_503_and_requests_503(home):
    with TestClient(create_app(settings())) as client:
        time.sleep(0.5)
        assert client.get("/livez").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_not_loaded"
        assert "Retry-After" in r.headers
        body, headers = canonical_body()
        r = client.post("/v1/classify", content=body, headers=headers)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_not_loaded"
        assert int(r.headers["Retry-After"]) >= 1


def test_tampered_cached_model_is_refused(home, clf_artifacts):
    d = seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    cfg = json.loads((d / "config.json").read_text())
    cfg["temperature"] = 0.01  # any change breaks the digest
    (d / "config.json").write_text(json.dumps(cfg))
    with TestClient(create_app(settings())) as client:
        time.sleep(0.8)
        assert client.get("/readyz").status_code == 503


def test_pickle_in_model_cache_is_refused_and_no_older_version_is_served(home, clf_artifacts):
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    bad = seed_cache(home, CLASSIFIER_MODEL_NAME, 2, clf_artifacts[2])
    import pickle

    (bad / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with TestClient(create_app(settings())) as client:
        time.sleep(0.8)
        # Offline, only the version last resolved for the alias may be served: not an older one.
        assert client.get("/readyz").status_code == 503


@pytest.mark.parametrize(
    "mutate, status, code",
    [
        (lambda b, h: (b[:-1], h), 400, "bad_length"),
        (lambda b, h: (b, {"Content-Type": "application/octet-stream"}), 400, "bad_shape"),
        (lambda b, h: (b, {**h, "X-Canonical-Shape": "128x128"}), 400, "bad_shape"),
        (lambda b, h: (b + b"\x07" * (256 * 256), h), 400, "bad_mask"),
        (lambda b, h: (b * 9, h), 413, "body_too_large"),
    ],
    ids=["short", "no-shape", "wrong-shape", "bad-mask", "too-large"],
)
def test_bad_internal_inputs_get_4xx_json(home, clf_artifacts, mutate, status, code):
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    img_body, headers = encode_canonical(np.full((256, 256), 100, np.uint8))
    body, headers = mutate(img_body, headers)
    with TestClient(create_app(settings())) as client:
        wait_ready(client)
        r = client.post("/v1/classify", content=body, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_info_reports_versions_and_runtime(home, clf_artifacts):
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    with TestClient(create_app(settings())) as client:
        wait_ready(client)
        info = client.get("/v1/info").json()
    assert info["ready"] is True
    assert info["models"][0]["version"] == "1"
    assert info["backend"] == "onnxruntime"
    assert "CPUExecutionProvider" in info["providers"]


def test_explain_returns_a_gradcam_overlay_and_in_brain_fraction(home, clf_artifacts):
    import base64
    import io

    from PIL import Image

    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    body, headers = canonical_body(5)
    with TestClient(create_app(settings())) as client:
        wait_ready(client)
        plain = client.post("/v1/classify", content=body, headers=headers).json()
        r = client.post("/v1/classify", params={"explain": "true"}, content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert plain["explain"] is None
    assert out["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6)
    ex = out["explain"]
    assert ex["target_stage"] == out["stage"]
    frac = ex["saliency_in_brain_fraction"]
    assert frac is None or 0.0 <= frac <= 1.0
    assert ex["overlay"].startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(ex["overlay"].split(",", 1)[1])), formats=["PNG"])
    assert im.size == (256, 256) and im.mode == "RGB"


def test_dynamic_batching_gives_the_same_answers_in_fewer_forward_passes(home, clf_artifacts):
    from concurrent.futures import ThreadPoolExecutor

    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf_artifacts[1])
    bodies = [canonical_body(seed) for seed in range(6)]
    with TestClient(create_app(settings())) as client:
        wait_ready(client)
        expected = [client.post("/v1/classify", content=b, headers=h).json()["probabilities"] for b, h in bodies]
    with TestClient(create_app(settings(batch_max_size=8, batch_max_wait_ms=200))) as client:
        wait_ready(client)
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda bh: client.post("/v1/classify", content=bh[0], headers=bh[1]), bodies))
        batching = client.get("/v1/info").json()["batching"]
    assert [r.status_code for r in got] == [200] * 6
    for r, exp in zip(got, expected):
        assert r.json()["probabilities"] == pytest.approx(exp, abs=1e-5)
    assert batching["items"] == 6
    assert batching["batches"] < 6, batching
