"""``/docs`` works without internet: Swagger UI is served by the services themselves.

FastAPI's default page loads Swagger UI from a CDN and stays blank offline. Every service's app
(``services.common.app.build_app``) serves the vendored files instead; here the gateway's page
is rendered in Debian's headless Chromium (never a downloaded browser) with every request to
another host aborted, and it must still list the operations of the OpenAPI schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from service_helpers import dead_port, running_service

from services.common.app import DOCS_ASSETS_DIR, DOCS_ASSETS_URL

CHROMIUM = Path("/usr/bin/chromium")


def _apps():
    """The three API services' apps, built from their settings (no lifespan is run)."""
    from services.classifier.app import create_app as classifier_app
    from services.classifier.settings import Settings as ClassifierSettings
    from services.gateway.app import create_app as gateway_app
    from services.gateway.settings import Settings as GatewaySettings
    from services.generator.app import create_app as generator_app
    from services.generator.settings import Settings as GeneratorSettings

    dead = f"http://127.0.0.1:{dead_port()}"
    return {
        "gateway": gateway_app(GatewaySettings(classifier_url=dead, generator_url=dead, redis_url="")),
        "classifier": classifier_app(ClassifierSettings()),
        "generator": generator_app(GeneratorSettings()),
    }


@pytest.mark.parametrize("service", ["gateway", "classifier", "generator"])
def test_docs_page_references_only_its_own_assets(service):
    client = TestClient(_apps()[service])
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert urls, r.text
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert '"validatorUrl": null' in r.text  # the online validator badge would call another host
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        asset = client.get(f"{DOCS_ASSETS_URL}/{name}")
        assert asset.status_code == 200
        assert asset.content == (DOCS_ASSETS_DIR / name).read_bytes()
    assert client.get("/openapi.json").json()["paths"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A real gateway process; its backends and Redis are absent, which /docs does not need."""
    dead = f"http://127.0.0.1:{dead_port()}"
    env = {"GATEWAY_CLASSIFIER_URL": dead, "GATEWAY_GENERATOR_URL": dead, "REDIS_URL": "", "GATEWAY_LOG_LEVEL": "WARNING"}
    with running_service("gateway", env, tmp_path_factory.mktemp("docs_logs"), ready_path="/livez") as svc:
        yield svc


@pytest.mark.slow
def test_gateway_docs_render_in_chromium_with_no_request_to_another_host(gateway):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; scripts/ensure_chromium.sh); never downloaded")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    import httpx

    schema = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    operations = sum(1 for item in schema["paths"].values() for method in item if method in {"get", "post", "put", "delete", "patch"})
    assert operations > 0
    own = urlsplit(gateway.url).netloc
    local, outside, problems = [], [], []

    def route(r) -> None:  # noqa: ANN001 - a Playwright route
        if urlsplit(r.request.url).netloc == own or r.request.url.startswith("data:"):
            local.append(r.request.url)
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.route("**/*", route)
            page.goto(gateway.url + "/docs")
            page.wait_for_selector(".opblock", timeout=30000)
            page.wait_for_load_state("networkidle")
            rendered = page.locator(".opblock").count()
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()

    assert outside == [], f"requests to other hosts: {outside}"
    assert problems == [], problems
    assert rendered == operations
    assert schema["info"]["title"] in title
    assert {urlsplit(u).path for u in local} >= {
        "/docs", "/openapi.json", f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js", f"{DOCS_ASSETS_URL}/swagger-ui.css"
    }
