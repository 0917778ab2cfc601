"""Helpers for the service tests: tiny real model artifacts, service processes, metrics.

The artifacts are real (``alzprog.artifacts.save_artifact``: safetensors + ONNX + digests) but
tiny, so building the three generators and a classifier takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def tiny_classifier_artifact(out: Path, seed: int = 0, temperature: float = 1.5) -> Path:
    """A 64-px scaled-down EfficientNet classifier artifact with random weights."""
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.stage_classifier import classifier_config

    cfg = classifier_config("efficientnet_b0", 64, width_mult=0.1, depth_mult=0.1, temperature=temperature, pretrained="none")
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    save_artifact(out, model, cfg, torch.randn(1, 3, 64, 64))
    return out


def tiny_generator_artifact(out: Path, seed: int = 0, precision_sensitive: bool = False) -> Path:
    """A small residual U-Net generator artifact with perturbed (non-identity) weights.

    ``precision_sensitive``: the head is :func:`make_precision_sensitive`, so its bf16 output
    is far from fp32 (the generator service must then refuse bf16 for it).
    """
    import torch

    from alzprog.artifacts import save_artifact
    from alzprog.models import build_model
    from alzprog.models.progression_generator import generator_config

    cfg = generator_config("default", base_channels=4, depth=2)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if precision_sensitive:
        make_precision_sensitive(model)
    save_artifact(out, model, cfg, torch.randn(1, 2, 256, 256), onnx_atol=1e-3)
    return out


def make_precision_sensitive(model) -> None:  # noqa: ANN001 - a lite generator
    """Make a lite generator's change a high-gain difference of neighbouring pixels (in place).

    The head (last conv) sees the input image as its second-last channel. A gain of ~250 on
    the difference of two neighbours turns bf16's rounding of the image (up to 0.4 %) and of
    the gain itself (250.25 becomes 250) into grey levels: a model bf16 must not serve.
    """
    import torch

    head = model.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, -2, 1, 1] = 250.25
        head.weight[0, -2, 1, 2] = -250.0


def seed_cache(home: Path, name: str, version: str | int, artifact: Path, tracking_uri: str | None = None) -> Path:
    """Place an artifact in ``home``'s model cache as the version last resolved for ``name@champion``
    on registry ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``); return the cached folder.

    The cache is keyed by registry, so a service only serves it offline with that same URI.
    """
    from alzprog.registry import store_in_cache

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("seed_cache needs the registry URI the service will use (tracking_uri or $MLFLOW_TRACKING_URI)")
    old = os.environ.get("ALZPROG_HOME")
    os.environ["ALZPROG_HOME"] = str(home)
    try:
        return store_in_cache(artifact, name, version, uri=uri)
    finally:
        if old is None:
            os.environ.pop("ALZPROG_HOME", None)
        else:
            os.environ["ALZPROG_HOME"] = old


def dead_port() -> int:
    """A local port nothing listens on (connection refused at once)."""
    from conftest import free_port

    return free_port()


@dataclass
class ServiceProcess:
    """A service started as ``python -m services.<name>`` with its log in a file."""

    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def start_service(name: str, port: int, env: dict[str, str], log_dir: Path, module: str | None = None) -> ServiceProcess:
    """Start ``python -m services.<name>`` (or ``module``) on ``port`` in its own process group."""
    full_env = {**os.environ, **env}
    full_env[f"{name.upper()}_PORT"] = str(port)
    full_env[f"{name.upper()}_HOST"] = "127.0.0.1"
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    log_path = log_dir / f"{name}-{port}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [PY, "-m", module or f"services.{name}"], cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return ServiceProcess(name, proc, f"http://127.0.0.1:{port}", log_path)


def wait_ready(svc: ServiceProcess, timeout: float = 120.0, path: str = "/readyz") -> None:
    """Wait until ``path`` answers 200; fail with the service log when it dies or times out."""
    from alzprog.readiness import wait_ready as poll

    poll(svc.url + path, timeout=timeout, proc=svc.proc, log_path=svc.log_path, name=svc.name,
         accept=lambda r: r.status_code == 200)


@contextmanager
def running_service(name: str, env: dict[str, str], log_dir: Path, ready_path: str = "/readyz") -> Iterator[ServiceProcess]:
    """:func:`start_service` on a free port, once ``ready_path`` answers 200; stopped on exit."""
    from conftest import free_port

    svc = start_service(name, free_port(), env, log_dir)
    try:
        wait_ready(svc, path=ready_path)
        yield svc
    finally:
        svc.stop()


@contextmanager
def gateway_clients(**defaults: Any) -> Iterator[Callable[..., Any]]:
    """A factory of started in-process gateways (``TestClient``) on ``Settings(**defaults)``, a
    call's keywords overriding; every client it made is closed on exit."""
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from services.gateway.settings import Settings

    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(Settings(**{**defaults, **overrides})))
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.__exit__(None, None, None)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^(\w+)(\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def classify_count(url: str) -> float:
    """How many ``/v1/classify`` requests a classifier has answered (from its /metrics)."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return metric_value(text, "alzprog_http_requests_total", route="/v1/classify")


def progress_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return metric_value(text, "alzprog_http_requests_total", route="/v1/progress")


def wait_client_ready(client, timeout: float = 60.0) -> dict:
    """Poll an in-process TestClient's ``/readyz`` until 200; return its JSON."""
    from alzprog.readiness import wait_ready as poll

    return poll("/readyz", timeout=timeout, get=client.get, interval=0.1, accept=lambda r: r.status_code == 200).json()


def attach_ood_reference(artifact: Path, images: list, val_share: float = 0.34) -> Path:
    """Give a classifier artifact the OOD reference training writes (``alzprog.ood``), fitted on the
    pooled features of ``images`` (uint8 slices): the first ones as training, the rest as validation."""
    import torch

    from alzprog import ood
    from alzprog.artifacts import load_artifact
    from alzprog.models.stage_classifier import forward_features
    from alzprog.preprocessing import canonicalize, classifier_input

    art = load_artifact(artifact)
    cfg = art.config
    x = torch.stack([classifier_input(canonicalize(im).image, int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"])) for im in images])
    with torch.inference_mode():
        feats = forward_features(art.model.eval(), x).double().numpy()
    n_val = max(1, int(round(val_share * len(images))))
    ood.write_reference(artifact, ood.fit_reference(feats[:-n_val], feats[-n_val:]))
    return artifact
