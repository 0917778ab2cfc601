"""``make run``: the whole stack on this machine, in the foreground; ``make stop`` (``--stop``) ends it.

Steps, each timed and printed:

1. MLflow tracking server + registry (sqlite store and artifact folder under ``DATA/mlflow``;
   port ``MLFLOW_PORT``, 5000). An MLflow already answering there is used, not restarted.
2. Redis at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). When none answers and
   ``redis-server`` is installed, a local one is started (no persistence). Without any, the
   gateway runs uncached and ``/readyz`` says so.
3. ``alzprog bootstrap`` when the registry lacks a champion (phantom + quick models, a few
   minutes on a CPU; skipped once champions exist).
4. classifier, generator, gateway and frontend, each ``python -m services.<name>`` (the
   frontend ``services/frontend/server.py``), started together and awaited until ready.

Logs go to ``DATA/run/logs/<name>.log``; ``DATA/run/stack.json`` records the processes so
``--stop`` can end them from another shell. Ctrl-C, SIGTERM or ``--stop`` stop everything this
script started, in reverse order (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
PY = Path(sys.executable)
BIN = PY.parent
GRACE_S = 20.0


def data_home() -> Path:
    return Path(os.environ.get("ALZPROG_HOME", REPO / "data")).resolve()


def run_dir() -> Path:
    return data_home() / "run"


def pid_file() -> Path:
    return run_dir() / "stack.json"


def port_env(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        sys.exit(f"error: {name}={raw!r} is not a port number")
    return int(raw)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    ready_url: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Stack:
    children: list[Child] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], ready_url: str | None = None) -> Child:
        logs = run_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(name, proc, log_path, ready_url)
        self.children.append(child)
        self.save()
        return child

    def save(self) -> None:
        run_dir().mkdir(parents=True, exist_ok=True)
        record = {
            "runner_pid": os.getpid(),
            "started": time.time(),
            "children": [{"name": c.name, "pid": c.proc.pid, "argv": c.proc.args} for c in self.children],
        }
        tmp = pid_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, pid_file())

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.alive():
                print(f"  stopping {child.name} (pid {child.proc.pid})", flush=True)
                _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                print(f"  {child.name} did not stop in {GRACE_S:.0f} s; killing it", flush=True)
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=5)
        try:
            record = json.loads(pid_file().read_text())
            if record.get("runner_pid") == os.getpid():
                pid_file().unlink()
        except (OSError, ValueError):
            pass

    def timed(self, label: str, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.timings.append((label, seconds))
        print(f"[run] {label}: {seconds:.1f} s", flush=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each child leads its own session/process group
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_ready(stack: Stack, children: list[Child], timeout: float) -> None:
    """Wait until every child's ready URL answers 200; fail with its log when one dies."""
    from alzprog.readiness import wait_ready as poll

    deadline = time.monotonic() + timeout
    for child in (c for c in children if c.ready_url):
        if not child.alive():  # one that died while another was awaited
            raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}; last log lines:\n{tail(child.log)}")
        poll(child.ready_url, timeout=max(0.0, deadline - time.monotonic()), proc=child.proc, log_path=child.log,
             name=child.name, accept=lambda r: r.status_code == 200, interval=0.5,
             on_wait=lambda _s, n=child.name: print(f"[run]   waiting for {n} ...", flush=True))
        print(f"[run]   {child.name} ready", flush=True)


def run() -> int:
    home = data_home()
    mlflow_port = port_env("MLFLOW_PORT", 5000)
    ports = {
        "classifier": port_env("CLASSIFIER_PORT", 8001),
        "generator": port_env("GENERATOR_PORT", 8002),
        "gateway": port_env("GATEWAY_PORT", 8000),
        "frontend": port_env("FRONTEND_PORT", 8080),
    }
    if pid_file().exists():
        try:
            record = json.loads(pid_file().read_text())
            os.kill(int(record["runner_pid"]), 0)
            sys.exit(f"error: a stack is already running (pid {record['runner_pid']}); `make stop` first")
        except (OSError, ValueError, KeyError):
            pid_file().unlink(missing_ok=True)  # stale record of a stack that is gone
    busy = [f"{name} port {p}" for name, p in ports.items() if port_in_use(p)]
    if busy:
        sys.exit(f"error: {', '.join(busy)} already in use; stop what uses it or set e.g. GATEWAY_PORT=9000")

    stack = Stack()
    interrupted = {"sig": None}

    def on_signal(signum: int, _frame: object) -> None:
        interrupted["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_all = time.perf_counter()
    base_env = {**os.environ, "ALZPROG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    base_env["PYTHONPATH"] = str(REPO) + (os.pathsep + base_env["PYTHONPATH"] if base_env.get("PYTHONPATH") else "")
    try:
        print(f"[run] data folder {home}; logs in {run_dir() / 'logs'}", flush=True)

        # 1. MLflow
        t0 = time.perf_counter()
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        if http_ok(f"{mlflow_url}/health"):
            print(f"[run] MLflow already answering at {mlflow_url}; using it", flush=True)
        else:
            if port_in_use(mlflow_port):
                sys.exit(f"error: port {mlflow_port} is in use by something that is not MLflow; set MLFLOW_PORT")
            store = home / "mlflow"
            store.mkdir(parents=True, exist_ok=True)
            mlflow = stack.start(
                "mlflow",
                [
                    str(BIN / "mlflow"), "server",
                    "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                    "--artifacts-destination", str(store / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                ],
                # No job-execution workers: MLflow otherwise forks huey consumers that the
                # registry never uses and that poll beside the bootstrap's training.
                {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                ready_url=f"{mlflow_url}/health",
            )
            wait_ready(stack, [mlflow], timeout=180)
        stack.timed(f"MLflow at {mlflow_url}", t0)
        base_env["MLFLOW_TRACKING_URI"] = mlflow_url

        # 2. Redis
        t0 = time.perf_counter()
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        cache_note = redis_url
        if not redis_answers(redis_url):
            parsed = urlparse(redis_url)
            local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
            server = shutil.which("redis-server")
            if local and server:
                port = parsed.port or 6379
                stack.start("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], base_env)
                deadline = time.monotonic() + 20
                while not redis_answers(redis_url) and time.monotonic() < deadline:
                    time.sleep(0.2)
            if not redis_answers(redis_url):
                print(f"[run] no Redis at {redis_url} and none could be started: results will not be cached", flush=True)
                redis_url, cache_note = "", "none (uncached)"
        stack.timed(f"Redis: {cache_note}", t0)

        # 3. Champions
        t0 = time.perf_counter()
        check = subprocess.run([str(BIN / "alzprog"), "bootstrap", "--check"], env=base_env, cwd=REPO, capture_output=True, text=True)
        if check.returncode != 0:
            print("[run] the registry lacks champions: running `alzprog bootstrap` (quick demo models, a few minutes)", flush=True)
            # The held-out evaluation (the model card's figures) runs once the services answer.
            boot = subprocess.run([str(BIN / "alzprog"), "bootstrap", "--no-evaluate"], env=base_env, cwd=REPO)
            if boot.returncode != 0:
                raise RuntimeError(f"alzprog bootstrap failed with code {boot.returncode}")
            stack.timed("bootstrap (train + register + promote)", t0)
        else:
            print("[run] champions present: " + " ".join(check.stdout.split("\n")).strip(), flush=True)
            stack.timed("champions present, no bootstrap needed", t0)

        # 4. Services
        t0 = time.perf_counter()
        env = dict(base_env)
        env.update(
            CLASSIFIER_PORT=str(ports["classifier"]),
            GENERATOR_PORT=str(ports["generator"]),
            GATEWAY_PORT=str(ports["gateway"]),
            FRONTEND_PORT=str(ports["frontend"]),
            GATEWAY_CLASSIFIER_URL=f"http://127.0.0.1:{ports['classifier']}",
            GATEWAY_GENERATOR_URL=f"http://127.0.0.1:{ports['generator']}",
            GATEWAY_URL=f"http://127.0.0.1:{ports['gateway']}",
            REDIS_URL=redis_url,
        )
        services = [
            stack.start("classifier", [str(PY), "-m", "services.classifier"], env, f"http://127.0.0.1:{ports['classifier']}/readyz"),
            stack.start("generator", [str(PY), "-m", "services.generator"], env, f"http://127.0.0.1:{ports['generator']}/readyz"),
            stack.start("gateway", [str(PY), "-m", "services.gateway"], env, f"http://127.0.0.1:{ports['gateway']}/readyz"),
            stack.start("frontend", [str(PY), "services/frontend/server.py"], env, f"http://127.0.0.1:{ports['frontend']}/livez"),
        ]
        wait_ready(stack, services, timeout=300)
        stack.timed("services ready (classifier, generator, gateway, frontend)", t0)
        if (data_home() / "bootstrap" / "pending_card_figures.json").is_file():
            card = stack.start("card-figures", [str(BIN / "alzprog"), "bootstrap", "--card-figures"], base_env)
            print(f"[run] the model card's held-out figures are being computed in the background (log: {card.log})", flush=True)

        total = time.perf_counter() - t_all
        print("\n[run] time per step:", flush=True)
        for label, seconds in stack.timings:
            print(f"  {seconds:7.1f} s  {label}", flush=True)
        print(f"  {total:7.1f} s  total", flush=True)
        print(
            f"\n  Open http://127.0.0.1:{ports['frontend']}/   (API: http://127.0.0.1:{ports['gateway']}/docs)\n"
            "  Ctrl-C here or `make stop` in another shell stops everything.\n",
            flush=True,
        )
        # 5. Foreground: watch the children until interrupted.
        reported: set[str] = set()
        while True:
            for child in stack.children:
                if not child.alive() and child.name not in reported:
                    reported.add(child.name)
                    if child.name == "card-figures" and child.proc.returncode == 0:
                        print("[run] the model card's held-out figures are recorded (see /v1/model-card)", flush=True)
                        continue
                    print(f"[run] warning: {child.name} exited with code {child.proc.returncode}; last log lines:\n{tail(child.log)}", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the orderly shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\n[run] stopping ...", flush=True)
        stack.stop_all()
        print("[run] stopped", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"[run] error: {exc}", flush=True)
        stack.stop_all()
        return 1
    except BaseException:
        stack.stop_all()
        raise


def stop() -> int:
    """``make stop``: end the stack recorded in the pid file, from another shell."""
    if not pid_file().exists():
        print("no running stack recorded (nothing to stop)")
        return 0
    record = json.loads(pid_file().read_text())
    runner = int(record.get("runner_pid", 0))
    try:
        os.kill(runner, signal.SIGTERM)  # the runner stops its children in order
        print(f"asked the stack (pid {runner}) to stop ...")
        deadline = time.monotonic() + GRACE_S + 10
        while time.monotonic() < deadline:
            os.kill(runner, 0)
            time.sleep(0.3)
        print("the runner did not exit in time; stopping its children directly")
    except ProcessLookupError:
        pass
    # Runner gone (or stuck): end any recorded child still running with the recorded command.
    for child in reversed(record.get("children", [])):
        pid = int(child["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if [a.decode(errors="replace") for a in cmdline if a][:2] != [str(a) for a in child["argv"]][:2]:
            continue  # the pid was reused by an unrelated process
        print(f"  stopping {child['name']} (pid {pid})")
        _signal_group(pid, signal.SIGTERM)
    pid_file().unlink(missing_ok=True)
    print("stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop", action="store_true", help="stop the stack started by `make run` (from another shell)")
    args = parser.parse_args()
    return stop() if args.stop else run()


if __name__ == "__main__":
    sys.exit(main())
