"""The web page in a real headless Chromium against the real stack.

Stack: the session fixture ``stack`` of tests/conftest.py: the real MLflow server holding the
quick models trained on the tiny phantom by ``alzprog bootstrap`` and promoted to
``champion``, the real Redis, and the four services started as processes. Chromium is
Debian's ``/usr/bin/chromium`` driven by Playwright; no browser is ever downloaded.
Screenshots go to ``test-artifacts/browser/`` (gitignored); docs/img/page*.png are copies.

The samples differ from the ones tests/test_stack_integration.py uses, so neither module sees
the other's cache entries.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 sized viewport

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; scripts/ensure_chromium.sh); never downloaded")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def live_stack(stack, registered_models):
    """The shared real stack of tests/conftest.py (also used by tests/test_stack_integration.py)."""
    return {
        "frontend": stack["procs"]["frontend"].url,
        "gateway": stack["procs"]["gateway"].url,
        "versions": registered_models,
        "logs": stack["logs"],
    }


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


class PageWatch:
    """Collects console errors, page errors and CSP violations of one page, and the URLs of
    the API requests it sends once :meth:`record_api_calls` is called."""

    def __init__(self, page) -> None:
        self.problems: list[str] = []
        self.api_calls: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))

    def record_api_calls(self, page) -> None:
        page.on("request", lambda r: "/api/" in r.url and self.api_calls.append(r.url))


def _open(browser, url: str, viewport: dict):
    """A new context's page on ``url``, ready; ``watch.api_calls`` holds what it sends from then on."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = context.new_page()
    watch = PageWatch(page)
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']", timeout=15000)
    # Only the test's own uploads: what the page fetched while loading is not counted.
    watch.record_api_calls(page)
    return context, page, watch


def _wait_idle(page, timeout_ms: int = 120000) -> None:
    # A selector, not wait_for_function: a string predicate would need eval, which our CSP forbids.
    page.wait_for_selector("body[aria-busy='false']", state="attached", timeout=timeout_ms)


def _upload_volume(page, path: Path, api_calls: list[str]) -> dict:
    """Upload a volume file; the page must send exactly one /api/volume request, answered 200."""
    with page.expect_response(lambda r: "/api/volume" in r.url, timeout=180000) as info:
        page.set_input_files("#file-input", str(path))
    assert info.value.status == 200, info.value.text()
    out = info.value.json()
    _wait_idle(page, 180000)
    assert api_calls == [info.value.url], api_calls
    return out


def _upload_slice(page, path: Path, api_calls: list[str], from_stage: str, *, shows_loading: bool = False) -> tuple[str, dict]:
    """Upload a slice to progress from ``from_stage``; the page must send exactly one
    /api/progression request (the classifier runs once). Returns its URL and answer."""
    page.select_option("#opt-from", from_stage)
    with page.expect_response(lambda r: "/api/progression" in r.url, timeout=120000) as info:
        page.set_input_files("#file-input", str(path))
        if shows_loading:
            # The loading state is shown while the API works.
            page.wait_for_selector("#status:not([hidden])", timeout=10000)
    url, answer = info.value.url, info.value.json()
    _wait_idle(page)
    assert api_calls == [url], api_calls
    return url, answer


def _sample(oasis_sample_files: list[Path], stage: str) -> Path:
    # The last slice of the stage: test_stack_integration.py uploads the first one.
    return [p for p in oasis_sample_files if p.parent.name == stage][-1]


def test_page_uploads_a_real_oasis_slice_and_shows_stage_bars_gradcam_and_strip(
    live_stack, browser, oasis_sample_files
):
    from alzprog.constants import STAGES

    sample = _sample(oasis_sample_files, "Non Demented")
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        # From Non Demented: three synthetic steps, the widest measurements table.
        url, progression = _upload_slice(page, sample, watch.api_calls, "nd", shows_loading=True)
        assert "explain=true" in url and "from_stage=nd" in url
        assert len(progression["steps"]) == 3
        predict = progression  # the one answer carries the classification too

        # What the page shows is what the real API answered.
        assert predict["model"]["version"] == live_stack["versions"]["alzheimer-stage-classifier"]
        assert page.inner_text("#stage-name") == predict["stage"] in STAGES
        assert "alzheimer-stage-classifier v" + predict["model"]["version"] in page.inner_text("#stage-meta")
        bars = page.locator("#prob-bars li")
        assert bars.count() == 4
        assert [bars.nth(i).locator(".prob-name").inner_text() for i in range(4)] == list(STAGES)
        for i, stage in enumerate(STAGES):
            shown = float(bars.nth(i).locator(".prob-bar").get_attribute("aria-valuenow"))
            assert abs(shown - 100 * predict["probabilities"][stage]) < 0.051
            width = bars.nth(i).locator(".prob-fill").evaluate("e => e.getBoundingClientRect().width")
            full = bars.nth(i).locator(".prob-bar").evaluate("e => e.getBoundingClientRect().width")
            assert abs(width / full - predict["probabilities"][stage]) < 0.02, "bar length follows the probability"
        assert page.locator(".prob.is-predicted .prob-name").inner_text() == predict["stage"]

        # Grad-CAM overlay from the API, decoded by the browser.
        assert page.is_visible("#gradcam-card")
        assert page.get_attribute("#gradcam-img", "src") == predict["explain"]["overlay"]
        assert page.eval_on_selector("#gradcam-img", "e => e.complete && e.naturalWidth") > 0
        # The upload preview is a local blob: URL (the JPEG never comes back from the server).
        assert page.get_attribute("#original-img", "src").startswith("blob:")

        # The strip: the original, then one labelled synthetic image per later stage.
        start = STAGES.index(progression["from_stage"])
        steps = progression["steps"]
        assert len(steps) == 3 - start
        items = page.locator("#strip li")
        assert items.count() == 1 + len(steps)
        assert "ORIGINAL" in items.nth(0).inner_text()
        for i, step in enumerate(steps, start=1):
            text = items.nth(i).inner_text()
            assert step["stage"] in text and "SYNTHETIC" in text
            img = items.nth(i).locator("img")
            assert img.get_attribute("src") == step["image"]
            assert "not for diagnosis" in img.get_attribute("alt")
            assert img.evaluate("e => e.complete && e.naturalWidth") > 0
        assert "not for diagnosis" in page.inner_text("#progression").lower()
        assert page.is_hidden("#error")

        # Change maps: one per step, the API's own PNG, with the legend and the stated scale.
        assert page.is_visible("#changes")
        maps = page.locator("#change-strip li")
        assert maps.count() == len(steps)
        for i, step in enumerate(steps):
            img = maps.nth(i).locator("img").first
            assert img.get_attribute("src") == step["change_map"]
            assert img.evaluate("e => e.complete && e.naturalWidth") > 0
            assert step["stage"] in maps.nth(i).inner_text()
        legend = page.inner_text("#change-legend")
        assert "tissue loss" in legend and "CSF gain" in legend
        assert f"{steps[0]['change']['scale_grey_levels']:g} grey levels" in legend
        # The measurements table: the upload, then each step, with the % change from the upload.
        header = page.locator("#morpho-table thead th").all_inner_texts()
        assert header[1] == "Upload" and len(header) == 2 + len(steps)
        vent = page.locator("#morpho-table tr[data-measure='ventricle_area_px'] td").all_inner_texts()
        assert vent[0] == str(progression["input_morphometry"]["ventricle_area_px"])
        for text, step in zip(vent[1:], steps):
            assert text.startswith(str(step["morphometry"]["ventricle_area_px"]))
            pct = step["morphometry"]["pct_change"]["ventricle_area_px"]
            if pct is not None:
                assert f"{abs(pct):.1f}%" in text
        # At 1280 px the measurements table fits its panel: no horizontal scrolling needed.
        wrap = page.locator("#changes .table-wrap")
        assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the measurements table overflows at 1280 px"
        panel, table = page.locator("#progression").bounding_box(), page.locator("#morpho-table").bounding_box()
        assert table["x"] + table["width"] <= panel["x"] + panel["width"]
        # The OOD score and its threshold are stated; a warning, when the API gave one, is shown in words.
        quality = progression["quality"]
        assert f"{quality['ood_score']:.2f}" in page.inner_text("#ood-note")
        codes = [w["code"] for w in quality["warnings"]]
        assert page.is_visible("#quality-notices") == bool(codes)
        assert page.locator("#quality-list li").evaluate_all("els => els.map(e => e.dataset.code)") == codes
        page.locator("#changes").screenshot(path=str(ARTIFACTS / "page_changes.png"))
        page.screenshot(path=str(ARTIFACTS / "page_desktop.png"), full_page=True)
        assert watch.problems == [], watch.problems
    finally:
        context.close()


def test_page_on_a_phone_starts_from_non_demented_and_gets_three_synthetic_stages(
    live_stack, browser, oasis_sample_files
):
    sample = _sample(oasis_sample_files, "Mild Dementia")
    context, page, watch = _open(browser, live_stack["frontend"] + "/", PHONE)
    try:
        url, progression = _upload_slice(page, sample, watch.api_calls, "nd")
        assert "from_stage=nd" in url
        predicted = progression["stage"]
        assert page.inner_text("#stage-name") == predicted
        assert progression["from_stage"] == "Non Demented"
        assert [s["stage"] for s in progression["steps"]] == ["Very mild Dementia", "Mild Dementia", "Moderate Dementia"]
        assert page.locator("#strip .is-synthetic").count() == 3
        first = page.locator("#strip li").nth(0).inner_text()
        # The original is labelled with the chosen start, and says so when it differs from the prediction.
        assert ("Original: Non Demented" if predicted == "Non Demented" else "Original, taken as Non Demented") in first
        # Usable on a phone: nothing wider than the screen, touch-sized button, 2-column strip.
        scroll_w = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_w <= PHONE["width"], f"horizontal overflow: {scroll_w}px"
        assert page.locator("#analyse-btn").bounding_box()["height"] >= 44
        boxes = [page.locator("#strip li").nth(i).bounding_box() for i in range(4)]
        assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] > boxes[0]["y"]
        page.screenshot(path=str(ARTIFACTS / "page_mobile.png"), full_page=True)
        assert watch.problems == [], watch.problems
    finally:
        context.close()


def test_page_shows_the_api_error_for_a_file_that_is_not_an_image(live_stack, browser, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is a text file renamed .png, not an image\n" * 20)
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        with page.expect_response(lambda r: "/api/progression" in r.url) as info:
            page.set_input_files("#file-input", str(fake))
        resp = info.value
        assert 400 <= resp.status < 500
        body = resp.json()
        _wait_idle(page)
        assert page.is_visible("#error")
        assert body["error"]["message"] in page.inner_text("#error-text")
        assert body["error"]["code"] in page.inner_text("#error-text")
        assert page.is_hidden("#result") and page.is_hidden("#progression")
        # The browser console logs the failed request; nothing else may go wrong.
        assert [p for p in watch.problems if "status of 4" not in p] == []
    finally:
        context.close()


def test_the_browser_enforces_the_csp_no_inline_script_runs(live_stack, browser):
    """The policy really is in force: an injected inline script is blocked by Chromium."""
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        page.evaluate(
            """() => { const s = document.createElement('script');
                       s.textContent = 'window.__inlineRan = true';
                       document.body.appendChild(s); }"""
        )
        assert page.evaluate("window.__inlineRan === true") is False
        assert any("Content Security Policy" in p for p in watch.problems)
    finally:
        context.close()


def test_no_file_name_reaches_the_server(live_stack, browser, oasis_sample_files, tmp_path):
    """The user's file name (often a patient id) stays in the browser."""
    canary = f"PATIENT_CANARY_{uuid.uuid4().hex[:8]}"
    src = _sample(oasis_sample_files, "Very mild Dementia")
    named = tmp_path / f"{canary}.jpg"
    shutil.copy(src, named)
    context = browser.new_context(viewport=DESKTOP)
    # Record the multipart fields the page hands to fetch (Playwright does not expose
    # multipart bodies that hold a File): name -> the File's name or the value.
    context.add_init_script(
        """(() => { const orig = window.fetch; window.__sent = [];
            window.fetch = (url, opts) => {
              if (opts && opts.body instanceof FormData) {
                window.__sent.push([String(url), [...opts.body.entries()].map(
                  ([k, v]) => [k, v instanceof File ? 'file:' + v.name : String(v)])]);
              }
              return orig(url, opts); }; })()"""
    )
    page = context.new_page()
    try:
        page.goto(live_stack["frontend"] + "/")
        page.wait_for_selector("body[data-ready='true']")
        page.uncheck("#opt-progression")
        with page.expect_response(lambda r: "/api/predict" in r.url) as info:
            page.set_input_files("#file-input", str(named))
        assert info.value.status == 200
        _wait_idle(page)
        assert canary in page.inner_text("#file-name"), "shown to the user locally"
        sent = page.evaluate("window.__sent")
        assert [fields for url, fields in sent] == [[["file", "file:upload"]]], sent
        for log in live_stack["logs"].glob("*.log"):
            assert canary not in log.read_text(errors="replace"), log.name
    finally:
        context.close()


def test_page_says_the_api_is_down_and_when_to_retry(browser, oasis_sample_files, tmp_path):
    """No gateway behind the frontend: the page shows the proxy's 503 message and Retry-After."""
    import os
    import subprocess
    import sys

    from conftest import free_port, wait_http
    from service_helpers import ServiceProcess

    port = free_port()
    env = {**os.environ, "GATEWAY_URL": f"http://127.0.0.1:{free_port()}", "FRONTEND_PORT": str(port), "FRONTEND_HOST": "127.0.0.1"}
    log = open(tmp_path / "frontend.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.frontend.server"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    fe = ServiceProcess("frontend", proc, f"http://127.0.0.1:{port}", tmp_path / "frontend.log")
    try:
        wait_http(fe.url + "/livez", timeout=60, proc=proc)
        context, page, _ = _open(browser, fe.url + "/", PHONE)
        try:
            with page.expect_response(lambda r: "/api/progression" in r.url) as info:
                page.set_input_files("#file-input", str(_sample(oasis_sample_files, "Non Demented")))
            assert info.value.status == 503
            _wait_idle(page)
            text = page.inner_text("#error-text")
            assert "not reachable" in text and "gateway_unavailable" in text
            assert f"Try again in {info.value.headers['retry-after']} s." in text
            assert page.is_hidden("#result") and page.is_hidden("#status")
            assert page.is_enabled("#analyse-btn"), "the user can retry"
        finally:
            context.close()
    finally:
        fe.stop()


def test_page_stages_a_whole_nifti_volume_and_lists_its_slices(live_stack, browser, tmp_path):
    """A .nii.gz volume (nilearn's MNI152 T1) goes to /api/volume in one request; the page shows
    the voted stage, the slices it used with their probabilities, and the representative slice's chain."""
    import nilearn

    src = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not src.is_file():
        pytest.skip("nilearn ships no MNI152 T1 here")
    named = tmp_path / "head.nii.gz"
    shutil.copy(src, named)
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        out = _upload_volume(page, named, watch.api_calls)
        assert page.inner_text("#stage-name") == out["stage"]
        assert page.is_visible("#volume")
        rows = page.locator("#slices-table tbody tr")
        assert rows.count() == len(out["slices"])
        assert [rows.nth(i).get_attribute("data-slice") for i in range(rows.count())] == [str(s["index"]) for s in out["slices"]]
        rep = page.locator("#slices-table tr.is-representative")
        assert rep.count() == 1 and rep.get_attribute("data-slice") == str(out["representative_slice"])
        assert f"Slice {out['representative_slice']} is shown" in page.inner_text("#volume-summary")
        # The representative slice's chain and change maps, from the same answer.
        assert page.locator("#strip .is-synthetic").count() == len(out["steps"])
        assert page.locator("#change-strip li").count() == len(out["steps"])
        assert page.get_attribute("#original-img", "src") == out["canonical"]
        page.locator("#volume").screenshot(path=str(ARTIFACTS / "page_volume.png"))
        assert watch.problems == [], watch.problems
    finally:
        context.close()


def test_page_sends_a_zipped_dicom_series_to_the_volume_route_and_lists_its_slices(live_stack, browser, tmp_path):
    """A zip of one DICOM series (written with pydicom from the MNI152 template, tests/test_volume.py)
    is a volume to the page: one /api/volume request, the slices with their OOD distance."""
    from test_volume import _series_zip, _template_int16

    data, affine = _template_int16()
    named = tmp_path / "series.zip"
    named.write_bytes(_series_zip(data, affine, "axial"))
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        page.uncheck("#opt-progression")
        out = _upload_volume(page, named, watch.api_calls)
        assert out["volume"]["source_orientation"] == "LPS"
        rows = page.locator("#slices-table tbody tr")
        assert rows.count() == len(out["slices"])
        last = rows.nth(0).locator("td").last.inner_text()
        assert last == f"{out['slices'][0]['ood_score']:.2f}"
        assert page.locator("#slices-table thead th").last.inner_text() == "OOD distance"
        assert watch.problems == [], watch.problems
    finally:
        context.close()


def test_page_warns_of_a_slice_unlike_the_training_data_and_shows_the_tta_spread(live_stack, browser, tmp_path):
    """A coronal slice of the MNI152 template is a brain slice (the gate lets it through) but not
    what the phantom-trained models saw: a 200 with a visible out-of-distribution notice. With
    the uncertainty option ticked, /predict carries tta=true and the bars show the 10-90 % range."""
    from alzprog import ood
    from alzprog.decode import encode_png
    from alzprog.quality import OUT_OF_DISTRIBUTION

    named = tmp_path / "coronal.png"
    named.write_bytes(encode_png(ood.template_probes(per_set=2)["coronal"][1]))
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        page.uncheck("#opt-progression")
        page.check("#opt-tta")
        with page.expect_response(lambda r: "/api/predict" in r.url, timeout=120000) as info:
            page.set_input_files("#file-input", str(named))
        assert info.value.status == 200, info.value.text()
        out = info.value.json()
        _wait_idle(page)
        assert len(watch.api_calls) == 1 and "tta=true" in watch.api_calls[0], watch.api_calls
        assert out["quality"]["out_of_distribution"] is True
        assert page.is_visible("#quality-notices")
        notice = page.locator("#quality-list li[data-code='%s']" % OUT_OF_DISTRIBUTION)
        assert notice.count() == 1 and "unlike the slices the model was trained on" in notice.inner_text()
        # TTA: a range over each bar and the spread in words.
        assert page.locator("#prob-bars .prob-range").count() == 4
        assert page.is_visible("#tta-note") and f"{out['tta']['views']} augmented views" in page.inner_text("#tta-note")
        page.locator("#result").screenshot(path=str(ARTIFACTS / "page_warnings.png"))
        assert watch.problems == [], watch.problems
    finally:
        context.close()


def test_model_card_panel_shows_the_registry_champions(live_stack, browser):
    """/v1/model-card reads the real MLflow registry; the page's panel shows it when opened."""
    import httpx

    from services.gateway.schemas import ModelCard

    card = ModelCard.model_validate(httpx.get(live_stack["gateway"] + "/v1/model-card", timeout=60).json())
    versions = {m.name: m.version for m in card.models}
    assert versions == {name: str(v) for name, v in live_stack["versions"].items()}
    clf = card.models[0]
    assert clf.available and clf.registered_at and clf.run_id
    assert "val_macro_f1" in clf.tags and clf.metrics.get("best_val_macro_f1") is not None
    assert all(not k.startswith(("mlflow.", "alzprog.artifact_sha256")) for m in card.models for k in (m.tags or {}))
    context, page, watch = _open(browser, live_stack["frontend"] + "/", DESKTOP)
    try:
        page.click("#model-card summary")
        page.wait_for_selector("#model-card-table tbody tr", timeout=60000)
        rows = page.locator("#model-card-table tbody tr")
        assert rows.count() == len(card.models)
        for i, m in enumerate(card.models):
            assert rows.nth(i).get_attribute("data-model") == m.name
            assert f"v{m.version}" in rows.nth(i).inner_text()
        assert "not for diagnosis" in page.inner_text("#model-card-use")
        # The held-out figures the bootstrap's evaluation recorded on each version.
        for i, m in enumerate(card.models):
            assert m.figures and m.figures.get("evaluated_at"), m
            text = rows.nth(i).locator("td.card-held-out").inner_text()
            assert "evaluated " + str(m.figures["evaluated_at"])[:10] in text
            if "test_subject_macro_f1" in m.figures:
                assert f"{m.figures['test_subject_macro_f1']:.3f}" in text
            if "test_change_correlation" in m.figures:
                assert f"change correlation {m.figures['test_change_correlation']:.3f}" in text
        assert "test_subjects" in card.models[0].figures
        assert any("test_change_correlation" in (m.figures or {}) for m in card.models[1:])
        page.locator("#model-card").screenshot(path=str(ARTIFACTS / "page_model_card.png"))
        assert watch.problems == [], watch.problems
    finally:
        context.close()
