// The page's only script (loaded from this origin; the CSP forbids inline code).
// Flow: pick or drop a file -> ONE request: POST /api/progression?explain=true (or /api/predict
// when no progression is wanted) -> show stage, bars, Grad-CAM, then the original beside each
// synthesized stage, all from that one answer.
"use strict";

(function () {
  // Severity order of the four stages (the exact Kaggle folder names the API uses).
  const STAGE_ORDER = ["Non Demented", "Very mild Dementia", "Mild Dementia", "Moderate Dementia"];
  const REQUEST_TIMEOUT_MS = 180000;
  // Formats the gateway accepts; checked here only to give a quick, friendly message.
  const ACCEPTED = /\.(png|jpe?g|dcm|dicom|nii|nii\.gz|zip)$/i;
  // Magic bytes of formats a browser can preview directly from a blob: URL.
  const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47];
  const JPEG_MAGIC = [0xff, 0xd8, 0xff];

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("upload-form"),
    input: $("file-input"),
    drop: $("drop-zone"),
    fileName: $("file-name"),
    button: $("analyse-btn"),
    optExplain: $("opt-explain"),
    optProgression: $("opt-progression"),
    optTta: $("opt-tta"),
    notices: $("quality-notices"),
    noticeList: $("quality-list"),
    ttaNote: $("tta-note"),
    oodNote: $("ood-note"),
    optFrom: $("opt-from"),
    status: $("status"),
    statusText: $("status-text"),
    error: $("error"),
    errorText: $("error-text"),
    result: $("result"),
    stageName: $("stage-name"),
    stageMeta: $("stage-meta"),
    bars: $("prob-bars"),
    originalImg: $("original-img"),
    noPreview: $("no-preview"),
    gradcamCard: $("gradcam-card"),
    gradcamImg: $("gradcam-img"),
    saliency: $("saliency"),
    progression: $("progression"),
    progressionNote: $("progression-note"),
    strip: $("strip"),
    generatorMeta: $("generator-meta"),
    changes: $("changes"),
    changeStrip: $("change-strip"),
    changeScale: $("change-scale"),
    morphoHead: document.querySelector("#morpho-table thead"),
    morphoBody: document.querySelector("#morpho-table tbody"),
    volume: $("volume"),
    volumeSummary: $("volume-summary"),
    slicesHead: document.querySelector("#slices-table thead"),
    slicesBody: document.querySelector("#slices-table tbody"),
  };

  let currentFile = null;
  let previewUrl = null; // blob: URL of the local preview, revoked when replaced
  let canonicalSrc = null; // the gateway's canonical slice (PNG data URL): what the models saw
  let busy = false;
  let currentIsVolume = false; // a NIfTI volume: staged from many slices by /api/volume

  function setBusy(on, text) {
    busy = on;
    el.button.disabled = on || !currentFile;
    el.input.disabled = on;
    el.drop.classList.toggle("is-disabled", on);
    document.body.setAttribute("aria-busy", on ? "true" : "false");
    el.status.hidden = !on;
    if (text) el.statusText.textContent = text;
  }

  function showError(message) {
    el.errorText.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.errorText.textContent = "";
  }

  function formatPercent(p) {
    const v = Math.max(0, Math.min(1, Number(p) || 0)) * 100;
    return (v >= 99.95 || v < 0.05 ? v.toFixed(0) : v.toFixed(1)) + "%";
  }

  function isDataPng(src) {
    return typeof src === "string" && src.startsWith("data:image/png;base64,");
  }

  // A NIfTI-1 header with more than one axial slice: the page sends it to /api/volume.
  function niftiIsVolume(head) {
    if (head.byteLength < 48) return false;
    const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
    for (const little of [true, false]) {
      if (view.getInt32(0, little) !== 348) continue;
      const ndim = view.getInt16(40, little);
      return ndim >= 3 && view.getInt16(46, little) > 1;
    }
    return false;
  }

  async function sniffVolume(file) {
    const head = new Uint8Array(await file.slice(0, 348).arrayBuffer());
    // A zip: one DICOM series, a volume.
    if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return true;
    if (head[0] === 0x1f && head[1] === 0x8b) {
      // .nii.gz: read the header through the browser's own gunzip.
      if (typeof DecompressionStream !== "function") return true;
      try {
        const reader = file.stream().pipeThrough(new DecompressionStream("gzip")).getReader();
        const parts = [];
        let have = 0;
        while (have < 348) {
          const { done, value } = await reader.read();
          if (done) break;
          parts.push(value);
          have += value.length;
        }
        reader.cancel().catch(() => {});
        const all = new Uint8Array(have);
        let at = 0;
        for (const part of parts) {
          all.set(part, at);
          at += part.length;
        }
        return niftiIsVolume(all);
      } catch (err) {
        return false; // not gzip after all: the gateway says what it is
      }
    }
    return niftiIsVolume(head);
  }

  async function sniffPreviewable(file) {
    const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
    const starts = (magic) => magic.every((b, i) => head[i] === b);
    return starts(PNG_MAGIC) || starts(JPEG_MAGIC);
  }

  async function chooseFile(file) {
    if (!file || busy) return;
    clearError();
    // DICOM files often have no extension at all; only a known-wrong extension is refused here.
    if (/\.[a-z0-9]+$/i.test(file.name) && !ACCEPTED.test(file.name)) {
      showError("Please choose a PNG, JPEG, DICOM (.dcm), NIfTI (.nii, .nii.gz) file or a .zip of one DICOM series.");
      return;
    }
    currentFile = file;
    el.fileName.textContent = file.name; // shown locally only; never sent to the server
    el.button.disabled = false;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    canonicalSrc = null;
    if (await sniffPreviewable(file)) previewUrl = URL.createObjectURL(file);
    currentIsVolume = await sniffVolume(file);
    await analyse();
  }

  // Reads the API's JSON; turns the project's error shape into a readable message.
  async function postFile(path) {
    const body = new FormData();
    // A neutral part name: the gateway sniffs the format from the bytes, and the user's
    // file name (often a patient identifier) never leaves the browser.
    body.append("file", currentFile, "upload");
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        body,
        signal: controller.signal,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (err) {
      throw new Error(
        err && err.name === "AbortError"
          ? "The server took too long to answer."
          : "Could not reach the server. Check your connection and try again."
      );
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const apiError = data && data.error ? data.error : null;
      let message = apiError && apiError.message ? apiError.message : "HTTP " + response.status;
      if (apiError && apiError.code) message += " (" + apiError.code + ")";
      const retry = response.headers.get("Retry-After");
      if (retry && /^\d+$/.test(retry)) message += " Try again in " + retry + " s.";
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    if (!data || typeof data !== "object") throw new Error("The server sent an unreadable answer.");
    return data;
  }

  function orderedStages(probabilities) {
    const names = Object.keys(probabilities || {});
    const known = STAGE_ORDER.filter((s) => names.includes(s));
    return known.concat(names.filter((s) => !STAGE_ORDER.includes(s)));
  }

  function renderBars(probabilities, predicted, spread) {
    el.bars.replaceChildren();
    for (const stage of orderedStages(probabilities)) {
      const p = Number(probabilities[stage]) || 0;
      const li = document.createElement("li");
      li.className = "prob" + (stage === predicted ? " is-predicted" : "");
      const name = document.createElement("span");
      name.className = "prob-name";
      name.textContent = stage;
      const bar = document.createElement("span");
      bar.className = "prob-bar";
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-label", stage);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", (p * 100).toFixed(1));
      const fill = document.createElement("span");
      fill.className = "prob-fill";
      // CSSOM writes are allowed under style-src 'self' (only markup style attributes are not).
      fill.style.width = (Math.max(0, Math.min(1, p)) * 100).toFixed(2) + "%";
      bar.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "prob-pct";
      pct.textContent = formatPercent(p);
      if (spread && spread.p10 && spread.p90 && typeof spread.p10[stage] === "number") {
        // The 10-90 % range over the augmented views, drawn over the bar and written out.
        const range = document.createElement("span");
        range.className = "prob-range";
        range.style.left = (100 * Math.max(0, spread.p10[stage])).toFixed(2) + "%";
        range.style.width = (100 * Math.max(0, spread.p90[stage] - spread.p10[stage])).toFixed(2) + "%";
        bar.appendChild(range);
        pct.appendChild(cell("span", " (" + formatPercent(spread.p10[stage]) + "–" + formatPercent(spread.p90[stage]) + ")", "prob-spread"));
      }
      li.append(name, bar, pct);
      el.bars.appendChild(li);
    }
  }

  function modelText(model) {
    if (!model) return "";
    return (model.name || "model") + " v" + (model.version || "?");
  }

  // The gateway may return the canonical (cropped, resized) slice as a PNG data URL; it is
  // the only preview possible for DICOM and NIfTI.
  function canonicalFrom(data) {
    return isDataPng(data.canonical) ? data.canonical : null;
  }

  function renderPrediction(data) {
    el.stageName.textContent = data.stage || "unknown";
    const meta = [];
    // `confidence` is the calibrated probability of the predicted stage (docs/api.md).
    const confidence =
      typeof data.confidence === "number"
        ? data.confidence
        : data.probabilities && data.probabilities[data.stage];
    if (typeof confidence === "number") meta.push("confidence " + formatPercent(confidence));
    if (data.model) meta.push(modelText(data.model));
    if (data.cached) meta.push("from cache");
    el.stageMeta.textContent = meta.join(" · ");
    renderBars(data.probabilities || {}, data.stage, data.tta || null);
    renderQuality(data);

    canonicalSrc = canonicalFrom(data) || canonicalSrc;
    // The upload as the user sent it (blob: preview of PNG/JPEG); DICOM and NIfTI have no
    // browser preview, so the canonical slice stands in for them.
    const shown = previewUrl || canonicalSrc;
    if (shown) {
      el.originalImg.src = shown;
      el.originalImg.hidden = false;
      el.noPreview.hidden = true;
    } else {
      el.originalImg.removeAttribute("src");
      el.originalImg.hidden = true;
      el.noPreview.hidden = false;
    }

    const explain = data.explain || null;
    const overlay = explain && (explain.overlay || explain.gradcam);
    if (isDataPng(overlay)) {
      el.gradcamImg.src = overlay;
      el.gradcamCard.hidden = false;
      const frac = explain.saliency_in_brain_fraction;
      el.saliency.textContent =
        typeof frac === "number" ? "(" + formatPercent(frac) + " of the saliency inside the brain)" : "";
    } else {
      el.gradcamImg.removeAttribute("src");
      el.gradcamCard.hidden = true;
    }
    el.result.hidden = false;
  }

  // Warnings about a slice that passed the input gate: shown above the answer, in words.
  function renderQuality(data) {
    const q = data.quality || {};
    const warnings = Array.isArray(q.warnings) ? q.warnings : [];
    el.noticeList.replaceChildren();
    for (const w of warnings) {
      const li = cell("li", w.message || w.code || "");
      li.dataset.code = w.code || "";
      el.noticeList.appendChild(li);
    }
    el.notices.hidden = warnings.length === 0;
    if (typeof q.ood_score === "number" && typeof q.ood_threshold === "number") {
      el.oodNote.textContent =
        "Similarity to the model's training slices: distance " + q.ood_score.toFixed(2) +
        " (above " + q.ood_threshold.toFixed(2) + " counts as unlike them).";
      el.oodNote.hidden = false;
    } else {
      el.oodNote.textContent = "";
      el.oodNote.hidden = true;
    }
    const t = data.tta;
    if (t && t.std) {
      el.ttaNote.textContent =
        "Uncertainty: over " + t.views + " augmented views (mirror, small rotations, contrast) the probability of " +
        data.stage + " varies by ± " + formatPercent(t.std[data.stage]) + " (SD); bars show the 10–90 % range; " +
        formatPercent(t.agreement) + " of the views agree on the stage.";
      el.ttaNote.hidden = false;
    } else {
      el.ttaNote.textContent = "";
      el.ttaNote.hidden = true;
    }
  }

  function stripItem(src, label, synthetic) {
    const li = document.createElement("li");
    li.className = "strip-item" + (synthetic ? " is-synthetic" : " is-original");
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    if (src) img.src = src;
    img.alt = synthetic ? "Synthesized image, " + label + " (synthetic, not for diagnosis)" : label;
    const cap = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "strip-stage";
    name.textContent = label;
    cap.appendChild(name);
    const badge = document.createElement("span");
    badge.className = synthetic ? "badge badge-synthetic" : "badge badge-original";
    badge.textContent = synthetic ? "SYNTHETIC" : "ORIGINAL";
    cap.appendChild(badge);
    if (src) fig.appendChild(img);
    else {
      const ph = document.createElement("div");
      ph.className = "no-preview-box";
      ph.textContent = "No preview";
      fig.appendChild(ph);
    }
    fig.appendChild(cap);
    li.appendChild(fig);
    return li;
  }

  function renderProgression(data) {
    const steps = Array.isArray(data.steps) ? data.steps : [];
    canonicalSrc = canonicalFrom(data) || canonicalSrc;
    el.strip.replaceChildren();
    // The canonical slice has the same framing as the synthesized ones, so it is the fairest
    // "before" image; the raw upload preview is the fallback.
    // The original is labelled with the stage the chain started from (the prediction by default).
    const start = data.from_stage || data.stage || "";
    const label = start === data.stage ? "Original: " + start : "Original, taken as " + start;
    el.strip.appendChild(stripItem(canonicalSrc || previewUrl, label, false));
    for (const step of steps) {
      if (!isDataPng(step.image)) continue; // only our own PNG data URLs are ever shown
      el.strip.appendChild(stripItem(step.image, step.stage || "", true));
    }
    if (steps.length === 0) {
      el.progressionNote.textContent =
        "The starting stage is the last one; there is no later stage to synthesize.";
      el.progressionNote.hidden = false;
    } else {
      el.progressionNote.hidden = true;
    }
    // Each step names the transition model that made it (docs/api.md).
    const genText = steps
      .map((s) => (s.model ? modelText(s.model) : ""))
      .filter(Boolean)
      .join(", ");
    el.generatorMeta.textContent = genText ? "Generators: " + genText : "";
    renderChanges(data, steps);
    el.progression.hidden = false;
  }

  // A volume's answer: the slices it voted with, and which one is shown and progressed.
  function renderSlices(data) {
    const slices = Array.isArray(data.slices) ? data.slices : null;
    el.slicesBody.replaceChildren();
    if (!slices || slices.length === 0) {
      el.volume.hidden = true;
      return;
    }
    const stages = orderedStages(data.probabilities);
    const head = document.createElement("tr");
    head.appendChild(cell("th", "Slice"));
    for (const st of stages) head.appendChild(cell("th", st));
    head.appendChild(cell("th", "OOD distance"));
    el.slicesHead.replaceChildren(head);
    for (const sl of slices) {
      const tr = document.createElement("tr");
      tr.dataset.slice = String(sl.index);
      const isRep = sl.index === data.representative_slice;
      if (isRep) tr.className = "is-representative";
      tr.appendChild(cell("th", String(sl.index) + (isRep ? " (shown)" : "")));
      for (const st of stages) tr.appendChild(cell("td", formatPercent((sl.probabilities || {})[st])));
      const thr = (data.quality || {}).ood_threshold;
      const d = sl.ood_score;
      tr.appendChild(cell("td", typeof d === "number" ? d.toFixed(2) : "–",
        typeof d === "number" && typeof thr === "number" && d > thr ? "is-ood" : ""));
      el.slicesBody.appendChild(tr);
    }
    const spread = data.probability_spread || {};
    el.volumeSummary.textContent =
      "Staged from " + slices.length + " axial slices of the volume (soft vote: the mean of their probabilities; " +
      data.stage + " " + formatPercent(data.probabilities[data.stage]) + " ± " + formatPercent(spread[data.stage]) +
      " across slices). Slice " + data.representative_slice + " is shown, explained and progressed.";
    el.volume.hidden = false;
  }

  // Rows of the measurements table: field, label, how a value is written.
  const MEASURES = [
    ["brain_area_px", "Brain area (px)", (v) => String(Math.round(v))],
    ["tissue_area_px", "Tissue: brain minus CSF (px)", (v) => String(Math.round(v))],
    ["csf_area_px", "CSF area (px)", (v) => String(Math.round(v))],
    ["ventricle_area_px", "Ventricle area (px)", (v) => String(Math.round(v))],
    ["ventricle_to_brain", "Ventricle / brain", (v) => (100 * v).toFixed(2) + "%"],
  ];

  function signedPercent(v) {
    if (typeof v !== "number" || !isFinite(v)) return "";
    return (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(1) + "%";
  }

  function cell(tag, text, className) {
    const c = document.createElement(tag);
    c.textContent = text;
    if (className) c.className = className;
    return c;
  }

  function changeItem(step) {
    const li = document.createElement("li");
    li.className = "strip-item is-synthetic";
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = step.change_map;
    img.alt = "Change map of the synthesized " + (step.stage || "stage") + " against the upload (synthetic, not for diagnosis)";
    fig.appendChild(img);
    const cap = document.createElement("figcaption");
    cap.appendChild(cell("span", step.stage || "", "strip-stage"));
    const c = step.change || {};
    if (typeof c.changed_fraction === "number") {
      cap.appendChild(cell("span",
        formatPercent(c.changed_fraction) + " of the brain changed; mean " +
          (c.mean_change >= 0 ? "+" : "−") + Math.abs(c.mean_change).toFixed(1) + " grey levels",
        "change-figures"));
    }
    fig.appendChild(cap);
    if (isDataPng(step.deformation_map)) {
      const def = document.createElement("img");
      def.src = step.deformation_map;
      def.alt = "Deformation of the " + (step.stage || "stage") + " step: red expanded, cyan contracted (synthetic)";
      def.className = "deformation-map";
      fig.appendChild(def);
      const d = step.deformation || {};
      const text = "Deformation: " + formatPercent(d.expansion_fraction) + " expanded (red), " +
        formatPercent(d.contraction_fraction) + " contracted (cyan)";
      fig.appendChild(cell("span", text, "change-figures"));
    }
    li.appendChild(fig);
    return li;
  }

  function renderChanges(data, steps) {
    el.changeStrip.replaceChildren();
    const shown = steps.filter((s) => isDataPng(s.change_map));
    const base = data.input_morphometry;
    if (shown.length === 0 || !base) {
      el.changes.hidden = true;
      return;
    }
    const c = shown[0].change || {};
    el.changeScale.textContent =
      "Fixed scale: full colour at a change of " + c.scale_grey_levels + " grey levels (of 255) or more; " +
      "changes under " + c.changed_threshold_grey_levels + " are not coloured.";
    for (const step of shown) el.changeStrip.appendChild(changeItem(step));

    const head = document.createElement("tr");
    head.appendChild(cell("th", "Measure"));
    head.appendChild(cell("th", "Upload"));
    for (const step of shown) head.appendChild(cell("th", (step.stage || "") + " (synthetic)"));
    el.morphoHead.replaceChildren(head);
    el.morphoBody.replaceChildren();
    for (const [key, label, fmt] of MEASURES) {
      if (typeof base[key] !== "number") continue;
      const tr = document.createElement("tr");
      tr.dataset.measure = key;
      tr.appendChild(cell("th", label));
      tr.appendChild(cell("td", fmt(base[key])));
      for (const step of shown) {
        const m = step.morphometry || {};
        const td = cell("td", typeof m[key] === "number" ? fmt(m[key]) : "–");
        const pct = signedPercent((m.pct_change || {})[key]);
        if (pct) td.appendChild(cell("span", " (" + pct + ")", "pct"));
        tr.appendChild(td);
      }
      el.morphoBody.appendChild(tr);
    }
    el.changes.hidden = false;
  }

  // The one request of an upload: /progression carries the classification too, so the
  // classifier runs once per upload; /predict only when no progression is wanted.
  function requestPath() {
    const query = new URLSearchParams();
    if (el.optExplain.checked) query.set("explain", "true");
    if (el.optTta.checked && !currentIsVolume) query.set("tta", "true");
    if (currentIsVolume) {
      // A whole volume: one request stages it from its slices and, unless unticked,
      // synthesizes the progression of the representative slice it names.
      if (!el.optProgression.checked) query.set("progression", "false");
      else if (el.optFrom.value) query.set("from_stage", el.optFrom.value);
      return "api/volume?" + query.toString();
    }
    if (!el.optProgression.checked) {
      const q = query.toString();
      return "api/predict" + (q ? "?" + q : "");
    }
    // Default: from the predicted stage; the user may start from an earlier stage instead.
    if (el.optFrom.value) query.set("from_stage", el.optFrom.value);
    const q = query.toString();
    return "api/progression" + (q ? "?" + q : "");
  }

  async function analyse() {
    if (!currentFile || busy) return;
    clearError();
    el.result.hidden = true;
    el.progression.hidden = true;
    el.volume.hidden = true;
    el.strip.replaceChildren();
    el.changeStrip.replaceChildren();
    try {
      const withProgression = el.optProgression.checked;
      setBusy(
        true,
        withProgression
          ? "Classifying the slice and synthesizing the progression (this can take a few seconds)…"
          : "Classifying the slice…"
      );
      const data = await postFile(requestPath());
      renderPrediction(data);
      renderSlices(data);
      if (withProgression && Array.isArray(data.steps)) renderProgression(data);
    } catch (err) {
      showError(err && err.message ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  el.input.addEventListener("change", () => {
    const file = el.input.files && el.input.files[0];
    // Cleared so that choosing the same file again fires `change` again.
    el.input.value = "";
    if (file) chooseFile(file);
  });
  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    analyse();
  });
  for (const name of ["dragenter", "dragover"]) {
    el.drop.addEventListener(name, (event) => {
      event.preventDefault();
      if (!busy) el.drop.classList.add("is-dragover");
    });
  }
  for (const name of ["dragleave", "dragend"]) {
    el.drop.addEventListener(name, () => el.drop.classList.remove("is-dragover"));
  }
  el.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    el.drop.classList.remove("is-dragover");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files[0]) chooseFile(files[0]);
  });
  // The model card: read from the registry (through the gateway) when the panel is opened.
  const card = {
    details: $("model-card"),
    status: $("model-card-status"),
    body: document.querySelector("#model-card-table tbody"),
    use: $("model-card-use"),
    loaded: false,
  };

  // The held-out figures evaluation recorded on the version (alzprog evaluate / the bootstrap).
  function heldOutText(entry) {
    const f = entry.figures || {};
    const parts = [];
    const n = (v) => (typeof v === "number" ? v.toFixed(3) : null);
    if (n(f.test_subject_macro_f1)) {
      let t = "subject macro-F1 " + n(f.test_subject_macro_f1);
      const ci = f.test_subject_macro_f1_ci;
      if (Array.isArray(ci) && ci.length === 2) t += " (95% CI " + n(ci[0]) + "–" + n(ci[1]) + ")";
      if (typeof f.test_subjects === "number") t += " on " + f.test_subjects + " test subjects";
      parts.push(t);
    } else if (typeof f.test_subjects === "number") {
      parts.push("subject macro-F1 not computable on " + f.test_subjects + " test subjects (fewer than 2 per stage)");
    }
    if (typeof f.trained_on_subjects === "number") parts.push("trained and validated on " + f.trained_on_subjects + " subjects");
    if (n(f.test_change_correlation)) parts.push("change correlation " + n(f.test_change_correlation));
    if (n(f.test_csf_growth_ratio)) parts.push("CSF growth ratio " + n(f.test_csf_growth_ratio) + " (1 = the true growth)");
    if (typeof f.test_pairs === "number") parts.push(f.test_pairs + " test pairs");
    if (f.evaluated_at) parts.push("evaluated " + String(f.evaluated_at).slice(0, 10));
    return parts.join("; ") || "not evaluated yet";
  }

  function figuresText(entry) {
    const parts = [];
    const metrics = entry.metrics || {};
    for (const key of Object.keys(metrics).sort()) {
      if (/f1|fidelity|ssim|ece|accuracy/i.test(key)) parts.push(key + " " + Number(metrics[key]).toFixed(3));
    }
    const tags = entry.tags || {};
    for (const key of ["preset", "variant", "transition"]) if (tags[key]) parts.push(key + " " + tags[key]);
    return parts.join(", ") || "–";
  }

  async function loadModelCard() {
    if (card.loaded) return;
    card.loaded = true;
    try {
      const response = await fetch("api/v1/model-card", { headers: { Accept: "application/json" }, cache: "no-store" });
      const data = await response.json();
      if (!response.ok) throw new Error((data && data.error && data.error.message) || "HTTP " + response.status);
      card.body.replaceChildren();
      for (const entry of data.models || []) {
        const tr = document.createElement("tr");
        tr.dataset.model = entry.name;
        tr.appendChild(cell("th", entry.name));
        tr.appendChild(cell("td", entry.available ? "v" + entry.version : "not registered"));
        tr.appendChild(cell("td", entry.registered_at ? entry.registered_at.slice(0, 10) : "–"));
        tr.appendChild(cell("td", entry.data_kind || "–"));
        tr.appendChild(cell("td", entry.available ? heldOutText(entry) : entry.detail || "", "card-held-out"));
        tr.appendChild(cell("td", entry.available ? figuresText(entry) : ""));
        card.body.appendChild(tr);
      }
      card.use.textContent = data.intended_use || "";
      card.status.hidden = true;
    } catch (err) {
      card.loaded = false;
      card.status.textContent = "The model card could not be loaded: " + (err && err.message ? err.message : String(err));
    }
  }
  card.details.addEventListener("toggle", () => {
    if (card.details.open) loadModelCard();
  });

  // A file dropped outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.body.setAttribute("data-ready", "true");
})();
