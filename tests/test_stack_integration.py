"""The whole stack as processes, over HTTP: the serving contract, plus the failure drills.

A real MLflow server (session fixture), the real Redis (DB 11, a unique prefix), quick models
trained on the tiny phantom split and registered + promoted by ``alzprog bootstrap`` (the
``tiny`` plan), then classifier, generator, gateway and frontend started as processes on free
ports. The tests run in file order against one stack; the last ones kill and restart the
generator.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from service_helpers import classify_count, progress_count, start_service, wait_ready

from alzprog.constants import CLASSIFIER_EXPERIMENT, CLASSIFIER_MODEL_NAME, STAGES, TRANSITIONS, progression_model_name

pytestmark = pytest.mark.slow


# `registered_models` and `stack` live in tests/conftest.py (session scope) so that
# tests/test_browser.py drives the page against this same stack instead of starting another.


@pytest.fixture(scope="module")
def nd_sample(oasis_sample_files) -> bytes:
    return [p for p in oasis_sample_files if p.parent.name == "Non Demented"][0].read_bytes()


def gw(stack) -> str:
    return stack["procs"]["gateway"].url


def test_predict_on_a_real_oasis_slice(stack, nd_sample, registered_models):
    r = httpx.post(gw(stack) + "/predict", files={"file": ("slice.jpg", nd_sample, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert list(out["probabilities"]) == list(STAGES)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert out["model"] == {"name": CLASSIFIER_MODEL_NAME, "version": registered_models[CLASSIFIER_MODEL_NAME]}
    assert out["cached"] is False
    assert r.headers["cache-control"] == "no-store"


def test_progression_from_non_demented_gives_three_synthetic_steps(stack, nd_sample, registered_models):
    r = httpx.post(gw(stack) + "/progression", files={"file": ("slice.jpg", nd_sample)}, data={"from_stage": "Non Demented"}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [s["stage"] for s in out["steps"]] == list(STAGES[1:])
    assert all(s["synthetic"] and s["image"].startswith("data:image/png;base64,") for s in out["steps"])
    expected = [{"name": progression_model_name(t), "version": registered_models[progression_model_name(t)]} for t, _, _ in TRANSITIONS]
    assert out["generator_models"] == expected


def test_second_identical_request_is_served_from_redis(stack, nd_sample):
    procs = stack["procs"]
    keys = sorted(k.decode() for k in stack["redis"].scan_iter(f"{stack['prefix']}:*"))
    assert any(":predict:" in k for k in keys) and any(":progression:" in k for k in keys), keys
    clf_calls, gen_calls = classify_count(procs["classifier"].url), progress_count(procs["generator"].url)
    p = httpx.post(gw(stack) + "/predict", files={"file": ("again.jpg", nd_sample)}, timeout=60)
    g = httpx.post(gw(stack) + "/progression", files={"file": ("again.jpg", nd_sample)}, data={"from_stage": "nd"}, timeout=60)
    assert p.json()["cached"] is True and g.json()["cached"] is True
    assert classify_count(procs["classifier"].url) == clf_calls, "the classifier was called again"
    assert progress_count(procs["generator"].url) == gen_calls, "the generator was called again"


def test_frontend_proxies_the_api(stack, nd_sample):
    url = stack["procs"]["frontend"].url
    r = httpx.post(url + "/api/predict", files={"file": ("slice.jpg", nd_sample)}, timeout=60)
    assert r.status_code == 200, r.text
    assert set(r.json()["probabilities"]) == set(STAGES)


@pytest.mark.parametrize(
    "payload, status",
    [(b"", 400), (b"just some text, not an image", 415), (b"\xff\xd8\xff\xe0" + b"\x00" * 64, 422)],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_inputs_give_4xx_json(stack, payload, status):
    r = httpx.post(gw(stack) + "/predict", files={"file": ("x.png", payload)}, timeout=30)
    assert 400 <= r.status_code < 500
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message"}


def test_new_champion_is_picked_up_without_restart(stack, nd_sample, registered_models):
    from alzprog import registry

    clf = stack["procs"]["classifier"]
    pid = clf.proc.pid
    old = registered_models[CLASSIFIER_MODEL_NAME]
    resolved = registry.resolve_model(f"models:/{CLASSIFIER_MODEL_NAME}@champion")
    c = registry.client()
    run = c.create_run(registry.ensure_experiment(CLASSIFIER_EXPERIMENT), run_name="stack-test-new-champion")
    new = registry.register_artifact(resolved.local_dir, CLASSIFIER_MODEL_NAME, run.info.run_id, alias="champion")
    c.set_terminated(run.info.run_id)
    assert new != old
    deadline = time.monotonic() + 60
    served = None
    while time.monotonic() < deadline:
        r = httpx.post(gw(stack) + "/predict", files={"file": ("slice.jpg", nd_sample)}, timeout=60)
        assert r.status_code == 200, r.text  # no request fails during the swap
        served = r.json()
        if served["model"]["version"] == new:
            break
        time.sleep(0.5)
    assert served["model"]["version"] == new, "the new champion was not picked up"
    assert served["cached"] is False, "the old champion's cached answer must not be served"
    assert clf.proc.pid == pid and clf.proc.poll() is None, "no restart"
    # Put the original champion back (the stack is shared with other tests); it is picked up too.
    registry.set_alias(CLASSIFIER_MODEL_NAME, "champion", old)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(clf.url + "/v1/info", timeout=10).json()["models"][0]["version"] == old:
            break
        time.sleep(0.5)
    assert httpx.get(clf.url + "/v1/info", timeout=10).json()["models"][0]["version"] == old


def test_killed_generator_gives_fast_503_while_predict_works_then_recovers(stack, nd_sample):
    procs = stack["procs"]
    gen = procs["generator"]
    os.killpg(gen.proc.pid, signal.SIGKILL)
    gen.proc.wait(timeout=10)
    # A new image (nothing cached) so the generator is really needed.
    from fixtures_images import head_phantom, png_bytes

    data = png_bytes(head_phantom(180, 160, seed=21))
    timings = []
    for _ in range(4):
        t0 = time.perf_counter()
        r = httpx.post(gw(stack) + "/progression", files={"file": ("o.png", data)}, data={"from_stage": "nd"}, timeout=30)
        timings.append(time.perf_counter() - t0)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] in ("backend_unavailable", "backend_not_ready")
        assert int(r.headers["Retry-After"]) >= 1
    assert max(timings) < 2.0, timings
    assert timings[-1] < 0.5, f"with the circuit open the 503 should be immediate: {timings}"
    p = httpx.post(gw(stack) + "/predict", files={"file": ("o.png", data)}, timeout=60)
    assert p.status_code == 200, p.text
    ready = httpx.get(gw(stack) + "/readyz", timeout=10).json()
    assert ready["ready"] is True and ready["checks"]["generator"]["ready"] is False

    # The generator returns: the gateway recovers on its own (circuit half-open -> closed).
    procs["generator"] = start_service("generator", stack["ports"]["generator"], stack["env"], stack["logs"])
    wait_ready(procs["generator"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.post(gw(stack) + "/progression", files={"file": ("o.png", data)}, data={"from_stage": "nd"}, timeout=60)
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert len(r.json()["steps"]) == 3
