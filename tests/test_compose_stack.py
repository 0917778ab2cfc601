"""The whole stack in containers, for real: ``docker compose up`` and the checks a user would make.

Runs only with ``ALZPROG_COMPOSE_TEST=1`` (``make compose-test``): it builds the images
(minutes the first time, cached afterwards) and starts every container. The stack comes up
through ``scripts/compose_prepare.sh up``, the same path as ``make compose-up``, with the
``tiny`` bootstrap plan (the models are trained by the one-shot ``bootstrap`` container into
the MLflow registry in compose) and free host ports, under a project name of its own so a
user's ``make compose-up`` stack is never touched. Everything is reached through the published
gateway and frontend ports; the registry is read from inside the compose network.

1. The default stack: ``/readyz``, ``/predict`` and ``/progression`` on real OASIS slices, a
   Redis cache hit on the repeat, the served versions equal the registry's champions, the page
   in headless Chromium, bad configuration reported (not a crash loop), the classifier
   killed (fast 503s) and started again (recovers, nothing else restarted). ``down -v``.
2. The production override (API keys, MLflow on PostgreSQL, artifacts on a volume): every
   container restarted, and the champion registered before is still the champion after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ALZPROG_COMPOSE_TEST") != "1",
        reason="builds images and starts the whole stack in containers: set ALZPROG_COMPOSE_TEST=1 (make compose-test)",
    ),
]

PREPARE = REPO / "scripts" / "compose_prepare.sh"
CHROMIUM = Path("/usr/bin/chromium")
CLASSIFIER = "alzheimer-stage-classifier"
GENERATORS = ("alzheimer-progression-nd-vmd", "alzheimer-progression-vmd-md", "alzheimer-progression-md-mod")
PROD_SECRETS = {
    "API_KEYS": "web:compose-test-key-0123456789abcdef",
    "FRONTEND_API_KEY": "compose-test-key-0123456789abcdef",
    "POSTGRES_PASSWORD": "compose-test-postgres",
}
# The champion as the registry holds it, read inside the compose network by the classifier's image.
CHAMPIONS_SCRIPT = (
    "import json; from mlflow import MlflowClient; c = MlflowClient(); "
    "names = [%r] + %r; "
    "vs = {n: c.get_model_version_by_alias(n, 'champion') for n in names}; "
    "print(json.dumps({n: {'version': v.version, 'run_id': v.run_id, 'created': v.creation_timestamp} for n, v in vs.items()}))"
) % (CLASSIFIER, list(GENERATORS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComposeStack:
    """One compose project started by scripts/compose_prepare.sh, driven with docker compose."""

    def __init__(self, project: str, files: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.project = project
        self.files = files
        self.gateway_port, self.frontend_port = _free_port(), _free_port()
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": project,
            "COMPOSE_FILES": ":".join(files),
            "BOOTSTRAP_PLAN": "tiny",
            "GATEWAY_PUBLISH_PORT": str(self.gateway_port),
            "FRONTEND_PUBLISH_PORT": str(self.frontend_port),
            **(extra_env or {}),
        }
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.frontend = f"http://127.0.0.1:{self.frontend_port}"
        self.up_seconds = 0.0

    def up(self) -> None:
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(PREPARE), "up"], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=3000)
        self.up_seconds = time.monotonic() - t0
        print(proc.stdout[-6000:])
        if proc.returncode != 0:
            logs = self.compose("logs", "--no-color", "--tail", "60", check=False).stdout
            pytest.fail(f"compose up failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs[-8000:]}")

    def down(self) -> None:
        subprocess.run(["bash", str(PREPARE), "down"], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600)

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--env-file", str(REPO / ".run" / "compose" / "compose.env")]
        for f in self.files:
            cmd += ["-f", f]
        proc = subprocess.run(cmd + list(args), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed: {proc.stderr[-3000:]}")
        return proc

    def champions(self) -> dict[str, dict]:
        out = self.compose("exec", "-T", "classifier", "python", "-c", CHAMPIONS_SCRIPT).stdout
        return json.loads(out.strip().splitlines()[-1])

    def started_at(self) -> dict[str, str]:
        """``{service: StartedAt}`` of the running containers (a restart changes it)."""
        ids = self.compose("ps", "-q").stdout.split()
        info = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c["State"]["StartedAt"] for c in info}


def _wait_ready(url: str, deadline_s: float, headers: dict | None = None) -> dict:
    from alzprog.readiness import wait_ready

    try:
        return wait_ready(url + "/readyz", timeout=deadline_s, headers=headers, interval=1.0,
                          accept=lambda r: r.status_code == 200).json()
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def _upload(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


@pytest.fixture(scope="module")
def engine() -> None:
    if not PREPARE.is_file():
        pytest.fail(f"{PREPARE} is missing")
    free_gb = shutil.disk_usage("/").free / 1e9
    if free_gb < 15:
        pytest.skip(f"only {free_gb:.1f} GB free on /: the images need about 15 GB; not run")


@pytest.fixture(scope="module")
def stack(engine):
    s = ComposeStack("alzprog-compose-test", ["docker-compose.yml"])
    s.down()  # leftovers of an interrupted run
    s.up()
    print(f"[compose-test] default stack up and healthy in {s.up_seconds:.0f} s")
    yield s
    s.down()


@pytest.fixture(scope="module")
def champions(stack) -> dict[str, dict]:
    return stack.champions()


@pytest.fixture(scope="module")
def samples(oasis_sample_files) -> dict[str, Path]:
    by_stage: dict[str, Path] = {}
    for p in oasis_sample_files:
        by_stage.setdefault(p.parent.name, p)
    return by_stage


def test_readyz_reports_every_dependency_ready(stack):
    body = _wait_ready(stack.gateway, 120)
    assert body["ready"] is True
    assert body["checks"]["classifier"]["ready"] is True
    assert body["checks"]["generator"]["ready"] is True
    # Redis in compose, not the machine's own: the cache is up.
    assert body["checks"]["cache"]["status"] == "ok", body["checks"]["cache"]
    assert httpx.get(stack.frontend + "/livez", timeout=5).status_code == 200


def test_the_bootstrap_service_registered_every_champion(stack, champions):
    assert set(champions) == {CLASSIFIER, *GENERATORS}
    assert all(v["version"] for v in champions.values())
    logs = stack.compose("logs", "--no-color", "bootstrap").stdout
    assert "[bootstrap]" in logs


def test_predict_on_a_real_oasis_slice_then_a_cache_hit(stack, champions, samples):
    sample = samples["Mild Dementia"]
    first = httpx.post(stack.gateway + "/predict", files=_upload(sample), timeout=120)
    assert first.status_code == 200, first.text
    a = first.json()
    assert a["model"] == {"name": CLASSIFIER, "version": champions[CLASSIFIER]["version"]}
    assert abs(sum(a["probabilities"].values()) - 1) < 1e-4
    assert a["cached"] is False
    again = httpx.post(stack.gateway + "/predict", files=_upload(sample), timeout=120)
    assert again.status_code == 200, again.text
    b = again.json()
    assert b["cached"] is True
    assert b["probabilities"] == a["probabilities"] and b["stage"] == a["stage"]


def test_progression_on_a_real_oasis_slice_uses_the_registry_generators(stack, champions, samples):
    r = httpx.post(stack.gateway + "/progression", files=_upload(samples["Non Demented"]), data={"from_stage": "nd"}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["from_stage"] == "Non Demented"
    assert [s["stage_index"] for s in body["steps"]] == [1, 2, 3]
    assert [s["model"] for s in body["steps"]] == [{"name": n, "version": champions[n]["version"]} for n in GENERATORS]
    assert all(s["synthetic"] and s["image"].startswith("data:image/png;base64,") for s in body["steps"])


def test_the_page_in_headless_chromium_through_the_frontend_container(stack, champions, samples):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (scripts/ensure_chromium.sh); never downloaded")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(stack.frontend + "/")
            page.wait_for_selector("body[data-ready='true']", timeout=15000)
            with page.expect_response(lambda r: "/api/progression" in r.url, timeout=180000) as info:
                page.set_input_files("#file-input", str(samples["Very mild Dementia"]))
            answer = info.value.json()
            assert info.value.status == 200, answer
            page.wait_for_selector("body[aria-busy='false']", state="attached", timeout=120000)
            assert page.inner_text("#stage-name") == answer["stage"]
            assert f"{CLASSIFIER} v{champions[CLASSIFIER]['version']}" in page.inner_text("#stage-meta")
            assert page.locator("#strip li").count() == 1 + len(answer["steps"])
            assert page.is_hidden("#error")
            assert problems == []
        finally:
            browser.close()


def test_bad_configuration_reports_not_ready_with_its_reason(stack):
    """A missing model and a wrong MLFLOW_TRACKING_URI: the container stays up, /readyz says why."""
    cases = {
        "missing-model": ["-e", "CLASSIFIER_MODEL_NAME=no-such-model"],
        "wrong-tracking-uri": ["-e", "MLFLOW_TRACKING_URI=http://no-such-mlflow:5000"],
    }
    for label, env in cases.items():
        name = f"{stack.project}-bad-{label}"
        stack.compose("run", "-d", "--no-deps", "--name", name, *env, "classifier")
        try:
            probe = (
                "import urllib.request, urllib.error, time\n"
                "time.sleep(8)\n"
                "try:\n"
                "    r = urllib.request.urlopen('http://127.0.0.1:8001/readyz', timeout=5); print(r.status, r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "    print(e.code, e.read().decode())\n"
            )
            out = subprocess.run(["docker", "exec", name, "python", "-c", probe], capture_output=True, text=True, timeout=60)
            status, _, body = out.stdout.strip().partition(" ")
            state = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True).stdout)[0]["State"]
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
            print(f"[compose-test] {label}: readyz {status} {body[:300]}; restarts {state.get('RestartCount')}")
            assert state["Running"] is True, (label, state, logs[-2000:])
            assert status == "503", (label, out.stdout, out.stderr, logs[-2000:])
            reason = json.loads(body)
            assert reason.get("ready") is False, reason
            if label == "missing-model":
                # The reason names the model the registry does not have.
                assert "no-such-model" in (reason.get("model") or {}).get("last_error", ""), reason
            # A wrong MLFLOW_TRACKING_URI: not ready and running (no crash loop), but while the
            # MLflow client retries, neither /readyz nor the log names the cause yet.
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_redis_absent_the_gateway_serves_uncached_and_says_so(stack, samples):
    """docs/reliability.md: a Redis outage degrades the cache, not readiness."""
    stack.compose("stop", "redis")
    try:
        end = time.monotonic() + 30
        while True:
            r = httpx.get(stack.gateway + "/readyz", timeout=10)
            cache = r.json()["checks"]["cache"]
            if cache["status"] == "degraded" or time.monotonic() > end:
                break
            httpx.post(stack.gateway + "/predict", files=_upload(samples["Mild Dementia"]), timeout=60)
            time.sleep(1)
        print(f"[compose-test] redis stopped: /readyz {r.status_code}, cache {cache}")
        assert r.status_code == 200 and cache["status"] == "degraded", cache
        p = httpx.post(stack.gateway + "/predict", files=_upload(samples["Mild Dementia"]), timeout=60)
        assert p.status_code == 200 and p.json()["cached"] is False, p.text
    finally:
        stack.compose("start", "redis")
    end = time.monotonic() + 60
    while httpx.get(stack.gateway + "/readyz", timeout=10).json()["checks"]["cache"]["status"] != "ok":
        assert time.monotonic() < end, "the cache did not come back after Redis returned"
        httpx.post(stack.gateway + "/predict", files=_upload(samples["Mild Dementia"]), timeout=60)
        time.sleep(1)


def test_killed_classifier_gives_fast_503s_and_recovers_alone(stack, samples):
    before = stack.started_at()
    stack.compose("kill", "classifier")
    try:
        sample = samples["Moderate Dementia"]
        # A fresh upload (not cached): the gateway must reach the classifier and cannot.
        t0 = time.monotonic()
        r = httpx.post(stack.gateway + "/predict", files=_upload(sample), timeout=60)
        predict_s = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] in {"backend_unavailable", "backend_not_ready"}
        assert "Retry-After" in r.headers
        # Bounded by the gateway's call deadline and retries, not a hung connection.
        assert predict_s < 10, predict_s
        # /progression needs the classifier too (docs/api.md): 503 with its reason.
        p = httpx.post(stack.gateway + "/progression", files=_upload(sample), timeout=60)
        assert p.status_code == 503, p.text
        assert p.json()["error"]["code"] in {"backend_unavailable", "backend_not_ready"}
        assert httpx.get(stack.gateway + "/readyz", timeout=10).status_code == 503
        print(f"[compose-test] classifier killed: /predict 503 in {predict_s * 1000:.0f} ms")
    finally:
        stack.compose("start", "classifier")
    _wait_ready(stack.gateway, 240)
    r = httpx.post(stack.gateway + "/predict", files=_upload(samples["Moderate Dementia"]), timeout=120)
    assert r.status_code == 200, r.text
    after = stack.started_at()
    others = {s for s in before if s != "classifier"}
    assert {s: after[s] for s in others} == {s: before[s] for s in others}, "nothing but the classifier restarted"
    assert after["classifier"] != before["classifier"]


@pytest.fixture(scope="module")
def prod_stack(engine, stack):
    # After the default stack's tests: one stack at a time on this machine.
    stack.down()
    s = ComposeStack("alzprog-compose-prod-test", ["docker-compose.yml", "docker-compose.prod.yml"], PROD_SECRETS)
    s.down()
    s.up()
    print(f"[compose-test] production stack up and healthy in {s.up_seconds:.0f} s")
    yield s
    s.down()


def test_production_champion_survives_a_restart_of_every_container(prod_stack, samples):
    key = {"X-API-Key": PROD_SECRETS["FRONTEND_API_KEY"]}
    sample = samples["Non Demented"]
    assert httpx.post(prod_stack.gateway + "/predict", files=_upload(sample), timeout=60).status_code == 401
    before = prod_stack.champions()
    started = prod_stack.started_at()
    prod_stack.compose("restart", timeout=900)
    assert all(prod_stack.started_at()[s] != started[s] for s in started), "every container restarted"
    # Up again waits for health; the one-shot bootstrap runs again and must find every champion.
    prod_stack.compose("up", "-d", "--wait", timeout=900)
    after = prod_stack.champions()
    assert after == before, "the registry (PostgreSQL) and its artifacts (volume) survived the restart"
    logs = prod_stack.compose("logs", "--no-color", "bootstrap").stdout
    assert "every champion exists; nothing to train" in logs
    _wait_ready(prod_stack.gateway, 240, headers=key)
    r = httpx.post(prod_stack.gateway + "/predict", files=_upload(sample), headers=key, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["model"]["version"] == before[CLASSIFIER]["version"]
