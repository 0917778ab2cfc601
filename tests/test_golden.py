"""Golden tests: committed inputs and expected outputs pin the shared preprocessing and inference.

Inputs (tests/data/): a real OASIS-1 slice and one phantom slice. Expected outputs
(tests/data/golden/, written by tests/data/make_golden.py): each input's brain mask, canonical
image and canonical mask, and the library's answers of seeded tiny models. A refactor that
changes a number fails here; the services must give the library's answers.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from golden_models import golden_artifacts, library_answers
from PIL import Image
from service_helpers import dead_port, seed_cache, wait_client_ready

from alzprog.constants import CLASSIFIER_MODEL_NAME, STAGES, TRANSITIONS, progression_model_name
from alzprog.decode import read_slice
from alzprog.preprocessing import brain_mask, canonicalize
from services.common.wire import encode_canonical

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
INPUTS = {"oasis": DATA / "oasis_OAS1_0001_MR1_mpr-1_111.jpg", "phantom": DATA / "phantom_slice.jpg"}
ANSWERS = json.loads((GOLDEN / "answers.json").read_text())


def golden_png(name: str) -> np.ndarray:
    return np.asarray(Image.open(GOLDEN / f"{name}.png"))


def canonical(name: str):  # noqa: ANN201 - CanonicalSlice
    return canonicalize(read_slice(INPUTS[name]))


def assert_images_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal but for float rounding: no pixel off by more than one grey level, and few off at all."""
    assert got.shape == expected.shape, what
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"{what}: a pixel differs by {diff.max()} grey levels"
    assert (diff > 0).mean() < 0.01, f"{what}: {(diff > 0).mean():.2%} of the pixels differ"


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_brain_mask_and_canonicalize_equal_the_committed_outputs(name):
    gray = read_slice(INPUTS[name])
    np.testing.assert_array_equal(brain_mask(gray), golden_png(f"{name}_brain_mask").astype(bool))
    c = canonicalize(gray)
    np.testing.assert_array_equal(c.image, golden_png(f"{name}_canonical"))
    np.testing.assert_array_equal(c.mask, golden_png(f"{name}_canonical_mask").astype(bool))
    assert c.sha256 == ANSWERS[name]["sha256"]


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_library_answers_equal_the_committed_ones(name):
    c = canonical(name)
    probs, steps = library_answers(c.image, c.mask)
    np.testing.assert_allclose(probs, ANSWERS[name]["probabilities"], atol=1e-4)
    assert len(set(np.round(probs, 3))) > 1, "the golden classifier must not answer uniformly"
    assert len(steps) == len(TRANSITIONS)
    for k, step in enumerate(steps, start=1):
        assert_images_close(step, golden_png(f"{name}_step{k}"), f"{name} step {k}")
    assert not np.array_equal(steps[0], c.image), "the golden generators must change the image"


@pytest.fixture
def offline_home(tmp_path, monkeypatch) -> Path:
    """Own data home with the golden models in the cache, MLflow unreachable."""
    monkeypatch.setenv("ALZPROG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    classifier, generators = golden_artifacts()
    seed_cache(tmp_path, CLASSIFIER_MODEL_NAME, 1, classifier)
    for slug, path in generators.items():
        seed_cache(tmp_path, progression_model_name(slug), 1, path)
    return tmp_path


def test_classifier_service_gives_the_library_probabilities(offline_home):
    from services.classifier.app import create_app
    from services.classifier.settings import Settings

    with TestClient(create_app(Settings(retry_seconds=0.2, max_concurrency=1))) as client:
        wait_client_ready(client)
        for name in sorted(INPUTS):
            c = canonical(name)
            body, headers = encode_canonical(c.image, c.mask)
            r = client.post("/v1/classify", content=body, headers=headers)
            assert r.status_code == 200, r.text
            got = [r.json()["probabilities"][s] for s in STAGES]
            np.testing.assert_allclose(got, library_answers(c.image, c.mask)[0], atol=1e-5)


def decode_step(url: str) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    return rgb


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_generator_service_gives_the_library_steps(offline_home, backend):
    from alzprog.preprocessing import mark_synthetic
    from services.generator.app import create_app
    from services.generator.settings import Settings

    settings = Settings(retry_seconds=0.2, backend=backend, precision="fp32", max_concurrency=1)
    with TestClient(create_app(settings)) as client:
        wait_client_ready(client)
        for name in sorted(INPUTS):
            c = canonical(name)
            body, headers = encode_canonical(c.image, c.mask)
            r = client.post("/v1/progress", params={"from_stage": STAGES[0]}, content=body, headers=headers)
            assert r.status_code == 200, r.text
            _, expected = library_answers(c.image, c.mask)
            for k, (step, want) in enumerate(zip(r.json()["steps"], expected, strict=True), start=1):
                # The service returns the marked image; the library's step marked the same way.
                assert_images_close(decode_step(step["image"]), mark_synthetic(want), f"{backend} {name} step {k}")
