"""Failing and overloaded backends, caused for real.

One classifier process (a tiny real artifact from its model cache, MLflow unreachable) sits
behind :class:`faults.FaultProxy`, which delays, black-holes or drops its connections. The
gateway runs in-process (TestClient, its own settings per test) or, for SIGTERM, as a real
``python -m services.gateway`` process. Redis is off here (``redis_url=""``) so every request
really reaches the backend; the cache's own failure modes are tested in
tests/test_service_gateway.py.

Measured latencies are printed as ``MEASURED ...`` lines (run with ``-s`` to see them);
docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from faults import FaultProxy
from fixtures_images import head_phantom, png_bytes
from service_helpers import (
    classify_count,
    dead_port,
    gateway_clients,
    metric_value,
    running_service,
    seed_cache,
    start_service,
    tiny_classifier_artifact,
    wait_ready,
)

from alzprog.constants import CLASSIFIER_MODEL_NAME

pytestmark = pytest.mark.slow

CLASSIFIER_QUEUE = 2  # the classifier runs 1 request and lets 2 wait; more are refused


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A real classifier process: concurrency 1, queue 2, serving a cached tiny model."""
    home = tmp_path_factory.mktemp("relf_home")
    dead_registry = f"http://127.0.0.1:{dead_port()}"
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, tiny_classifier_artifact(tmp_path_factory.mktemp("relf_art") / "clf", seed=21), dead_registry)
    env = {
        "ALZPROG_HOME": str(home),
        "MLFLOW_TRACKING_URI": dead_registry,
        "CLASSIFIER_RETRY_SECONDS": "0.5",
        "CLASSIFIER_MAX_CONCURRENCY": "1",
        "CLASSIFIER_MAX_QUEUE": str(CLASSIFIER_QUEUE),
    }
    with running_service("classifier", env, tmp_path_factory.mktemp("relf_logs")) as svc:
        yield svc


@pytest.fixture
def proxy(classifier):
    """A fresh fault proxy in front of the classifier (pass-through until a test says otherwise)."""
    port = int(classifier.url.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as p:
        yield p


@pytest.fixture
def gateway(proxy):
    """Factory: an in-process gateway whose classifier is behind the proxy; no cache."""
    with gateway_clients(
        classifier_url=proxy.url,
        generator_url=f"http://127.0.0.1:{dead_port()}",
        redis_url="",
        versions_ttl_s=0.2,
        info_deadline_s=0.5,
    ) as make:
        yield make


_images: dict[int, bytes] = {}


def upload(seed: int) -> dict:
    """A distinct, decodable PNG head slice per seed (distinct pixels: no single-flight sharing)."""
    if seed not in _images:
        _images[seed] = png_bytes(head_phantom(180, 160, seed=seed))
    return {"file": ("slice.png", _images[seed], "image/png")}


def timed_post(client, path: str, **kw) -> tuple[object, float]:
    t0 = time.perf_counter()
    r = client.post(path, **kw)
    return r, time.perf_counter() - t0


# --------------------------------------------------------------------------- deadlines + breaker
@pytest.mark.parametrize("fault", ["delay", "blackhole"])
def test_slow_backend_gets_503_retry_after_within_the_deadline_then_fails_fast_and_recovers_on_its_own(gateway, proxy, fault):
    """A backend that answers after 5 s (or never): 503 + Retry-After by the call deadline;
    with the circuit open the 503 is immediate; once the backend is healthy again the
    gateway serves 200 without a restart."""
    deadline, info_deadline, reset = 1.0, 0.5, 1.5
    gw = gateway(classify_deadline_s=deadline, breaker_failures=2, breaker_reset_s=reset, retries=2)
    ok, _ = timed_post(gw, "/predict", files=upload(1))
    assert ok.status_code == 200, ok.text

    proxy.set_mode(fault, delay_s=5.0)
    slow = []
    for seed in (2, 3):
        r, elapsed = timed_post(gw, "/predict", files=upload(seed))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        slow.append(elapsed)
    # Bounded by the version lookup's deadline plus the call's total deadline (retries
    # included), never by the backend's 5 s; the slack is for a loaded 2-core machine.
    assert all(deadline * 0.9 <= s <= info_deadline + deadline + 1.5 for s in slow), slow

    fast = []
    for seed in (4, 5, 6):
        r, elapsed = timed_post(gw, "/predict", files=upload(seed))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        fast.append(elapsed)
    assert max(fast) < 0.5, f"open circuit must answer at once: {fast}"
    ready = gw.get("/readyz").json()["checks"]["classifier"]
    assert ready["circuit"] == "open"

    proxy.set_mode("pass")
    t_back = time.perf_counter()
    recovered = None
    while time.perf_counter() - t_back < reset + 10:
        r, _ = timed_post(gw, "/predict", files=upload(7))
        if r.status_code == 200:
            recovered = time.perf_counter() - t_back
            break
        assert r.status_code == 503
        time.sleep(0.2)
    assert recovered is not None, "the gateway did not recover on its own"
    assert gw.get("/readyz").json()["checks"]["classifier"]["circuit"] == "closed"
    print(
        f"\nMEASURED slow-backend[{fault}] deadline={deadline}s: 503 before the circuit opens "
        f"{', '.join(f'{s:.3f}' for s in slow)} s; with the circuit open {', '.join(f'{s * 1000:.0f}' for s in fast)} ms; "
        f"recovered {recovered:.2f} s after the backend came back (breaker reset {reset} s)"
    )


def test_dropped_connections_are_retried_a_bounded_number_of_times_with_jittered_backoff(gateway, proxy):
    """A backend that resets every connection: each logical call makes 1 + ``retries``
    attempts, spaced by full-jitter exponential back-off, then answers 503."""
    retries, base = 2, 0.2
    gw = gateway(retries=retries, backoff_base_s=base, classify_deadline_s=10.0, breaker_failures=1000)
    proxy.set_mode("drop")
    normalised: list[float] = []
    gaps_all: list[list[float]] = []
    for seed in range(10, 18):
        proxy.reset_stats()
        r, _ = timed_post(gw, "/predict", files=upload(seed))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        times = proxy.stats.accept_times
        # One version lookup (not retried) + the classify call's 1 + retries attempts.
        assert proxy.stats.accepted == 1 + 1 + retries, proxy.stats.accepted
        attempts = times[1:]
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        gaps_all.append(gaps)
        for i, g in enumerate(gaps, start=1):
            cap = base * 2**i  # the back-off drawn uniformly from [0, cap]
            assert g <= cap + 0.3, f"attempt gap {g:.3f}s over its cap {cap}s"
            normalised.append(min(g / cap, 1.0))
    # Full jitter: the waits spread over [0, cap], they are not one fixed delay (a fixed
    # back-off would spread only by scheduling noise, a few hundredths of the cap).
    assert max(normalised) - min(normalised) > 0.3, normalised
    print(f"\nMEASURED retry gaps (s) per request with base {base}s: {[[round(g, 3) for g in gs] for gs in gaps_all]}")


def test_slow_redis_adds_at_most_one_bounded_wait_and_readiness_stays_true(gateway, redis_url, key_prefix):
    """The real Redis behind a proxy that delays its answers by 2 s: requests still succeed,
    uncached; the first pays one bounded wait (2 x the 0.25 s socket timeout), the next ones
    skip Redis for the back-off period; /readyz says "degraded" and stays 200."""
    import redis as redis_lib

    host_port = redis_url.split("//", 1)[1].split("/", 1)
    host, port = host_port[0].split(":")
    db = host_port[1] if len(host_port) > 1 else "0"
    prefix = key_prefix.rstrip(":")
    with FaultProxy(host, int(port)) as redis_link:
        slow_url = f"redis://127.0.0.1:{redis_link.port}/{db}"
        timeout = 0.25
        plain = gateway(redis_url="")
        cached = gateway(redis_url=slow_url, cache_prefix=prefix, redis_timeout_s=timeout, redis_backoff_s=30)
        for seed in (60, 61):  # warm both gateways and the backend
            assert plain.post("/predict", files=upload(seed)).status_code == 200
            assert cached.post("/predict", files=upload(seed)).status_code == 200
        base = statistics.median(timed_post(plain, "/predict", files=upload(s))[1] for s in (62, 63, 64))
        redis_link.set_mode("delay", delay_s=2.0)
        first, t_first = timed_post(cached, "/predict", files=upload(65))
        rest = [timed_post(cached, "/predict", files=upload(s)) for s in (66, 67, 68)]
        ready = cached.get("/readyz")
    try:
        assert first.status_code == 200 and first.json()["cached"] is False
        assert all(r.status_code == 200 and r.json()["cached"] is False for r, _ in rest)
        added_first = t_first - base
        added_rest = statistics.median(t for _, t in rest) - base
        assert added_first < 2 * timeout + 0.75, f"first request added {added_first:.3f}s"
        # Not skipped, each would wait 2 x timeout = 0.5 s again; the margin is scheduling noise.
        assert added_rest < 0.4, f"Redis was not skipped during the back-off: +{added_rest:.3f}s"
        assert ready.status_code == 200
        assert ready.json()["checks"]["cache"]["status"] == "degraded"
    finally:
        r = redis_lib.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)
    print(
        f"\nMEASURED slow Redis (answers 2 s late, socket timeout {timeout}s): uncached baseline {base * 1000:.0f} ms; "
        f"first request +{added_first * 1000:.0f} ms, next ones +{added_rest * 1000:.0f} ms (Redis skipped for the back-off)"
    )


# --------------------------------------------------------------------------- overload
def test_overload_is_refused_at_once_with_retry_after_and_admitted_requests_keep_their_latency(gateway, classifier):
    """Grad-CAM requests (about 1 s of CPU each) against a classifier that runs 1 and queues 2:
    a burst of 8 is answered 200 for the admitted ones, within (1 + queue) service times, and
    503 ``backend_overloaded`` + Retry-After at once for the rest."""
    gw = gateway(classify_deadline_s=60.0)
    explain = {"explain": "true"}
    baseline = []
    for seed in (30, 31, 32):
        r, elapsed = timed_post(gw, "/predict", files=upload(seed), data=explain)
        assert r.status_code == 200, r.text
        baseline.append(elapsed)
    service = statistics.median(baseline)

    before = classify_count(classifier.url)
    seeds = list(range(40, 48))
    for s in seeds:
        upload(s)  # encode the PNGs before the burst
    start = threading.Barrier(len(seeds))

    def one(seed: int):
        start.wait()
        return timed_post(gw, "/predict", files=upload(seed), data=explain)

    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(one, seeds))
    statuses = [r.status_code for r, _ in results]
    admitted = [t for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code == 503]
    assert set(statuses) <= {200, 503}, statuses
    assert admitted and refused, statuses
    for r, _ in refused:
        assert r.json()["error"]["code"] == "backend_overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    # The backend computed only what it admitted (refusals are not retried by the gateway).
    assert classify_count(classifier.url) - before == len(seeds)
    refused_t = [t for _, t in refused]
    assert max(admitted) <= (1 + CLASSIFIER_QUEUE) * service * 1.5 + 1.0, (admitted, service)
    # "At once": refusals do not wait behind the admitted work. Compared with the admitted
    # requests of the same burst, not with one service time: on an idle machine a Grad-CAM
    # takes ~0.1 s, about what the gateway's own decode + canonicalise of the upload costs.
    assert statistics.median(refused_t) < max(admitted), (refused_t, admitted, service)
    print(
        f"\nMEASURED overload: single Grad-CAM request {service:.2f} s (median of {[round(b, 2) for b in baseline]}); "
        f"burst of {len(seeds)}: {len(admitted)} admitted in {', '.join(f'{t:.2f}' for t in sorted(admitted))} s, "
        f"{len(refused_t)} refused (503) in {', '.join(f'{t * 1000:.0f}' for t in sorted(refused_t))} ms"
    )


# --------------------------------------------------------------------------- admission before the body
def wait_bytes_up(proxy: FaultProxy, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while proxy.stats.bytes_up < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats.bytes_up >= n, "the held requests never reached the backend"


def partial_upload(url: str, declared: int, sent: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], dict, float]:
    """Send the headers of a ``declared``-byte multipart upload and only ``sent`` of its body,
    then wait for the answer without sending more: (status, headers, JSON body, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=slowbnd\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        t0 = time.perf_counter()
        sock.sendall(head + sent)
        data = b""
        while True:
            head_part, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head_part.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                if len(body) >= int(headers.get("content-length", "0")):
                    elapsed = time.perf_counter() - t0
                    return int(lines[0].split()[1]), headers, json.loads(body), elapsed
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a full answer: {data!r}"
            data += chunk


def test_excess_requests_are_refused_before_the_body_is_read_and_admitted_again_when_capacity_frees(classifier, proxy, tmp_path):
    """A real gateway process capped at 2 result requests in flight, both held by a backend
    whose answers the proxy delays 3 s: a third request, even one whose upload has barely
    begun, is answered 503 ``overloaded`` + Retry-After in well under 100 ms, without a
    decode; the refused keep-alive connection stays usable; once the two finish, requests
    are admitted again."""
    from conftest import free_port

    env = {
        "GATEWAY_CLASSIFIER_URL": proxy.url,
        "GATEWAY_GENERATOR_URL": f"http://127.0.0.1:{dead_port()}",
        "REDIS_URL": "",
        "GATEWAY_INFO_DEADLINE_S": "5",
        "GATEWAY_MAX_IN_FLIGHT": "2",
    }
    gw = start_service("gateway", free_port(), env, tmp_path)
    try:
        wait_ready(gw)
        for seed in (80, 81, 82, 83, 84):
            upload(seed)
        assert httpx.post(gw.url + "/predict", files=upload(80), timeout=60).status_code == 200

        def counters() -> tuple[float, float]:
            text = httpx.get(gw.url + "/metrics", timeout=10).text
            return (metric_value(text, "alzprog_gateway_work_total", kind="decode"),
                    metric_value(text, "alzprog_overload_rejections_total", service="gateway"))

        proxy.set_mode("delay", delay_s=3.0)
        proxy.reset_stats()
        held: dict[int, object] = {}

        def one(seed: int) -> None:
            held[seed] = httpx.post(gw.url + "/predict", files=upload(seed), timeout=60)

        threads = [threading.Thread(target=one, args=(s,)) for s in (81, 82)]
        for t in threads:
            t.start()
        wait_bytes_up(proxy, 2 * 256 * 256)  # both decoded and sent: in flight, answers held
        decodes, refusals = counters()

        # An upload that has sent 1 KiB of its declared 200 KiB and then waits.
        status, headers, body, t_partial = partial_upload(gw.url, 200_000, b"--slowbnd\r\n" + b"A" * 1024)
        assert status == 503 and body["error"]["code"] == "overloaded", (status, body)
        assert int(headers["retry-after"]) >= 1
        # Complete uploads on one keep-alive connection: refused each time, the connection reused.
        full = []
        with httpx.Client(timeout=10) as client:
            for seed in (83, 84):
                r, t = timed_post(client, gw.url + "/predict", files=upload(seed))
                assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
                assert int(r.headers["Retry-After"]) >= 1
                full.append(t)
        assert t_partial < 0.1 and max(full) < 0.1, (t_partial, full)
        assert counters() == (decodes, refusals + 3), "a refused upload was decoded (or not counted)"
        assert not held, "a held request finished early; the refusals were not tested at the cap"

        for t in threads:
            t.join(timeout=60)
        assert {s: r.status_code for s, r in held.items()} == {81: 200, 82: 200}
        proxy.set_mode("pass")
        again = httpx.post(gw.url + "/predict", files=upload(84), timeout=60)
        assert again.status_code == 200, again.text
    finally:
        gw.stop()
    print(
        f"\nMEASURED admission cap 2 reached: refusal of a 1 KiB-of-200 KiB upload {t_partial * 1000:.1f} ms, "
        f"of complete uploads {', '.join(f'{t * 1000:.1f}' for t in full)} ms; no decode; admitted again after the 2 finished"
    )


def test_progression_has_its_own_cap_inside_the_total(gateway, proxy):
    """``max_in_flight_progression`` 1 of ``max_in_flight`` 3: with one /progression held, a
    second /progression is refused at once while a /predict is still admitted."""
    gw = gateway(max_in_flight=3, max_in_flight_progression=1, classify_deadline_s=30.0)
    assert gw.post("/predict", files=upload(90)).status_code == 200
    proxy.set_mode("delay", delay_s=2.0)
    proxy.reset_stats()
    out: dict[str, object] = {}

    def send(name: str, path: str, seed: int) -> None:
        out[name] = gw.post(path, files=upload(seed))

    first = threading.Thread(target=send, args=("progression", "/progression", 91))
    first.start()
    wait_bytes_up(proxy, 256 * 256)  # classifying, its answer held
    assert gw.app.state.in_flight.snapshot()["progression_in_flight"] == 1
    second, t_second = timed_post(gw, "/progression", files=upload(92))
    assert second.status_code == 503 and second.json()["error"]["code"] == "overloaded"
    assert t_second < 0.1, t_second
    predict = threading.Thread(target=send, args=("predict", "/predict", 93))
    predict.start()
    predict.join(timeout=60)
    first.join(timeout=60)
    assert out["predict"].status_code == 200, out["predict"].text
    # The held /progression was admitted: it classified, then met the dead generator.
    assert out["progression"].status_code == 503 and out["progression"].json()["error"]["code"] == "backend_unavailable"
    snap = gw.app.state.in_flight.snapshot()
    assert (snap["in_flight"], snap["progression_in_flight"], snap["refused"]) == (0, 0, 1)


# --------------------------------------------------------------------------- single-flight across replicas
@pytest.fixture
def shared_redis(redis_url, key_prefix):
    """A key prefix in the real Redis for gateway replicas to share; its keys deleted afterwards."""
    import redis as redis_lib

    prefix = key_prefix.rstrip(":")
    yield prefix
    r = redis_lib.Redis.from_url(redis_url)
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)


def test_identical_uploads_on_two_gateway_replicas_are_computed_once(gateway, proxy, classifier, redis_url, shared_redis):
    """Two gateway instances sharing one Redis, the backend's answers delayed 1 s: the same
    upload sent to both at once reaches the classifier once; both get the same answer."""
    kw = dict(redis_url=redis_url, cache_prefix=shared_redis, versions_ttl_s=60.0, classify_deadline_s=30.0)
    a, b = gateway(**kw), gateway(**kw)
    for gw, seed in ((a, 100), (b, 101)):  # learn the served version before the backend slows down
        assert gw.post("/predict", files=upload(seed)).status_code == 200
    proxy.set_mode("delay", delay_s=1.0)
    before = classify_count(classifier.url)
    start = threading.Barrier(2)

    def one(gw):
        start.wait()
        return timed_post(gw, "/predict", files=upload(102))

    with ThreadPoolExecutor(2) as pool:
        (ra, ta), (rb, tb) = pool.map(one, (a, b))
    assert ra.status_code == 200 and rb.status_code == 200, (ra.text, rb.text)
    assert ra.json()["probabilities"] == rb.json()["probabilities"]
    assert sorted([ra.json()["cached"], rb.json()["cached"]]) == [False, True], "one computed, the other shared it"
    assert classify_count(classifier.url) - before == 1
    print(f"\nMEASURED single-flight across 2 replicas (backend +1 s): 1 classifier call; answers in {ta:.2f} s and {tb:.2f} s")


def test_a_replica_that_died_holding_the_lock_delays_its_twins_by_at_most_the_flight_wait(gateway, classifier, redis_url, shared_redis):
    """The lock of a computation whose replica is gone (set by hand, 60 s TTL, never released,
    no result ever stored): the request waits ``flight_wait_s`` and then computes itself."""
    import redis as redis_lib

    from alzprog.decode import decode_slice
    from alzprog.preprocessing import canonicalize

    wait = 1.0
    gw = gateway(redis_url=redis_url, cache_prefix=shared_redis, versions_ttl_s=60.0, flight_wait_s=wait)
    assert gw.post("/predict", files=upload(110)).status_code == 200
    _, data, _ = upload(111)["file"]
    sha = canonicalize(decode_slice(data)).sha256
    lock_ttl_s = 60.0
    redis_lib.Redis.from_url(redis_url).set(f"{shared_redis}:predict:{sha}:c1:lock", "gone-replica", px=int(lock_ttl_s * 1000))
    before = classify_count(classifier.url)
    r, elapsed = timed_post(gw, "/predict", files=upload(111))
    assert r.status_code == 200 and r.json()["cached"] is False, r.text
    assert classify_count(classifier.url) - before == 1
    # It honoured the wait, and it did not sit out the dead replica's lock (the bound is the
    # lock's TTL, not a speed limit: how long the computation takes is a benchmark's business).
    assert wait <= elapsed < lock_ttl_s, elapsed
    print(f"\nMEASURED orphaned lock: answered in {elapsed:.2f} s with flight_wait_s={wait}")


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_on_the_gateway_under_load_drops_readiness_and_completes_in_flight_requests(classifier, proxy, tmp_path):
    """A real gateway process with 3 requests in flight (the backend's answers delayed 2 s):
    after SIGTERM, readiness is never 200 again, all 3 requests complete with 200, the log
    shows the drain began before they completed, and the process exits cleanly."""
    from conftest import free_port

    env = {
        "GATEWAY_CLASSIFIER_URL": proxy.url,
        "GATEWAY_GENERATOR_URL": f"http://127.0.0.1:{dead_port()}",
        "REDIS_URL": "",
        "GATEWAY_INFO_DEADLINE_S": "5",
    }
    gw = start_service("gateway", free_port(), env, tmp_path)
    try:
        wait_ready(gw)
        for seed in (50, 51, 52):
            upload(seed)
        warm = httpx.post(gw.url + "/predict", files=upload(49), timeout=60)
        assert warm.status_code == 200, warm.text
        proxy.set_mode("delay", delay_s=2.0)
        proxy.reset_stats()
        results: dict[int, object] = {}

        def one(seed: int) -> None:
            try:
                results[seed] = httpx.post(gw.url + "/predict", files=upload(seed), headers={"X-Request-ID": f"inflight-{seed}"}, timeout=60)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                results[seed] = exc

        threads = [threading.Thread(target=one, args=(s,)) for s in (50, 51, 52)]
        for t in threads:
            t.start()
        # SIGTERM once the three canonical slices (256 x 256 bytes each; /predict sends no mask)
        # have reached the backend: the requests are in flight, their answers held by the proxy.
        deadline = time.monotonic() + 60
        while proxy.stats.bytes_up < 3 * 256 * 256 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.stats.bytes_up >= 3 * 256 * 256, "the requests never reached the backend"
        assert not results, "a request finished before SIGTERM; the test did not catch them in flight"
        gw.proc.send_signal(signal.SIGTERM)
        t_sig = time.perf_counter()
        readiness = []
        while time.perf_counter() - t_sig < 1.0:
            try:
                readiness.append(httpx.get(gw.url + "/readyz", timeout=1.0).status_code)
            except httpx.HTTPError as exc:
                readiness.append(type(exc).__name__)
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=60)
        code = gw.proc.wait(timeout=30)
        drained_in = time.perf_counter() - t_sig
    finally:
        gw.stop()
    assert 200 not in readiness, readiness
    outcome = {s: getattr(r, "status_code", repr(r)) for s, r in results.items()}
    assert outcome == {50: 200, 51: 200, 52: 200}, outcome
    assert code in (0, -signal.SIGTERM)
    log = gw.log_text()
    assert "draining" in log
    first_done = min(log.find(f'"request_id": "inflight-{s}"') for s in (50, 51, 52))
    assert 0 <= log.find("draining") < first_done, "readiness must drop before the in-flight requests complete"
    print(f"\nMEASURED SIGTERM drain: readiness after SIGTERM {sorted(set(map(str, readiness)))}; 3 in-flight requests 200; exited in {drained_in:.2f} s")
