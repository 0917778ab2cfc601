"""``make loadtest``: closed-loop HTTP load against the local stack, then an overload run.

Phases (each ``--duration`` seconds, N clients each sending its next request as soon as the
previous one is answered):

1. ``uncached``: ``--clients`` clients upload distinct slices to ``POST /predict`` (one pixel
   patch changed per request, so every request misses the Redis cache and really reaches the
   classifier);
2. ``cached``: the same clients upload the same few slices again and again (Redis hits);
3. ``overload``: ``--overload-factor`` x the classifier's admission capacity (its workers plus
   its queue: what it accepts at once before refusing) clients upload distinct slices.

Uploads of the uncached phases are encoded before the phase starts (``--prepared``), so the
timed loop does no image work; after a refusal a client waits as ``Retry-After`` says, capped
at ``--backoff`` seconds (``--backoff 0`` hammers).

For each phase it reports requests, 200s, deliberate refusals (503/429 with ``Retry-After``),
failures (anything else: other statuses, timeouts, connection errors, a 503/429 without
``Retry-After``), throughput, and p50/p95/p99 latency of the 200s and of the refusals. The run
fails (exit 1) if any phase had a failure. Results go to ``DATA/loadtest/latest.json`` and a
timestamped copy.

The stack: whatever answers at ``--url`` (``make run``); when nothing does, the script starts
one with ``scripts/run_stack.py`` (the same code as ``make run``) and stops it afterwards.
Against a running ``make run`` stack the distinct uploads leave result-cache entries in its
Redis (they expire with the cache TTL, 1 h by default); a stack the script starts itself gets
its own key prefix, deleted afterwards. ``--untrained`` (only with ``--home`` pointing at a data home without champions) registers
untrained models with the ``quick`` presets' architectures instead of training them: each
request costs the same compute, the run starts in seconds, and the figures are about time, not
about what the models say.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "oasis-samples" / "Data"


# ----------------------------------------------------------------------------- payloads
class Payloads:
    """Real OASIS slices when present (else synthetic heads), as PNG uploads."""

    def __init__(self, limit: int = 8) -> None:
        from PIL import Image

        self.images: list[np.ndarray] = []
        for path in sorted(SAMPLES.rglob("*.jpg"))[:limit] if SAMPLES.is_dir() else []:
            with Image.open(path) as im:
                self.images.append(np.asarray(im.convert("L")))
        if not self.images:
            yy, xx = np.mgrid[:208, :176]
            for seed in range(limit):
                rng = np.random.default_rng(seed)
                head = ((yy - 104) / 90.0) ** 2 + ((xx - 88) / 75.0) ** 2 < 1
                img = np.zeros((208, 176), np.uint8)
                img[head] = rng.integers(60, 200, int(head.sum()), dtype=np.uint8)
                self.images.append(img)
        self._repeated = [self._png(im) for im in self.images]
        self._counter = 0
        self._pool: list[bytes] = []

    def prepare_unique(self, n: int) -> None:
        """Encode ``n`` never-uploaded slices before a phase, so the timed loop does no image work
        (one Python client encoding PNGs on the stack's own cores skewed the overload figures)."""
        self._pool = [self._make_unique() for _ in range(n)]

    @staticmethod
    def _png(arr: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def repeated(self, i: int) -> bytes:
        return self._repeated[i % len(self._repeated)]

    def unique(self) -> bytes:
        """A slice never uploaded before: from the prepared pool, else encoded now."""
        return self._pool.pop() if self._pool else self._make_unique()

    def _make_unique(self) -> bytes:
        """A 6x6 patch near the centre encodes a counter."""
        self._counter += 1
        n = self._counter
        img = self.images[n % len(self.images)].copy()
        h, w = img.shape
        y, x = h // 2 - 3, w // 2 - 3
        img[y : y + 3, x : x + 6] = (n * 37) % 256
        img[y + 3 : y + 6, x : x + 6] = (n // 256 * 53 + 17) % 256
        return self._png(img)


# ----------------------------------------------------------------------------- one phase
@dataclass
class PhaseResult:
    name: str
    clients: int
    duration_s: float
    ok_latencies: list[float] = field(default_factory=list)
    refused_latencies: list[float] = field(default_factory=list)
    cached: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    refusal_codes: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1

    def summary(self) -> dict:
        def pct(xs: list[float]) -> dict[str, float | None]:
            if not xs:
                return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
            a = np.asarray(xs) * 1000
            return {
                "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p95_ms": round(float(np.percentile(a, 95)), 1),
                "p99_ms": round(float(np.percentile(a, 99)), 1),
                "max_ms": round(float(a.max()), 1),
            }

        n_fail = sum(self.failures.values())
        total = len(self.ok_latencies) + len(self.refused_latencies) + n_fail
        return {
            "phase": self.name,
            "clients": self.clients,
            "duration_s": round(self.elapsed_s, 2),
            "requests": total,
            "ok": len(self.ok_latencies),
            "ok_cached": self.cached,
            "refused": len(self.refused_latencies),
            "refusal_codes": self.refusal_codes,
            "failures": n_fail,
            "failure_kinds": self.failures,
            "throughput_ok_per_s": round(len(self.ok_latencies) / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "requests_per_s": round(total / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "latency_ok": pct(self.ok_latencies),
            "latency_refused": pct(self.refused_latencies),
        }


async def run_phase(name: str, url: str, clients: int, duration: float, payloads: Payloads, *, unique: bool,
                    endpoint: str, timeout: float, backoff: float = 0.0) -> PhaseResult:
    import httpx

    res = PhaseResult(name, clients, duration)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        t_start = time.monotonic()
        deadline = t_start + duration
        form = {"from_stage": "nd"} if endpoint == "progression" else None

        async def one_client(cid: int) -> None:
            i = cid
            await asyncio.sleep(random.uniform(0, 0.2))  # do not start in lock-step
            while time.monotonic() < deadline:
                body = payloads.unique() if unique else payloads.repeated(i)
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/{endpoint}", files={"file": ("slice.png", body, "image/png")}, data=form)
                except httpx.TimeoutException:
                    res.fail("timeout")
                    continue
                except httpx.HTTPError as exc:
                    res.fail(type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    res.ok_latencies.append(dt)
                    try:
                        res.cached += bool(r.json().get("cached"))
                    except ValueError:
                        res.fail("200 with a non-JSON body")
                elif r.status_code in (429, 503) and r.headers.get("retry-after"):
                    res.refused_latencies.append(dt)
                    if backoff:  # a well-behaved client waits as told (capped), with jitter
                        await asyncio.sleep(min(float(r.headers["retry-after"]), backoff) * random.uniform(0.5, 1.0))
                    try:
                        code = f"{r.status_code} {r.json()['error']['code']}"
                    except (ValueError, KeyError, TypeError):
                        code = f"{r.status_code} (no JSON error)"
                    res.refusal_codes[code] = res.refusal_codes.get(code, 0) + 1
                else:
                    res.fail(f"HTTP {r.status_code}")

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        res.elapsed_s = time.monotonic() - t_start
    return res


# ----------------------------------------------------------------------------- the stack
def http_status(url: str, timeout: float = 3.0) -> int | None:
    import httpx

    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def register_untrained_quick(home: Path) -> dict[str, str | None]:
    """Champions with the ``quick`` presets' architectures and untrained weights, in ``home``'s
    own sqlite registry (the one ``make run``'s MLflow server then serves)."""
    import torch

    os.environ["ALZPROG_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the data home's sqlite store
    from alzprog import registry
    from alzprog.artifacts import save_artifact
    from benchmarks.forward import generator_example
    from alzprog.bootstrap import champion_versions
    from alzprog.constants import CHAMPION_ALIAS, CLASSIFIER_MODEL_NAME, TRANSITIONS, progression_model_name
    from alzprog.models import build_model
    from alzprog.training.classifier import model_config_from
    from alzprog.training.config import load_config
    from alzprog.training.progression import _model_config as generator_model_config

    have = champion_versions()
    if all(have.values()):
        return have
    if any(have.values()):
        sys.exit(f"error: {home} already has some champions ({have}); --untrained only fills an empty registry")
    exp = registry.ensure_experiment("alzprog-loadtest")
    work = home / "loadtest-untrained"
    torch.manual_seed(0)
    cfg = model_config_from(load_config("classifier", "quick"))
    cfg["pretrained"] = "none"
    model = build_model(cfg).eval()
    size = int(cfg["image_size"])
    save_artifact(work / "classifier", model, cfg, torch.randn(1, 3, size, size))
    run = registry.client().create_run(exp, run_name="untrained-quick-classifier").info.run_id
    registry.register_artifact(work / "classifier", CLASSIFIER_MODEL_NAME, run, alias=CHAMPION_ALIAS, tags={"loadtest": "untrained"})
    pcfg = load_config("progression", "quick")
    for slug, _, _ in TRANSITIONS:
        gcfg = generator_model_config(pcfg, slug)
        gen = build_model(gcfg).eval()
        save_artifact(work / slug, gen, gcfg, generator_example(1), onnx_atol=1e-3)
        run = registry.client().create_run(exp, run_name=f"untrained-quick-{slug}").info.run_id
        registry.register_artifact(work / slug, progression_model_name(slug), run, alias=CHAMPION_ALIAS, tags={"loadtest": "untrained"})
    return champion_versions()


def start_stack(url: str, home: Path | None, log_path: Path, timeout: float, cache_prefix: str) -> subprocess.Popen:
    """``scripts/run_stack.py`` (what ``make run`` runs) in its own process group."""
    env = dict(os.environ)
    if home is not None:
        env["ALZPROG_HOME"] = str(home)
    env["GATEWAY_PORT"] = str(urlparse(url).port or 8000)
    env["GATEWAY_CACHE_PREFIX"] = cache_prefix  # this run's keys only, deleted afterwards
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[loadtest] nothing answers at {url}: starting the stack (scripts/run_stack.py, log {log_path})", flush=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "run_stack.py")], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from alzprog.readiness import wait_ready

    t0 = time.monotonic()
    try:
        wait_ready(f"{url}/readyz", timeout=timeout, proc=proc, name="the stack", accept=lambda r: r.status_code == 200,
                   interval=1.0)
    except RuntimeError:
        sys.exit(f"error: the stack exited with {proc.returncode}; see {log_path}")
    except TimeoutError:
        stop_stack(proc)
        sys.exit(f"error: the stack was not ready within {timeout:.0f} s; see {log_path}")
    print(f"[loadtest] stack ready in {time.monotonic() - t0:.0f} s", flush=True)
    return proc


def stop_stack(proc: subprocess.Popen) -> None:
    """SIGTERM to run_stack.py: it stops its children in order; SIGKILL its group if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def drop_cache_keys(prefix: str) -> int:
    """Delete this run's result-cache keys (only when the script started the stack itself)."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        r = redis.Redis.from_url(url, socket_timeout=2)
        keys = list(r.scan_iter(f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        return len(keys)
    except Exception:  # noqa: BLE001 - best effort: the keys expire with their TTL anyway
        return 0


# ----------------------------------------------------------------------------- report
def print_table(rows: list[dict]) -> None:
    head = f"{'phase':<10}{'clients':>8}{'requests':>10}{'200':>7}{'cached':>8}{'503/429':>9}{'failed':>8}{'ok/s':>8}" \
           f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'refusal p50/p99 ms':>22}"
    print(head)
    print("-" * len(head))
    for r in rows:
        lo, lr = r["latency_ok"], r["latency_refused"]
        ref = f"{lr['p50_ms']}/{lr['p99_ms']}" if r["refused"] else "-"
        print(f"{r['phase']:<10}{r['clients']:>8}{r['requests']:>10}{r['ok']:>7}{r['ok_cached']:>8}{r['refused']:>9}"
              f"{r['failures']:>8}{r['throughput_ok_per_s']:>8}{str(lo['p50_ms']):>9}{str(lo['p95_ms']):>9}"
              f"{str(lo['p99_ms']):>9}{ref:>22}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("GATEWAY_URL", f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"))
    env = os.environ.get  # `LOADTEST_DURATION=20 make loadtest` etc.: make passes no arguments
    p.add_argument("--clients", type=int, default=int(env("LOADTEST_CLIENTS", "4")), help="clients of the uncached and cached phases")
    p.add_argument("--duration", type=float, default=float(env("LOADTEST_DURATION", "30")), help="seconds per phase")
    p.add_argument("--overload-factor", type=float, default=4.0, help="overload clients = factor x admission capacity")
    p.add_argument("--overload-clients", type=int, default=0, help="override the computed overload client count")
    p.add_argument("--phases", default="uncached,cached,overload")
    p.add_argument("--endpoint", choices=["predict", "progression"], default="predict")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (a timeout is a failure)")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="after a 503/429 a client sleeps Retry-After capped at this many seconds (0 = retry at once)")
    p.add_argument("--prepared", type=int, default=3000, help="unique uploads encoded before each uncached phase")
    p.add_argument("--home", type=Path, default=Path(env("LOADTEST_HOME")) if env("LOADTEST_HOME") else None,
                   help="data home of a stack this script starts (default: make run's; env LOADTEST_HOME)")
    p.add_argument("--untrained", action="store_true", default=env("LOADTEST_UNTRAINED", "") == "1",
                   help="with --home: register untrained quick-architecture champions instead of training (env LOADTEST_UNTRAINED=1)")
    p.add_argument("--start-timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, default=None, help="result folder (default DATA/loadtest)")
    args = p.parse_args()
    url = args.url.rstrip("/")

    started = None
    cache_prefix = os.environ.get("GATEWAY_CACHE_PREFIX") or f"alzprog-loadtest-{uuid.uuid4().hex[:8]}"
    if http_status(f"{url}/readyz") != 200:
        if args.untrained:
            if args.home is None:
                sys.exit("error: --untrained needs --home (it never touches make run's registry)")
            print(f"[loadtest] registering untrained quick-architecture champions in {args.home}", flush=True)
            print(f"[loadtest] champions: {register_untrained_quick(args.home.resolve())}", flush=True)
        home = args.home.resolve() if args.home else None
        log_home = home or Path(os.environ.get("ALZPROG_HOME", REPO / "data"))
        started = start_stack(url, home, log_home / "loadtest" / "stack.log", args.start_timeout, cache_prefix)

    from alzprog.paths import data_home
    from services.classifier.settings import Settings as ClassifierSettings
    from alzprog.inference.runtime import available_cpus
    from services.gateway.settings import Settings as GatewaySettings

    # Admission capacity from the settings the services read (the same environment).
    cs, gs = ClassifierSettings(), GatewaySettings()
    cpus = available_cpus()
    capacity = (cs.max_concurrency or cpus) + cs.max_queue
    overload = args.overload_clients or max(1, int(round(args.overload_factor * capacity)))
    out_dir = args.out or (args.home.resolve() if args.home else data_home()) / "loadtest"
    out_dir.mkdir(parents=True, exist_ok=True)

    payloads = Payloads()
    load_before = os.getloadavg()
    print(f"[loadtest] {url}/{args.endpoint}: {args.duration:.0f} s per phase; admission capacity {capacity} "
          f"(classifier {cs.max_concurrency or cpus}+{cs.max_queue}, gateway in flight {gs.in_flight_caps(cpus)[0]}, "
          f"decode {gs.decode_concurrency or cpus}+{gs.decode_queue}); "
          f"overload {overload} clients; load average {load_before[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows = []
    try:
        # Warm-up: the first requests pay lazy imports and model warm-up; not measured.
        asyncio.run(run_phase("warm-up", url, 2, 5.0, payloads, unique=True, endpoint=args.endpoint, timeout=args.timeout))
        plan = {
            "uncached": (args.clients, True),
            "cached": (args.clients, False),
            "overload": (overload, True),
        }
        for name in [s.strip() for s in args.phases.split(",") if s.strip()]:
            clients, unique = plan[name]
            print(f"[loadtest] phase {name}: {clients} clients for {args.duration:.0f} s ...", flush=True)
            if unique:
                payloads.prepare_unique(args.prepared)
            res = asyncio.run(run_phase(name, url, clients, args.duration, payloads, unique=unique, endpoint=args.endpoint,
                                        timeout=args.timeout, backoff=args.backoff))
            rows.append(res.summary())
    finally:
        if started is not None:
            print("[loadtest] stopping the stack it started", flush=True)
            stop_stack(started)
            print(f"[loadtest] removed {drop_cache_keys(cache_prefix)} result-cache keys of this run", flush=True)
    load_after = os.getloadavg()
    print()
    print_table(rows)
    report = {
        "url": url,
        "endpoint": args.endpoint,
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "available_cpus": cpus,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "admission_capacity": capacity,
        "started_stack": started is not None,
        "untrained_models": bool(args.untrained),
        "phases": rows,
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in ("latest.json", f"loadtest-{stamp}.json"):
        (out_dir / name).write_text(json.dumps(report, indent=2))
    failures = sum(r["failures"] for r in rows)
    print(f"\n[loadtest] load average {load_before[0]:.1f} -> {load_after[0]:.1f}; results in {out_dir / 'latest.json'}")
    if failures:
        print(f"[loadtest] FAILED: {failures} requests failed other than deliberate 503/429 refusals", flush=True)
        return 1
    print("[loadtest] OK: no failures other than deliberate 503/429 refusals", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
