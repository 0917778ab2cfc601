"""Session fixtures shared by the whole suite: real MLflow server, real Redis, phantom data.

Heavy fixtures are session-scoped so the suite starts MLflow once and synthesises the tiny
phantom once. Module-specific fixtures live next to their tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterable

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real samples live beside the checkout (../shared/oasis-samples); ALZPROG_OASIS_SAMPLES
# points elsewhere (e.g. a clone made outside the workspace).
OASIS_SAMPLES = Path(os.environ.get("ALZPROG_OASIS_SAMPLES", REPO.parent / "shared" / "oasis-samples")).resolve()
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers below 500 (the one readiness poll, ``alzprog.readiness``)."""
    from alzprog.readiness import wait_ready

    wait_ready(url, timeout=timeout, proc=proc, accept=lambda r: r.status_code < 500, interval=0.5)


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group ``proc`` leads and wait; SIGKILL it when that fails or takes longer."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001
        os.killpg(proc.pid, signal.SIGKILL)


def copy_cross_sectional(paths: Iterable[str], root: Path) -> list[str]:
    """Copy each image to ``root/Data/<stage folder>/<name>``: a data folder without the
    longitudinal table, so nothing pairs the copies. Returns the new paths, in order."""
    import shutil

    copies = []
    for p in paths:
        dst = root / "Data" / Path(p).parent.name / Path(p).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
        copies.append(str(dst))
    return copies


@pytest.fixture(scope="session")
def oasis_samples() -> Path:
    """The 20 real OASIS-1 slices (``.../oasis-samples/Data``); skips when absent."""
    data = OASIS_SAMPLES / "Data"
    if not data.is_dir():
        pytest.skip(f"real OASIS samples not found at {data} (they live beside the checkout in shared/)")
    return data


@pytest.fixture(scope="session")
def oasis_sample_files(oasis_samples: Path) -> list[Path]:
    return sorted(oasis_samples.rglob("*.jpg"))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session", autouse=True)
def isolated_data_home(tmp_path_factory):
    """Every test session gets its own ALZPROG_HOME so nothing touches the user's data."""
    home = tmp_path_factory.mktemp("alzprog_home")
    old = os.environ.get("ALZPROG_HOME")
    os.environ["ALZPROG_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ALZPROG_HOME", None)
    else:
        os.environ["ALZPROG_HOME"] = old


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server + registry (sqlite store, local artifact folder).

    Started once per session; MLFLOW_TRACKING_URI points at it for the whole session.
    """
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No job-execution workers (huey consumers the registry never uses, polling beside the tests).
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=120, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError((root / "server.log").read_text()[-3000:])
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    stop_process_group(proc, timeout=15)
    log.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis on 127.0.0.1:6379, DB 11 (ours); tests use a unique key prefix, never FLUSHALL."""
    import redis

    url = os.environ.get("ALZPROG_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    return url


@pytest.fixture
def key_prefix() -> str:
    return f"alzprog-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def tiny_phantom(session_dir: Path) -> Path:
    """A tiny balanced phantom (12 subjects, 4 slices each), synthesised once per session."""
    from alzprog.data.phantom import synthesize

    out = session_dir / "phantom"
    synthesize(out, n_subjects=12, seed=7, mix="balanced", slices_per_subject=4)
    return out


@pytest.fixture(scope="session")
def tiny_split(tiny_phantom: Path, session_dir: Path) -> Path:
    """Manifest + subject-level split of the tiny phantom."""
    from alzprog.data.manifest import build_manifest
    from alzprog.data.split import split_manifest

    manifest = session_dir / "manifest.csv"
    build_manifest(tiny_phantom, manifest)
    out = session_dir / "split"
    split_manifest(manifest, out, seed=1, test_fraction=0.25, val_fraction=0.25)
    return out


# ---- The whole stack (moved here from tests/test_stack_integration.py so the browser test shares it).


@pytest.fixture(scope="session")
def registered_models(mlflow_server, tiny_split, session_dir) -> dict[str, str]:
    """Train the tiny quick models through the library and make them the champions."""
    from alzprog.bootstrap import PENDING_CARD_FILE, bootstrap, evaluate_pending

    # force: other test modules may have registered champions of their own in this server.
    # As `make run` does: train and promote first, the held-out evaluation (card figures) after.
    work = session_dir / "stack-bootstrap"
    report = bootstrap("tiny", split_dir=tiny_split, work_dir=work, force=True, echo=False, evaluate=False)
    assert all(report.champions.values()), report.champions
    assert (work / PENDING_CARD_FILE).is_file()
    assert evaluate_pending(work, echo=False)
    assert not (work / PENDING_CARD_FILE).is_file() and not evaluate_pending(work, echo=False)
    return report.champions


@pytest.fixture(scope="session")
def stack(registered_models, mlflow_server, redis_url, tmp_path_factory):
    """The four services as processes on free ports, over the real MLflow and Redis.

    Session scope: tests/test_stack_integration.py and tests/test_browser.py share one stack.
    """
    import redis
    from service_helpers import start_service, wait_ready

    home = tmp_path_factory.mktemp("stack_home")  # the services' own model cache
    logs = tmp_path_factory.mktemp("stack_logs")
    prefix = f"alzprog-stack-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("classifier", "generator", "gateway", "frontend")}
    env = {
        "ALZPROG_HOME": str(home),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CLASSIFIER_POLL_SECONDS": "1",
        "GENERATOR_POLL_SECONDS": "1",
        "CLASSIFIER_MAX_CONCURRENCY": "1",
        "GENERATOR_MAX_CONCURRENCY": "1",
        "GATEWAY_CLASSIFIER_URL": f"http://127.0.0.1:{ports['classifier']}",
        "GATEWAY_GENERATOR_URL": f"http://127.0.0.1:{ports['generator']}",
        "GATEWAY_VERSIONS_TTL_S": "0.5",
        "GATEWAY_BREAKER_RESET_S": "2",
        "REDIS_URL": redis_url,
        "GATEWAY_CACHE_PREFIX": prefix,
        "GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
    }
    procs = {name: start_service(name, ports[name], env, logs) for name in ("classifier", "generator", "gateway")}
    # The frontend belongs to services/frontend (plain script, its own settings).
    procs["frontend"] = start_service("frontend", ports["frontend"], env, logs, module="services.frontend.server")
    info = {"procs": procs, "env": env, "logs": logs, "prefix": prefix, "ports": ports, "redis": redis.Redis.from_url(redis_url)}
    try:
        wait_ready(procs["classifier"])
        wait_ready(procs["generator"])
        wait_ready(procs["gateway"])
        wait_ready(procs["frontend"], path="/livez")
        yield info
    finally:
        for p in procs.values():
            p.stop()
        for k in info["redis"].scan_iter(f"{prefix}:*"):
            info["redis"].delete(k)


def pytest_collection_modifyitems(session, config, items):
    """Tests on the shared `stack` run last, together: the stack then starts after every other
    module is done (no champion registered by another module can swap its models, and its
    processes do not compete for the 2 CPUs with the rest of the suite)."""
    on_stack = [item for item in items if "stack" in getattr(item, "fixturenames", ())]
    if on_stack:
        rest = [item for item in items if "stack" not in getattr(item, "fixturenames", ())]
        items[:] = rest + on_stack
