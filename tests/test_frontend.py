"""The frontend server over real HTTP: security headers, static page, and the /api proxy.

The frontend runs as its own process (``python -m services.frontend.server``). For the proxy
tests a tiny real HTTP server in this module stands in for the gateway, so every status
code, header and byte that crosses the proxy can be checked exactly; the full stack is
exercised by tests/test_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, stop_process_group, wait_http

STATIC = REPO / "services" / "frontend" / "static"
MAX_BODY = 64 * 1024
API_KEY = "frontend-test-key-7f3a"


class FakeGatewayHandler(BaseHTTPRequestHandler):
    """A real upstream: echoes what reached it, or answers a chosen status and error body."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/livez":
            self._send_json(200, {"status": "ok"})
        elif self.path.startswith("/slow"):
            time.sleep(3.0)
            self._send_json(200, {"late": True})
        else:
            self._send_json(404, {"error": {"code": "not_found", "message": "No such route."}})

    def do_POST(self) -> None:
        body = self._read_body()
        record = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "sha256": hashlib.sha256(body).hexdigest(),
            "length": len(body),
        }
        type(self).seen.append(record)
        if self.path.startswith("/predict"):
            self._send_json(
                200,
                {"echo": record},
                {"Cache-Control": "no-store", "X-Request-ID": self.headers.get("X-Request-ID", "")},
            )
        elif self.path.startswith("/unsupported"):
            self._send_json(
                415, {"error": {"code": "unsupported_format", "message": "Not an image we decode."}}
            )
        elif self.path.startswith("/busy"):
            self._send_json(
                503,
                {"error": {"code": "backend_unavailable", "message": "Classifier down."}},
                {"Retry-After": "7"},
            )
        else:
            self._send_json(404, {"error": {"code": "not_found", "message": "No such route."}})


@pytest.fixture(scope="module")
def fake_gateway():
    FakeGatewayHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeGatewayHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _start_frontend(gateway_url: str, tmp_path: Path, **env_extra: str):
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "GATEWAY_URL": gateway_url,
            "FRONTEND_HOST": "127.0.0.1",
            "FRONTEND_PORT": str(port),
            "FRONTEND_MAX_BODY_BYTES": str(MAX_BODY),
            "FRONTEND_PROXY_TIMEOUT_S": "1.5",
            **env_extra,
        }
    )
    log = open(tmp_path / f"frontend-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.frontend.server"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/livez", timeout=60, proc=proc)
    return proc, url, log


def _stop(proc: subprocess.Popen, log) -> None:
    stop_process_group(proc, timeout=10)
    log.close()


@pytest.fixture(scope="module")
def frontend(fake_gateway, tmp_path_factory):
    proc, url, log = _start_frontend(fake_gateway, tmp_path_factory.mktemp("fe"), FRONTEND_API_KEY=API_KEY)
    yield url
    _stop(proc, log)


@pytest.fixture(scope="module")
def frontend_without_gateway(tmp_path_factory):
    # A port nobody listens on: the gateway is down.
    proc, url, log = _start_frontend(f"http://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("fe_down"))
    yield url
    _stop(proc, log)


def _assert_security_headers(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in (x.strip() for x in csp.split(";")) if d}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"], "no inline or remote scripts"
    assert directives["style-src"] == ["'self'"], "no inline styles"
    assert directives["frame-ancestors"] == ["'none'"]
    assert set(directives["img-src"]) == {"'self'", "data:", "blob:"}
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_page_and_assets_are_served_with_security_headers(frontend):
    for path, ctype in [("/", "text/html"), ("/app.js", "javascript"), ("/style.css", "text/css")]:
        r = httpx.get(frontend + path)
        assert r.status_code == 200, path
        assert ctype in r.headers["content-type"]
        _assert_security_headers(r)
    page = httpx.get(frontend + "/").text
    assert (STATIC / "index.html").read_text() == page
    assert 'src="app.js"' in page and 'href="style.css"' in page
    assert 'name="viewport"' in page, "phone-sized screens need the viewport meta"


def test_page_has_no_inline_script_style_or_handler():
    html = (STATIC / "index.html").read_text()
    # Every <script> has a src and no body; no <style> blocks, style= attributes or on*= handlers.
    for m in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I):
        assert "src=" in m.group(1) and m.group(2).strip() == ""
    assert not re.search(r"<style\b", html, flags=re.I)
    assert not re.search(r"\sstyle\s*=", html, flags=re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I)
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js and "eval(" not in js, "results are rendered with textContent only"


def test_the_page_labels_synthetic_images_and_says_not_for_diagnosis():
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text()
    assert "not for diagnosis" in html.lower()
    assert "SYNTHETIC" in html and '"SYNTHETIC"' in js


def test_security_headers_also_on_errors_and_proxied_responses(frontend):
    r = httpx.get(frontend + "/no-such-file.js")
    assert r.status_code == 404
    _assert_security_headers(r)
    r = httpx.post(frontend + "/api/predict", files={"file": ("upload", b"x", "application/octet-stream")})
    assert r.status_code == 200
    _assert_security_headers(r)


def test_upload_is_forwarded_byte_exact_with_query_and_api_key(frontend):
    payload = os.urandom(20_000)
    r = httpx.post(
        frontend + "/api/predict?explain=true",
        files={"file": ("upload", payload, "application/octet-stream")},
        headers={"Cookie": "session=secret-cookie", "X-Request-ID": "req-abc-123"},
    )
    assert r.status_code == 200
    echo = r.json()["echo"]
    assert echo["path"] == "/predict?explain=true"
    assert echo["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    # The multipart body arrives unchanged: it contains our exact payload bytes.
    seen = FakeGatewayHandler.seen[-1]
    assert seen["sha256"] == echo["sha256"] and seen["length"] > len(payload)
    assert echo["headers"]["x-api-key"] == API_KEY, "the server adds the key; the browser never has it"
    assert "cookie" not in echo["headers"], "cookies are not forwarded to the API"
    assert echo["headers"]["x-request-id"] == "req-abc-123"
    assert r.headers["x-request-id"] == "req-abc-123"
    assert r.headers["cache-control"] == "no-store", "upstream's no-store reaches the browser"


def test_upstream_error_status_and_body_pass_through(frontend):
    r = httpx.post(frontend + "/api/unsupported", files={"file": ("upload", b"not an image", "text/plain")})
    assert r.status_code == 415
    assert r.json() == {"error": {"code": "unsupported_format", "message": "Not an image we decode."}}
    r = httpx.post(frontend + "/api/busy", files={"file": ("upload", b"x", "image/png")})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "backend_unavailable"
    r = httpx.get(frontend + "/api/unknown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_gateway_down_gives_fast_json_503_with_retry_after(frontend_without_gateway):
    r = httpx.post(frontend_without_gateway + "/api/predict", files={"file": ("upload", b"x", "image/png")})
    assert r.status_code == 503
    assert r.headers["retry-after"].isdigit()
    # The refused connection itself is the answer (not a timeout waiting for a gateway).
    assert r.json()["error"]["code"] == "gateway_unavailable"
    _assert_security_headers(r)
    # The frontend itself stays live and ready (it serves the page), and says the API is down.
    assert httpx.get(frontend_without_gateway + "/livez").status_code == 200
    ready = httpx.get(frontend_without_gateway + "/readyz")
    assert ready.status_code == 200 and ready.json()["gateway"].startswith("unreachable")


def test_slow_gateway_gives_504_after_the_proxy_deadline(frontend):
    r = httpx.get(frontend + "/api/slow", timeout=10)
    # The fake gateway answers 200 after longer than the proxy deadline: a 504 means the
    # frontend gave up at its deadline instead of waiting for the upstream.
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "gateway_timeout"


def test_body_over_the_limit_is_refused_with_413_also_when_chunked(frontend):
    before = len(FakeGatewayHandler.seen)
    big = b"\0" * (MAX_BODY + 1)
    r = httpx.post(frontend + "/api/predict", content=big, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\0" * 4096

    # No Content-Length: the limit is enforced while streaming.
    r = httpx.post(frontend + "/api/predict", content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # Exactly at the limit is accepted.
    r = httpx.post(frontend + "/api/predict", content=b"\0" * MAX_BODY, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["echo"]["length"] == MAX_BODY
    # Only the request at the limit reached the gateway whole.
    assert [rec["length"] for rec in FakeGatewayHandler.seen[before:]] == [MAX_BODY]


def test_malformed_content_length_is_400(frontend):
    import socket

    host, port = frontend.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n"
            b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\nhello"
        )
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    assert status == 400


def test_path_traversal_out_of_the_api_is_refused(frontend):
    r = httpx.get(frontend + "/api/..%2F..%2Fetc/passwd")
    assert r.status_code in (400, 404)
    assert "root:" not in r.text


def test_client_typed_paths_and_queries_never_reach_the_log(fake_gateway, tmp_path):
    canary = "PATIENT_CANARY_7731"
    proc, url, log = _start_frontend(fake_gateway, tmp_path)
    try:
        httpx.post(url + f"/api/{canary}?name={canary}", files={"file": ("upload", b"x", "image/png")})
        httpx.post(url + f"/api/predict?note={canary}", files={"file": ("upload", b"x", "image/png")})
    finally:
        _stop(proc, log)
    text = "".join(p.read_text() for p in tmp_path.glob("frontend-*.log"))
    assert '"path": "predict"' in text and '"path": "other"' in text, text
    assert canary not in text
