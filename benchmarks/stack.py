"""The benchmark's own stack: an MLflow server, untrained production models registered in it,
and the services started as subprocesses, all under one temporary folder and torn down after.

Nothing here touches the user's data: the MLflow store, the model cache (``ALZPROG_HOME``) and
the logs live in the benchmark's work folder, and every process started is killed (its whole
process group) on exit, also after an error.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent


def repo_root() -> Path:
    """The checkout: ``benchmarks/`` stands beside ``services/`` and ``shared/`` (the services run
    as ``python -m services.<name>`` from here)."""
    return Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers 2xx; raise with the process log's tail if it dies or times out."""
    from alzprog.readiness import wait_ready

    wait_ready(url, timeout=timeout, proc=proc, log_path=log_path, interval=0.5)


@dataclass
class Proc:
    """A started subprocess (its own process group) and where it listens."""

    name: str
    popen: subprocess.Popen
    url: str
    log_path: Path


@dataclass
class BenchStack:
    """Processes and registered models of one benchmark run; use as a context manager."""

    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    mlflow_uri: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    _old_env: dict[str, str | None] = field(default_factory=dict)

    def __enter__(self) -> "BenchStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # ------------------------------------------------------------------ environment
    def _set_env(self, key: str, value: str) -> None:
        self._old_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    def service_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment of a service process: the bench MLflow, the bench data home, JSON logs off stdout noise."""
        env = dict(os.environ)
        env.update({
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "ALZPROG_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        })
        root = str(repo_root())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(extra or {})
        return env

    # ------------------------------------------------------------------ processes
    def start(self, name: str, argv: list[str], *, env: dict[str, str], port: int, health: str,
              timeout: float = 180.0) -> Proc:
        """Start ``argv`` in its own process group and wait for ``health`` to answer 2xx."""
        log_path = self.workdir / "logs" / f"{name}.log"
        fh = open(log_path, "ab")
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(repo_root()),
                                 start_new_session=True)
        fh.close()
        proc = Proc(name, popen, f"http://127.0.0.1:{port}", log_path)
        self.procs[name] = proc
        t0 = time.perf_counter()
        try:
            wait_http(proc.url + health, timeout, popen, log_path)
        except Exception:
            self.stop(name)
            raise
        log.info("%s ready at %s in %.1fs", name, proc.url, time.perf_counter() - t0)
        return proc

    def stop(self, name: str) -> None:
        """SIGTERM the process group of ``name``, SIGKILL after 15 s."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.popen.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)

    # ------------------------------------------------------------------ MLflow and models
    def start_mlflow(self) -> str:
        """A benchmark-only MLflow tracking server + registry (sqlite, local artifacts)."""
        root = self.workdir / "mlflow"
        root.mkdir(exist_ok=True)
        port = free_port()
        argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1"]
        # No job-execution workers: MLflow 3 otherwise forks about seven huey consumer processes
        # that the registry never uses and that would compete with the services for two CPUs.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.start("mlflow", argv, env=env, port=port, health="/health", timeout=180)
        self.mlflow_uri = f"http://127.0.0.1:{port}"
        self._set_env("MLFLOW_TRACKING_URI", self.mlflow_uri)
        self._set_env("ALZPROG_HOME", str(self.home))
        return self.mlflow_uri

    def register_production_models(self, with_generators: bool = True, tiny: bool = False) -> dict[str, str]:
        """Register untrained EfficientNet-B4 (256) and three production generators as champions.

        Returns ``{registered name: version}``. The same untrained generator artifact is
        registered for the three transitions: their cost is identical and the figures are about
        time, not about what they draw. ``tiny`` registers the smoke test's small models instead.
        """
        import torch

        from alzprog import registry
        from alzprog.artifacts import save_artifact
        from benchmarks import forward
        from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, TRANSITIONS, progression_model_name

        registry.tracking_uri()
        exp = registry.ensure_experiment("alzprog-bench")

        def new_run(name: str) -> str:
            # One run per artifact: register_artifact logs under the run's ``model/`` folder,
            # so two artifacts in one run would overwrite each other.
            return registry.client().create_run(exp, run_name=name).info.run_id

        run_id = new_run("bench-untrained-classifier")
        torch.manual_seed(0)
        t0 = time.perf_counter()
        clf_dir = self.workdir / "artifacts" / "classifier"
        classifier = forward.build_classifier(tiny)
        # Untrained weights, but a head biased to Non Demented: every request then walks the
        # full three-step chain, as the "/progression from Non Demented" target requires.
        with torch.no_grad():
            bias = classifier.classifier[-1].bias
            bias.zero_()
            bias[0] = 10.0
        cfg = forward.classifier_config(tiny)
        save_artifact(clf_dir, classifier, cfg, forward.classifier_example(1, int(cfg["image_size"])))
        self.versions[CLASSIFIER_MODEL_NAME] = registry.register_artifact(
            clf_dir, CLASSIFIER_MODEL_NAME, run_id, alias=CHAMPION_ALIAS, tags={"bench": "untrained"})
        registry.client().set_terminated(run_id)
        log.info("registered untrained %s in %.1fs", cfg["arch"], time.perf_counter() - t0)
        if with_generators:
            run_id = new_run("bench-untrained-generator")
            gen_dir = self.workdir / "artifacts" / "generator"
            save_artifact(gen_dir, forward.build_progression_generator("default", tiny), forward.generator_config("default", tiny),
                          forward.generator_example(1), onnx_atol=1e-3)
            for slug, _, _ in TRANSITIONS:
                name = progression_model_name(slug)
                self.versions[name] = registry.register_artifact(gen_dir, name, run_id, alias=CHAMPION_ALIAS,
                                                                 tags={"bench": "untrained"})
            registry.client().set_terminated(run_id)
        return dict(self.versions)

    # ------------------------------------------------------------------ services
    def start_classifier(self, name: str = "classifier", extra_env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        env = self.service_env({"CLASSIFIER_PORT": str(port), "CLASSIFIER_LOG_LEVEL": "WARNING",
                                "CLASSIFIER_POLL_SECONDS": "600", **(extra_env or {})})
        return self.start(name, [sys.executable, "-m", "services.classifier"], env=env, port=port, health="/readyz")

    def start_generator(self, name: str = "generator", extra_env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        env = self.service_env({"GENERATOR_PORT": str(port), "GENERATOR_LOG_LEVEL": "WARNING",
                                "GENERATOR_POLL_SECONDS": "600", **(extra_env or {})})
        return self.start(name, [sys.executable, "-m", "services.generator"], env=env, port=port, health="/readyz",
                          timeout=240)

    def start_gateway(self, redis_url: str, cache_prefix: str, name: str = "gateway",
                      extra_env: dict[str, str] | None = None, generator: str = "generator") -> Proc:
        port = free_port()
        env = self.service_env({
            "GATEWAY_PORT": str(port),
            "GATEWAY_CLASSIFIER_URL": self.procs["classifier"].url,
            "GATEWAY_GENERATOR_URL": self.procs[generator].url,
            "GATEWAY_REDIS_URL": redis_url,
            "REDIS_URL": redis_url,
            "GATEWAY_CACHE_PREFIX": cache_prefix,
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000",
            "GATEWAY_RATE_LIMIT_BURST": "100000",
            **(extra_env or {}),
        })
        return self.start(name, [sys.executable, "-m", "services.gateway"], env=env, port=port, health="/livez")
