"""The registry fails for real, under a running classifier process.

The classifier reaches the suite's real MLflow server (the ``mlflow_server`` session fixture)
through :class:`faults.FaultProxy`. "MLflow down" is the proxy in ``refuse`` mode: open
connections are reset and the port is closed, exactly what a client sees when the server
process dies (connection refused); "MLflow returns" reopens the same port. This reuses the
session's server instead of starting (and restarting) another one, which costs 20-45 s per
start on a loaded 2-core machine. The served model has a name of its own, so the champions
of the other tests are untouched, and tampered versions are registered under it.

The tests run in file order on one classifier data home; each leaves the state the next one
starts from:

1. no cached model, MLflow down: alive, not ready; ready once MLflow returns with a champion;
2. MLflow down while serving: every request still answered;
3. restart with MLflow still down: the digest-verified version downloaded in 1 is served;
4. MLflow back: a champion that fails its digest, then one that is a pickle, are refused and
   the last good version keeps serving; a good new champion is then picked up.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from faults import FaultProxy
from service_helpers import ServiceProcess, start_service, tiny_classifier_artifact

from services.common.wire import encode_canonical

pytestmark = pytest.mark.slow

POLL_S = 1.0
EXPERIMENT = "reliability-tests"


def register_raw(name: str, model_dir: Path, alias: str = "champion") -> str:
    """Register ``model_dir`` as a new version and move ``alias`` to it, WITHOUT the digest
    check of ``alzprog.registry.register_artifact``: how a tampered artifact could get in."""
    from alzprog import registry

    c = registry.client()
    run = c.create_run(registry.ensure_experiment(EXPERIMENT), run_name="reliability-test")
    c.log_artifacts(run.info.run_id, str(model_dir), artifact_path=registry.MODEL_ARTIFACT_PATH)
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - first registration
        c.create_registered_model(name)
    source = f"{c.get_run(run.info.run_id).info.artifact_uri.rstrip('/')}/{registry.MODEL_ARTIFACT_PATH}"
    mv = c.create_model_version(name=name, source=source, run_id=run.info.run_id)
    c.set_terminated(run.info.run_id)
    c.set_registered_model_alias(name, alias, str(mv.version))
    return str(mv.version)


def rewrite_digests(d: Path) -> None:
    """Recompute digests.json so the digest check itself passes (only the file kind is wrong)."""
    from alzprog.artifacts import DIGESTS_FILE, sha256_file

    files = {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file() and p.name != DIGESTS_FILE}
    (d / DIGESTS_FILE).write_text(json.dumps({"algorithm": "sha256", "files": files}))


@pytest.fixture(scope="module")
def world(mlflow_server, tmp_path_factory):
    """The proxy to the registry (down at first), the classifier's env and the shared state."""
    from conftest import free_port

    upstream = int(mlflow_server.rsplit(":", 1)[1])
    registry_link = FaultProxy("127.0.0.1", upstream, mode="refuse").start()
    home = tmp_path_factory.mktemp("relm_home")
    name = f"reliability-classifier-{uuid.uuid4().hex[:8]}"
    state = {
        "registry": registry_link,
        "name": name,
        "home": home,
        "arts": tmp_path_factory.mktemp("relm_art"),
        "logs": tmp_path_factory.mktemp("relm_logs"),
        "env": {
            "ALZPROG_HOME": str(home),
            "MLFLOW_TRACKING_URI": registry_link.url,
            "CLASSIFIER_MODEL_NAME": name,
            "CLASSIFIER_POLL_SECONDS": str(POLL_S),
            "CLASSIFIER_RETRY_SECONDS": "0.5",
            "CLASSIFIER_MAX_CONCURRENCY": "1",
            "CLASSIFIER_MLFLOW_REQUEST_TIMEOUT_S": "3",
        },
        "classifier": None,
        "port": free_port(),
    }
    try:
        yield state
    finally:
        if state["classifier"] is not None:
            state["classifier"].stop()
        registry_link.stop()


def body() -> tuple[bytes, dict[str, str]]:
    rng = np.random.default_rng(3)
    return encode_canonical(rng.integers(0, 255, (256, 256), dtype=np.uint8))


def classify(svc: ServiceProcess) -> httpx.Response:
    content, headers = body()
    return httpx.post(svc.url + "/v1/classify", content=content, headers=headers, timeout=30)


def served(svc: ServiceProcess) -> dict:
    return httpx.get(svc.url + "/v1/info", timeout=10).json()["models"][0]


def wait_for(pred, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_without_a_cached_model_and_mlflow_down_livez_200_readyz_503_until_mlflow_returns(world):
    svc = start_service("classifier", world["port"], world["env"], world["logs"])
    world["classifier"] = svc
    wait_for(lambda: _status(svc.url + "/livez") == 200, 120, "livez")
    # MLflow has been down the whole time: alive, never ready, requests refused with 503.
    for _ in range(8):
        r = httpx.get(svc.url + "/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
        assert httpx.get(svc.url + "/livez", timeout=5).status_code == 200
        time.sleep(0.25)
    refused = classify(svc)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1

    world["registry"].set_mode("pass")  # MLflow is back ...
    v1 = register_raw(world["name"], tiny_classifier_artifact(world["arts"] / "good1", seed=31))  # ... with a champion
    t0 = time.perf_counter()
    wait_for(lambda: _status(svc.url + "/readyz") == 200, 90, "ready after MLflow returned")
    became_ready = time.perf_counter() - t0
    info = served(svc)
    assert info["version"] == v1 and info["source"] == "registry"
    assert classify(svc).status_code == 200
    world["good"] = v1
    print(f"\nMEASURED classifier ready {became_ready:.2f} s after MLflow returned with a champion (poll {POLL_S} s)")


def test_mlflow_down_while_serving_fails_no_request(world):
    svc = world["classifier"]
    world["registry"].set_mode("refuse")
    t0 = time.perf_counter()
    statuses, versions, latencies = [], set(), []
    # Several poll periods: the watcher meets the dead registry more than once meanwhile.
    while time.perf_counter() - t0 < 5 * POLL_S:
        t = time.perf_counter()
        r = classify(svc)
        latencies.append(time.perf_counter() - t)
        statuses.append(r.status_code)
        versions.add(r.json().get("model", {}).get("version"))
        assert httpx.get(svc.url + "/readyz", timeout=5).status_code == 200
    assert set(statuses) == {200}, statuses
    assert versions == {world["good"]}
    wait_for(lambda: "alias resolve failed" in svc.log_text(), 30, "the watcher to meet the dead registry")
    print(f"\nMEASURED MLflow down while serving: {len(statuses)} requests, all 200, max latency {max(latencies) * 1000:.0f} ms")


def test_restart_with_mlflow_down_serves_the_digest_verified_cached_version(world):
    world["classifier"].stop()
    svc = start_service("classifier", world["port"], world["env"], world["logs"])
    world["classifier"] = svc
    wait_for(lambda: _status(svc.url + "/readyz") == 200, 120, "ready from the cache")
    info = served(svc)
    assert info["version"] == world["good"] and info["source"] == "cache"
    assert classify(svc).status_code == 200


def test_tampered_or_pickled_champion_is_refused_and_the_last_good_model_keeps_serving(world):
    from alzprog.artifacts import CONFIG_FILE, WEIGHTS_FILE

    svc = world["classifier"]
    world["registry"].set_mode("pass")
    good = world["good"]
    wait_for(lambda: served(svc)["source"] == "registry", 60, "the registry to confirm the cached version")
    cache = world["home"] / "model-cache" / world["name"]

    tampered = world["arts"] / "tampered"
    shutil.copytree(world["arts"] / "good1", tampered)
    cfg = json.loads((tampered / CONFIG_FILE).read_text())
    cfg["temperature"] = 0.05  # a silent recalibration: the digest no longer matches
    (tampered / CONFIG_FILE).write_text(json.dumps(cfg))

    pickled = world["arts"] / "pickled"
    shutil.copytree(world["arts"] / "good1", pickled)
    (pickled / WEIGHTS_FILE).write_bytes(pickle.dumps({"weights": np.zeros(4)}))
    rewrite_digests(pickled)  # digests agree: only the pickle check can catch it

    for bad_dir, why in ((tampered, "digest"), (pickled, "pickle")):
        bad = register_raw(world["name"], bad_dir)
        # The watcher tries the new champion at its next polls and refuses it each time.
        info = wait_for(
            lambda: (i := served(svc))["last_error"] and why in i["last_error"] and i,
            30,
            f"version {bad} ({why}) to be refused",
        )
        assert info["version"] == good
        for _ in range(4):
            r = classify(svc)
            assert r.status_code == 200 and r.json()["model"]["version"] == good
            time.sleep(POLL_S / 2)
        assert httpx.get(svc.url + "/readyz", timeout=5).status_code == 200
        assert not (cache / bad).exists(), "a refused version must not enter the model cache"

    new = register_raw(world["name"], tiny_classifier_artifact(world["arts"] / "good2", seed=32))
    wait_for(lambda: served(svc)["version"] == new, 60, "the next good champion")
    r = classify(svc)
    assert r.status_code == 200 and r.json()["model"]["version"] == new


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None
