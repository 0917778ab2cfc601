"""Hostile request bodies against a real gateway process: multipart abuse, chunked
bodies over the limit, malformed framing, header floods, and the parser versions in use.

tests/test_service_gateway.py covers a CR/LF flood, a huge part header, 2000 fields and a
missing boundary in-process; the cases here are the other shapes of abuse, on the real
uvicorn server, and check that no request floods the log (CVE-2024-53981 logged per byte).

The gateway runs as ``python -m services.gateway`` (uvicorn with the project's settings) with
no reachable backends and no cache: everything here must be refused before a backend would be
needed. Raw sockets are used where an HTTP client would tidy the request up.
"""

from __future__ import annotations

import socket
import time
from importlib.metadata import version

import httpx
import pytest
from fixtures_images import head_phantom, png_bytes
from service_helpers import dead_port, running_service

pytestmark = pytest.mark.slow

LIMIT = 512 * 1024
BOUNDARY = "relbnd"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = {
        "GATEWAY_CLASSIFIER_URL": f"http://127.0.0.1:{dead_port()}",
        "GATEWAY_GENERATOR_URL": f"http://127.0.0.1:{dead_port()}",
        "REDIS_URL": "",
        "GATEWAY_MAX_BODY_BYTES": str(LIMIT),
    }
    # Not ready without a classifier: wait for liveness only.
    with running_service("gateway", env, tmp_path_factory.mktemp("relu_logs"), ready_path="/livez") as gw:
        # The first upload pays the decoder's lazy imports (seconds); timings below are warm.
        httpx.post(gw.url + "/predict", files={"file": ("w.png", b"warm-up, not an image")}, timeout=120)
        yield gw


def part(name: str, value: bytes, filename: str | None = None, extra_headers: bytes = b"") -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n".encode() + extra_headers + b"\r\n" + value + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()
SMALL_PNG = png_bytes(head_phantom(96, 96, seed=1))

ABUSE = {
    "many-files": (b"".join(part("file", SMALL_PNG, f"{i}.png") for i in range(50)) + END, 400),
    "many-part-headers": (part("file", SMALL_PNG, "a.png", b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))) + END, 400),
    "huge-field-name": (part("A" * 300_000, b"x") + END, 400),
    "field-over-part-limit": (part("from_stage", b"A" * 200_000) + END, 400),
    # A CR/LF preamble is legal in RFC 2046; python-multipart >= 0.0.18 skips it without a log
    # line per byte. Either the body limit refuses the long preamble (400 malformed_multipart)
    # or the parser skips it and the handler refuses the non-image file (415): 4xx either way.
    "crlf-flood-before-boundary": (b"\r\n" * 200_000 + part("file", b"not an image", "a.png") + END, None),
    "garbage-before-boundary": (b"X" * 300_000 + part("file", SMALL_PNG, "a.png") + END, 400),
    "missing-file-field": (part("explain", b"true") + END, 422),
    "file-field-without-filename": (part("file", SMALL_PNG) + END, 422),
    "unterminated-part": (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n".encode() + SMALL_PNG, 422),
}


@pytest.mark.parametrize("case", list(ABUSE), ids=list(ABUSE))
def test_multipart_abuse_is_answered_4xx_json_without_flooding_the_log(gateway, case):
    body, expected = ABUSE[case]
    assert len(body) <= LIMIT, "the case must reach the multipart parser, not the body limit"
    lines_before = gateway.log_text().count("\n")
    t0 = time.perf_counter()
    r = httpx.post(gateway.url + "/predict", content=body, headers={"Content-Type": CTYPE}, timeout=30)
    elapsed = time.perf_counter() - t0
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if expected is not None:
        assert r.status_code == expected, r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"code", "message"}
    assert "AAAA" not in err["message"] and "X-H1" not in err["message"], "the input must not be echoed"
    print(f"\nMEASURED multipart abuse {case}: {r.status_code} in {elapsed * 1000:.0f} ms")
    time.sleep(0.1)  # let the access line reach the log file
    # CVE-2024-53981 logged a warning per CR/LF byte; one request must stay a few log lines.
    assert gateway.log_text().count("\n") - lines_before <= 5
    assert gateway.proc.poll() is None


@pytest.mark.parametrize("path", ["/progression", "/volume"])
@pytest.mark.parametrize("case", ["many-files", "huge-field-name", "field-over-part-limit", "missing-file-field"])
def test_the_other_upload_routes_refuse_multipart_abuse_alike(gateway, path, case):
    body, expected = ABUSE[case]
    r = httpx.post(gateway.url + path, content=body, headers={"Content-Type": CTYPE}, timeout=30)
    assert r.status_code == expected, (path, r.text[:300])
    assert set(r.json()["error"]) == {"code", "message"}
    assert gateway.proc.poll() is None


def _nifti_header(dims: tuple[int, int, int]) -> bytes:
    import struct

    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 4, 16)  # int16
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    hdr[344:348] = b"n+1\0"
    return bytes(hdr) + b"\0" * 4


def test_hostile_volumes_are_refused_before_they_are_inflated(gateway):
    """A .nii.gz whose stream holds far more than its header declares (a gzip bomb), a header
    declaring more voxels than the limit, and a truncated volume: 4xx JSON, the server up."""
    import gzip

    bomb = gzip.compress(_nifti_header((64, 64, 8)) + b"\0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) <= LIMIT
    huge = gzip.compress(_nifti_header((4096, 4096, 4096)) + b"\0" * 1024)
    short = _nifti_header((64, 64, 64)) + b"\0" * 1000
    for name, data, codes in (("bomb", bomb, {"no_brain"}), ("huge", huge, {"too_many_pixels"}), ("short", short, {"bad_nifti"})):
        r = httpx.post(gateway.url + "/volume", files={"file": ("upload", data)}, timeout=60)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] in codes, (name, r.text[:300])
    assert gateway.proc.poll() is None


def test_hostile_dicom_series_zips_are_refused_before_they_are_inflated(gateway):
    """Zips at /volume: one member inflating past the per-file bound, members declaring more than
    the total bound, more files than allowed, a member that lies about its size, a truncated
    archive: 4xx JSON, the server up."""
    import io
    import zipfile

    from alzprog.volume import MAX_DICOM_INFLATED, MAX_SERIES_FILES, MAX_SERIES_INFLATED

    def archive(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()

    one_bomb = archive({"a.dcm": b"\0" * (MAX_DICOM_INFLATED + 1)})
    # Members whose central directory declares more than the total bound: refused unread.
    declared = bytearray(archive({f"{i}.dcm": b"x" for i in range(3)}))
    at = 0
    for _ in range(3):
        at = declared.find(b"PK\x01\x02", at) + 1
        declared[at - 1 + 24:at - 1 + 28] = (MAX_SERIES_INFLATED // 2).to_bytes(4, "little")
    too_many = archive({f"{i}.txt": b"" for i in range(MAX_SERIES_FILES + 1)})
    # A member whose central directory declares 10 bytes but whose stream inflates to 64 MiB.
    liar = bytearray(archive({"a.dcm": b"\0" * (8 * 1024 * 1024)}))
    cd = liar.rfind(b"PK\x01\x02")
    liar[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    truncated = archive({"a.dcm": b"DICM" * 1000})[:-30]
    cases = (
        ("one_bomb", one_bomb, {"decompression_bomb"}),
        ("declared_huge", bytes(declared), {"decompression_bomb"}),
        ("too_many", too_many, {"too_many_files"}),
        ("liar", bytes(liar), {"bad_zip", "no_dicom_series"}),
        ("truncated", truncated, {"bad_zip"}),
    )
    for name, data, codes in cases:
        assert len(data) <= LIMIT, name
        r = httpx.post(gateway.url + "/volume", files={"file": ("upload", data)}, timeout=60)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] in codes, (name, r.text[:300])
    assert gateway.proc.poll() is None


def test_missing_boundary_and_wrong_content_type_are_4xx(gateway):
    for ctype in ("multipart/form-data", "multipart/form-data; boundary=", "text/plain", "application/json"):
        r = httpx.post(gateway.url + "/predict", content=b"--x\r\n\r\n", headers={"Content-Type": ctype}, timeout=30)
        assert 400 <= r.status_code < 500, (ctype, r.status_code, r.text)
        assert set(r.json()["error"]) == {"code", "message"}


# --------------------------------------------------------------------------- raw HTTP framing
def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(url: str, head: bytes, body_chunks=(), timeout: float = 10.0) -> tuple[bytes, int]:
    """Send ``head`` and then ``body_chunks`` while watching for an early answer.

    Returns (response bytes, body bytes sent before the answer arrived or the peer closed).
    """
    sock = socket.create_connection(_host_port(url), timeout=timeout)
    sent = 0
    response = b""
    try:
        sock.sendall(head)
        sock.setblocking(False)
        for chunk in body_chunks:
            try:
                got = sock.recv(65536)
                if got:
                    response += got
                    break
            except BlockingIOError:
                pass
            try:
                sock.setblocking(True)
                sock.settimeout(timeout)
                sock.sendall(chunk)
                sent += len(chunk)
            except OSError:
                break  # the server answered and closed while we were still sending
            finally:
                sock.setblocking(False)
        sock.setblocking(True)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _complete(response):
            try:
                got = sock.recv(65536)
            except OSError:
                break
            if not got:
                break
            response += got
    finally:
        sock.close()
    return response, sent


def _complete(response: bytes) -> bool:
    """Headers and the Content-Length worth of body are in."""
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_endless_chunked_upload_gets_413_while_the_client_is_still_sending(gateway):
    """No Content-Length and a body that would go on for 40 x the limit (20 MiB, more than the
    kernel's socket buffers can absorb): the 413 comes back and the connection is closed while
    the client is still sending, so the rest is never read."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: {CTYPE}\r\n\r\n".encode()
    )
    piece = _chunked(b"A" * 16384)
    n = 40 * LIMIT // 16384
    t0 = time.perf_counter()
    response, sent = raw_request(gateway.url, head, (piece for _ in range(n)))
    elapsed = time.perf_counter() - t0
    assert status_of(response) == 413, response[:300]
    assert b"body_too_large" in response
    assert sent < n * len(piece), "the whole endless body was accepted before the answer"
    # `sent` includes what the kernel buffered on both sides, so it exceeds the limit.
    print(f"\nMEASURED endless chunked upload: 413 after {sent / 2**20:.1f} MiB written (limit {LIMIT // 1024} KiB, of {n * len(piece) / 2**20:.0f} MiB) in {elapsed * 1000:.0f} ms")


def _multipart_exactly(total: int) -> bytes:
    """A valid upload of exactly ``total`` bytes: a PNG padded after IEND (trailers are ignored)."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    pad = total - len(head) - len(tail) - len(SMALL_PNG)
    assert pad >= 0
    return head + SMALL_PNG + b"\0" * pad + tail


@pytest.mark.parametrize("size, admitted", [(LIMIT, True), (LIMIT + 1, False)], ids=["exactly-the-limit", "one-byte-over"])
def test_chunked_body_exactly_at_the_limit_reaches_the_handler_one_byte_more_is_413(gateway, size, admitted):
    body = _multipart_exactly(size)
    head = (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        + f"Content-Type: {CTYPE}\r\n\r\n".encode()
    )
    chunks = [_chunked(body[i : i + 50_000]) for i in range(0, len(body), 50_000)] + [b"0\r\n\r\n"]
    response, _ = raw_request(gateway.url, head, chunks, timeout=30)
    if admitted:
        # Parsed, decoded and canonicalised, then refused only for want of a classifier.
        assert status_of(response) == 503, response[:400]
        assert b"backend_unavailable" in response or b"backend_not_ready" in response
    else:
        assert status_of(response) == 413, response[:400]


@pytest.mark.parametrize(
    "lengths",
    [[b"-1"], [b"+10"], [b"10", b"12"], [b"1e3"], [b"0x10"], [b"99999999999999999999999"]],
    ids=["negative", "plus-sign", "two-different", "exponent", "hex", "absurd"],
)
def test_malformed_content_length_is_400_and_the_server_stays_up(gateway, lengths):
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + f"Content-Type: {CTYPE}\r\n".encode()
    head += b"".join(b"Content-Length: " + v + b"\r\n" for v in lengths) + b"\r\n"
    response, _ = raw_request(gateway.url, head, [b"0123456789"])
    assert status_of(response) == 400, response[:300]
    assert httpx.get(gateway.url + "/livez", timeout=5).status_code == 200


def test_header_flood_is_refused_and_the_server_stays_up(gateway):
    """1 MiB of request headers. uvicorn's h11 limit (16 KiB for an incomplete event, set in
    services/common/app.py) bounds what is buffered; headers that arrive complete within one
    socket read (up to ~256 KiB on loopback) are parsed, anything longer is refused."""
    head = b"GET /livez HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 60) for i in range(14_000)) + b"\r\n"
    assert len(head) > 2**20
    t0 = time.perf_counter()
    try:
        response, _ = raw_request(gateway.url, head)
    except ConnectionResetError:
        response = b""  # refused so early that our own send was cut off: also fine
    elapsed = time.perf_counter() - t0
    assert response == b"" or 400 <= status_of(response) < 500, response[:300]
    print(f"\nMEASURED header flood: refused in {elapsed * 1000:.0f} ms")
    assert httpx.get(gateway.url + "/livez", timeout=5).status_code == 200


# --------------------------------------------------------------------------- advisories
# Published advisories of the two libraries that parse our uploads, with the first fixed
# release. The pins in pyproject.toml / requirements.lock must stay at or above all of them.
MULTIPART_ADVISORIES = {
    "CVE-2024-24762 (ReDoS in the Content-Type parser)": "0.0.7",
    "CVE-2024-53981 (CR/LF before the boundary: log/CPU flood)": "0.0.18",
    "CVE-2026-24486 (file write via filename, non-default config)": "0.0.22",
    "CVE-2026-42561 (excessive multipart part headers)": "0.0.27",
    "CVE-2026-53537/53538/53539 (parameter smuggling, quadratic querystring)": "0.0.30",
    "CVE-2026-53540 (negative Content-Length buffers the body)": "0.0.31",
}
STARLETTE_ADVISORIES = {
    "CVE-2023-30798 (unbounded multipart fields/files)": "0.25.0",
    "CVE-2024-47874 (form fields without filename buffered in memory)": "0.40.0",
    "CVE-2025-54121 (large upload blocks the event loop on rollover)": "0.47.2",
    "CVE-2025-62727 (quadratic Range header in FileResponse)": "0.49.1",
    "CVE-2026-48710 (Host header poisons request.url)": "1.0.1",
    "CVE-2026-48818 (StaticFiles UNC paths on Windows)": "1.1.0",
    "CVE-2026-54283 (urlencoded form size limits ignored)": "1.3.1",
}


def _v(s: str) -> tuple[int, ...]:
    return tuple(int(p) for p in s.split(".")[:3])


@pytest.mark.parametrize(
    "package, advisories", [("python-multipart", MULTIPART_ADVISORIES), ("starlette", STARLETTE_ADVISORIES)]
)
def test_upload_parsers_are_past_the_published_advisories(package, advisories):
    installed = version(package)
    behind = {cve: fixed for cve, fixed in advisories.items() if _v(installed) < _v(fixed)}
    assert not behind, f"{package} {installed} is older than the fix of {behind}"
