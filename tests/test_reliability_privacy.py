"""Privacy across the whole running stack: nothing identifying leaves the upload.

tests/test_service_gateway.py already checks an in-process gateway and the two model
services. This test drives the real four-process stack (the session ``stack`` fixture: MLflow,
Redis, classifier, generator, gateway, frontend) through both doors, the gateway and the
page's same-origin ``/api`` proxy, with canaries in every place a client controls: the file
name, PNG text chunks, the DICOM header (patient name, id, birth date, institution, referring
physician, a private tag), a DICOM that fails decoding, the query string and an ``X-API-Key``
header. Then it greps every log line of every service, every metrics label of every service,
and every Redis key and value the stack wrote, and every error body, for the canaries.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from fixtures_images import PHI, dicom_bytes, head_phantom
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.slow

FILE_CANARY = "CANARY-FileName-Smith-John-19400101"
PNG_CANARY = "CANARY-PngText-Patient-Jones"
QUERY_CANARY = "CANARY-Query-Patient-Brown"
KEY_CANARY = "CANARY-ApiKey-7f3a9c1e5b"
PRIVATE_TAG = "private secret"  # value of the private DICOM tag written by dicom_bytes
# Long or punctuated values only: base64 image data could contain a short word by chance.
CANARIES = [FILE_CANARY, PNG_CANARY, QUERY_CANARY, KEY_CANARY, PRIVATE_TAG, *PHI.values()]


def png_with_text(seed: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", PNG_CANARY)
    info.add_text("Description", f"{PHI['PatientName']} {PHI['PatientID']} born {PHI['PatientBirthDate']}")
    buf = io.BytesIO()
    Image.fromarray(head_phantom(176, 160, seed=seed)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_canaries_reach_no_log_metric_redis_entry_or_error_body_and_results_are_no_store(stack):
    procs = stack["procs"]
    doors = {"gateway": procs["gateway"].url, "frontend": procs["frontend"].url + "/api"}
    uploads = {
        f"{FILE_CANARY}.png": png_with_text(61),
        f"{FILE_CANARY}.dcm": dicom_bytes(head_phantom(176, 160, seed=62).astype(np.uint16) * 16),
    }
    # Header says 4096 x 4096 but the pixel data is small: refused before decoding.
    broken_dicom = dicom_bytes(head_phantom(64, 64, seed=63).astype(np.uint16), rows=4096, columns=4096)
    headers = {"X-API-Key": KEY_CANARY}
    bodies: list[str] = []
    for door, base in doors.items():
        for name, data in uploads.items():
            for path, form in (("/predict", {}), ("/progression", {"from_stage": "vmd"})):
                r = httpx.post(
                    f"{base}{path}", params={"explain": "false", "note": QUERY_CANARY}, files={"file": (name, data)},
                    data=form, headers=headers, timeout=120,
                )
                assert r.status_code == 200, (door, name, path, r.text[:300])
                assert r.headers["cache-control"] == "no-store", (door, path)
                bodies.append(r.text)
        bad = httpx.post(f"{base}/predict", files={"file": (f"{FILE_CANARY}.dcm", broken_dicom)}, headers=headers, timeout=60)
        assert 400 <= bad.status_code < 500, bad.text
        bodies.append(bad.text)

    texts: dict[str, str] = {}
    for log in sorted(stack["logs"].glob("*.log")):
        texts[f"log {log.name}"] = log.read_text(errors="replace")
    assert any("request_id" in t for t in texts.values()), "the service logs were not found"
    for name in ("gateway", "classifier", "generator"):
        texts[f"metrics {name}"] = httpx.get(procs[name].url + "/metrics", timeout=10).text
    rc = stack["redis"]
    keys = list(rc.scan_iter(f"{stack['prefix']}:*"))
    assert keys, "the stack cached nothing: Redis was not exercised"
    texts["redis"] = "\n".join(k.decode("latin-1") + " " + (rc.get(k) or b"").decode("latin-1") for k in keys)
    # Results carry images, which must be re-encoded pixels: no canary survives in them either.
    texts["responses"] = "\n".join(bodies)
    leaks = [(where, c) for where, text in texts.items() for c in CANARIES if c in text]
    assert not leaks, f"canaries leaked: {leaks}"
